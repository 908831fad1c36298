# Stage 5: streamed FAISS k-NN over all chunks -> density weights (rare prompts get more weight).


rule knn_weights:
    input:
        all_chunks,
    output:
        weights=WEIGHTS,
        meta=WEIGHTS_META,
    params:
        knn=config["knn"],
        density=config["density"],
        seed=config["seed"],
    log:
        f"{LOGS}/weights.log",
    benchmark:
        f"{BENCH}/weights.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    conda:
        "../envs/faiss.yaml"
    script:
        "../scripts/weights.py"

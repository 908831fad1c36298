# Stage 5: streamed FAISS k-NN over all chunks -> density weights (rare prompts get more weight).


rule knn_weights:
    input:
        all_chunks,
    output:
        weights=WEIGHTS,
        meta=WEIGHTS_META,
    log:
        f"{LOGS}/weights.log",
    benchmark:
        f"{BENCH}/knn_weights.tsv"
    conda:
        "../envs/faiss.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    params:
        knn=config["knn"],
        density=config["density"],
        seed=config["seed"],
    script:
        "../scripts/weights.py"

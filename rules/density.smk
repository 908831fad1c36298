# Stage 5: streamed FAISS k-NN over all chunks -> density weights (rare prompts get more weight).


rule knn_weights:
    input:
        chunks=all_chunks,
    output:
        weights=WEIGHTS,
        meta=WEIGHTS_META,
        memory=job_files("knn_weights")[0],
    log:
        f"{LOGS}/weights.log",
    benchmark:
        job_files("knn_weights")[1]
    conda:
        "../envs/faiss.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
        warn_fraction=WARN,
    params:
        knn=knn_params,
        density=DENSITY_PARAMS,
    script:
        "../scripts/weights.py"

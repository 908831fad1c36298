# Stage 5: streamed FAISS k-NN over all chunks -> density weights (rare prompts get more weight).
WEIGHTS_JOB = job("knn_weights")


rule knn_weights:
    input:
        chunks=all_chunks,
        prompts=checked_prompts("knn.k"),
        stamp=params_stamp("knn_weights", WEIGHTS_JOB),
    output:
        weights=WEIGHTS,
        meta=WEIGHTS_META,
        memory=WEIGHTS_JOB["memory"],
    log:
        WEIGHTS_JOB["log"],
    benchmark:
        WEIGHTS_JOB["bench"]
    conda:
        "../envs/faiss.yaml"
    threads: 2
    resources:
        **resources(4000, 60),
    params:
        knn=weights_params("knn"),
        density=weights_params("density"),
    script:
        "../scripts/weights.py"

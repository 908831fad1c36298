# Stage 4: one Zarr store per chunk of prompts. A chunk reruns only when its own prompts (params.content) or
# the embedding settings change: the prompts file and model folder are ancient() so their mtimes don't count.
EMBED_JOB = job("embed_chunk", "i", report=False, folder=f"{RES}/embed")  # travel with a copied embed/


rule embed_chunk:
    input:
        prompts=ancient(PROMPTS),
        model=ancient(MODEL_DIR),
        stamp=params_stamp("embed_chunk", EMBED_JOB),
    output:
        chunk=directory(CHUNK),
        memory=EMBED_JOB["memory"],
    log:
        EMBED_JOB["log"],
    benchmark:
        EMBED_JOB["bench"]
    wildcard_constraints:
        i=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **resources(4000, 60, gpu=True),
    params:
        **P.embed(config),
        **INFER,
        content=chunk_hash,
        rows=chunk_rows,
        model_fingerprint=model_fingerprint,
    script:
        "../scripts/embed_chunk.py"


rule embed_records:
    input:
        memory=chunk_files("memory"),
        bench=chunk_files("bench"),
    output:
        records=EMBED_RECORDS,
    log:
        f"{LOGS}/embed_records.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **resources(1000, 5),
    script:
        "../scripts/embed_records.py"

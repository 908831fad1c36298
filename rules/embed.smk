# Stage 4: one Zarr store per chunk of prompts. A chunk reruns only when its own prompts (params.content) or
# the embedding settings change: the prompts file and model folder are ancient() so their mtimes don't count.


rule embed_chunk:
    input:
        prompts=ancient(PROMPTS),
        model=ancient(MODEL_DIR),
    output:
        chunk=directory(CHUNK),
        memory=job_files("embed_chunk", ["{i}"])[0],
    log:
        f"{LOGS}/embed/chunk_{{i}}.log",
    benchmark:
        job_files("embed_chunk", ["{i}"])[1]
    wildcard_constraints:
        i=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
        gpu=GPU,
        warn_fraction=WARN,
    params:
        content=chunk_hash,
        rows=chunk_rows,
        device=DEVICE,
        dtype=DTYPE,
        model_fingerprint=model_fingerprint,
        embed=EMBED_PARAMS,
    script:
        "../scripts/embed_chunk.py"

# Stage 4: one Zarr store per chunk of prompts. A chunk reruns only when its own prompts (params.content)
# or the embedding settings change: the prompts file and model folder are ancient() so their mtimes don't count.


rule embed_chunk:
    input:
        prompts=ancient(PROMPTS),
        model=ancient(MODEL_DIR),
    output:
        directory(CHUNK),
    log:
        f"{LOGS}/embed/chunk_{{i}}.log",
    benchmark:
        f"{BENCH}/embed_chunk_{{i}}.tsv"
    wildcard_constraints:
        i=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
        gpu=GPU,
    params:
        content=chunk_hash,
        model=MODEL_NAME,
        dtype=config["model"]["dtype"],
        source=config["embed"]["source"],
        layer=config["embed"]["layer"],
        max_length=config["embed"]["max_length"],
        chunk_size=config["embed"]["chunk_size"],
    script:
        "../scripts/embed_chunk.py"

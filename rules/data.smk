# Stage 1-2: preference pairs -> unique prompts (a checkpoint: the number of chunks depends on it).


rule pairs:
    input:
        pairs_input,
    output:
        PAIRS,
    log:
        f"{LOGS}/pairs.log",
    benchmark:
        f"{BENCH}/pairs.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=30,
    params:
        data=config["data"],
    script:
        "../scripts/pairs.py"


checkpoint unique_prompts:
    input:
        PAIRS,
    output:
        PROMPTS,
    log:
        f"{LOGS}/prompts.log",
    benchmark:
        f"{BENCH}/unique_prompts.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=15,
    script:
        "../scripts/prompts.py"

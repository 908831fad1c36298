# Stages 1-2: preference pairs -> unique prompts (a checkpoint: the number of chunks depends on it).


rule pairs:
    input:
        files=pairs_input,
    output:
        pairs=PAIRS,
        memory=job_files("pairs")[0],
    log:
        f"{LOGS}/pairs.log",
    benchmark:
        job_files("pairs")[1]
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=30,
        warn_fraction=WARN,
    params:
        **PAIRS_PARAMS,
    script:
        "../scripts/pairs.py"


checkpoint unique_prompts:
    input:
        pairs=PAIRS,
    output:
        prompts=PROMPTS,
        summary=PROMPTS_SUMMARY,
        memory=job_files("unique_prompts")[0],
    log:
        f"{LOGS}/prompts.log",
    benchmark:
        job_files("unique_prompts")[1]
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=15,
        warn_fraction=WARN,
    script:
        "../scripts/prompts.py"

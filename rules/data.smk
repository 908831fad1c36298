# Stages 1-2: preference pairs -> unique prompts (a checkpoint: the number of chunks depends on it).
PAIRS_JOB = job("pairs")
PROMPTS_JOB = job("unique_prompts")


rule pairs:
    input:
        files=pairs_input,
    output:
        pairs=PAIRS,
        memory=PAIRS_JOB["memory"],
    log:
        PAIRS_JOB["log"],
    benchmark:
        PAIRS_JOB["bench"]
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **resources(2000, 30),
    params:
        **P.pairs(config),
        **hub_files(),
    script:
        "../scripts/pairs.py"


checkpoint unique_prompts:
    input:
        pairs=PAIRS,
    output:
        prompts=PROMPTS,
        summary=PROMPTS_SUMMARY,
        memory=PROMPTS_JOB["memory"],
    log:
        PROMPTS_JOB["log"],
    benchmark:
        PROMPTS_JOB["bench"]
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **resources(2000, 15),
    script:
        "../scripts/prompts.py"

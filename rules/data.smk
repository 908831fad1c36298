# Stage 1-2: preference pairs -> unique prompts (a checkpoint: the number of chunks depends on it).
from density_grpo.data import SAMPLE_PATH


def pairs_input(wildcards):
    source = config["data"]["source"]
    if source == "sample":
        return [SAMPLE_PATH]
    if source == "local":
        return [config["data"]["path"]]
    return []  # hh-rlhf: downloaded (or read from data.mirror) by the job


rule pairs:
    input:
        pairs_input,
    output:
        PAIRS,
    params:
        data=config["data"],
    log:
        f"{LOGS}/pairs.log",
    benchmark:
        f"{BENCH}/pairs.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=30,
    conda:
        "../envs/data.yaml"
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
        f"{BENCH}/prompts.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=15,
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/prompts.py"

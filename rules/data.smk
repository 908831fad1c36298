# Stages 1-2: preference pairs -> unique prompts (a checkpoint: the number of chunks depends on it).
PAIRS_JOB = job("pairs", folder=f"{RES}/data")  # records and params stamp travel with a copied data/
# The checkpoint's outputs all live in data/: Snakemake resolves a checkpoint only when every one of its outputs
# exists, so a copied or restored data/ folder must carry them all (check_checkpoint_outputs names a missing one).
PROMPTS_JOB = job("unique_prompts", folder=f"{RES}/data")
check_checkpoint_outputs(PROMPTS, PROMPTS_SUMMARY, PROMPTS_JOB["memory"])


rule pairs:
    input:
        files=pairs_input,
        stamp=params_stamp("pairs", PAIRS_JOB, inputs=data_files),
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

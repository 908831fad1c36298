# Stage 6: reward model (Bradley-Terry, TRL RewardTrainer) and one GRPO policy per sampler (TRL GRPOTrainer).
# Checkpoints are directories; the small metrics files beside them feed the reports even if checkpoints are deleted.


rule reward_model:
    input:
        pairs=PAIRS,
        model=ancient(MODEL_DIR),
    output:
        model=directory(RM_MODEL),
        metrics=RM_METRICS,
    log:
        f"{LOGS}/reward_model.log",
    benchmark:
        f"{BENCH}/reward_model.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(6000),
        runtime=120,
        gpu=GPU,
    params:
        rm=config["rm"],
        seed=config["seed"],
    script:
        "../scripts/reward_model.py"


rule grpo:
    input:
        unpack(grpo_inputs),
    output:
        model=directory(GRPO_MODEL),
        metrics=GRPO_METRICS,
        draws=GRPO_DRAWS,
    log:
        f"{LOGS}/grpo_{{sampler}}.log",
    benchmark:
        f"{BENCH}/grpo_{{sampler}}.tsv"
    wildcard_constraints:
        sampler="density|uniform",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=240,
        gpu=GPU,
    params:
        grpo=config["grpo"],
        eval_prompts=config["eval"]["prompts"],
        seed=config["seed"],
    script:
        "../scripts/grpo.py"

# Stage 6: reward model (Bradley-Terry, TRL RewardTrainer) and one GRPO policy per arm and seed (TRL GRPOTrainer).
# Checkpoints are directories; the small metrics files beside them feed the reports even if checkpoints are deleted.


rule reward_model:
    input:
        pairs=PAIRS,
        model=ancient(MODEL_DIR),
        prompts=checked_prompts,
    output:
        model=directory(RM_MODEL),
        metrics=RM_METRICS,
        memory=job_files("reward_model")[0],
    log:
        f"{LOGS}/reward_model.log",
    benchmark:
        job_files("reward_model")[1]
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(6000),
        runtime=120,
        gpu=GPU,
        warn_fraction=WARN,
    params:
        seed=config["seed"],
        device=DEVICE,
        train_precision=TRAIN_PRECISION,
        model_fingerprint=model_fingerprint,
        rm=config["rm"],
    script:
        "../scripts/reward_model.py"


rule grpo:
    input:
        unpack(grpo_inputs),
    output:
        model=directory(GRPO_MODEL),
        metrics=GRPO_METRICS,
        draws=GRPO_DRAWS,
        curves=GRPO_CURVES,
        curve_embeddings=GRPO_CURVE_EMB,
        memory=job_files("grpo", ["{sampler}", "{seed}"])[0],
    log:
        f"{LOGS}/grpo_{{sampler}}_seed{{seed}}.log",
    benchmark:
        job_files("grpo", ["{sampler}", "{seed}"])[1]
    wildcard_constraints:
        sampler="density|uniform",
        seed=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=240,
        gpu=GPU,
        warn_fraction=WARN,
    params:
        **GRPO_PARAMS,
        seed=lambda wildcards: int(wildcards.seed),
        split_seed=config["seed"],
        device=DEVICE,
        dtype=DTYPE,
        train_precision=TRAIN_PRECISION,
        model_fingerprint=model_fingerprint,
    script:
        "../scripts/grpo.py"

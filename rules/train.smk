# Stage 6: reward model (Bradley-Terry, TRL RewardTrainer) and one GRPO policy per arm and seed (TRL GRPOTrainer).
# Checkpoints are directories; the small metrics files beside them feed the reports even if checkpoints are deleted.
RM_JOB = job("reward_model")
GRPO_JOB = job("grpo", "sampler", "seed", each=each_run)


rule reward_model:
    input:
        pairs=PAIRS,
        model=ancient(MODEL_DIR),
        prompts=checked_prompts("rm.eval_fraction"),
        stamp=params_stamp("reward_model", RM_JOB),
    output:
        model=directory(RM_MODEL),
        metrics=RM_METRICS,
        steps=RM_STEPS,
        memory=RM_JOB["memory"],
    log:
        RM_JOB["log"],
        **training_logs(RM_JOB),
    benchmark:
        RM_JOB["bench"]
    conda:
        "../envs/torch.yaml"
    threads: 2 * config["rm"]["processes"]  # 2 per process
    resources:
        **resources(6000, 120, gpu=True, processes=config["rm"]["processes"]),
    params:
        **P.reward_model(config),
        **TRAIN,
        model_fingerprint=model_fingerprint,
    script:
        "../scripts/reward_model.py"


rule grpo:
    input:
        unpack(grpo_inputs),
        stamp=params_stamp("grpo", GRPO_JOB),
    output:
        model=directory(GRPO_MODEL),
        metrics=GRPO_METRICS,
        summary=GRPO_SUMMARY,
        draws=GRPO_DRAWS,
        curves=GRPO_CURVES,
        curve_embeddings=GRPO_CURVE_EMB,
        memory=GRPO_JOB["memory"],
    log:
        GRPO_JOB["log"],
        **training_logs(GRPO_JOB),
    benchmark:
        GRPO_JOB["bench"]
    wildcard_constraints:
        sampler="density|uniform",
        seed=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: config["grpo"]["processes"]  # 1 per process
    resources:
        **resources(8000, 240, gpu=True, processes=config["grpo"]["processes"]),
    params:
        **P.grpo(config),
        **RUNTIME,
        policy_seed=lambda wildcards: int(wildcards.seed),
        model_fingerprint=model_fingerprint,
    script:
        "../scripts/grpo.py"

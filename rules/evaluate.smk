# Stage 7: each model's samples on the evaluated held-out prompts (base once, the positive control, each arm x
# seed), and the comparison with 95% bootstrap intervals, per stratum, and the collapse curves.
EVAL_JOB = job("evaluate_model", "model", each=each_model)
COMPARE_JOB = job("compare")


rule evaluate_model:
    input:
        unpack(eval_inputs),
        stamp=params_stamp("evaluate_model", EVAL_JOB),
    output:
        eval=EVAL,
        embeddings=EVAL_EMB,
        memory=EVAL_JOB["memory"],
    log:
        EVAL_JOB["log"],
    benchmark:
        EVAL_JOB["bench"]
    wildcard_constraints:
        model=r"base|control|(density|uniform)_seed\d+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **resources(6000, 60, gpu=True),
    params:
        **INFER,
        eval=lambda wildcards: P.evaluate(config, wildcards.model)["eval"],
        rm=P.evaluate(config, "base")["rm"],
        seed=config["seed"],
        name="{model}",
        sets=lambda wildcards: P.evaluate(config, wildcards.model)["sets"],
        model_fingerprint=model_fingerprint,
    script:
        "../scripts/evaluate.py"


rule compare:
    input:
        evals=expand(EVAL, model=EVAL_MODELS),
        embeddings=expand(EVAL_EMB, model=EVAL_MODELS),
        curves=runs(GRPO_CURVES),
        curve_embeddings=runs(GRPO_CURVE_EMB),
        stamp=params_stamp("compare", COMPARE_JOB),
    output:
        json=COMPARISON,
        diversity=report(DIVERSITY_PNG, caption="../report/diversity.rst", category="Evaluation"),
        curves=report(CURVES_PNG, caption="../report/curves.rst", category="Evaluation"),
        memory=COMPARE_JOB["memory"],
    log:
        COMPARE_JOB["log"],
    benchmark:
        COMPARE_JOB["bench"]
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **resources(2000, 30),
    params:
        **P.compare(config, RUNS),
    script:
        "../scripts/compare.py"

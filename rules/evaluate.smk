# Stage 7: each model's samples on the evaluated held-out prompts (base once, each arm x seed), and the comparison
# with 95% bootstrap intervals, per stratum, and the collapse curves.


rule evaluate_model:
    input:
        unpack(eval_inputs),
    output:
        eval=EVAL,
        embeddings=EVAL_EMB,
        memory=job_files("evaluate_model", ["{model}"])[0],
    log:
        f"{LOGS}/evaluate_{{model}}.log",
    benchmark:
        job_files("evaluate_model", ["{model}"])[1]
    wildcard_constraints:
        model=r"base|(density|uniform)_seed\d+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(6000),
        runtime=60,
        gpu=GPU,
        warn_fraction=WARN,
    params:
        name="{model}",
        sets=lambda wildcards: 2 if wildcards.model == "base" else 1,
        seed=config["seed"],
        device=DEVICE,
        dtype=DTYPE,
        model_fingerprint=model_fingerprint,
        eval=EVAL_PARAMS,
        rm=RM_SCORING,
    script:
        "../scripts/evaluate.py"


rule compare:
    input:
        evals=expand(EVAL, model=EVAL_MODELS),
        embeddings=expand(EVAL_EMB, model=EVAL_MODELS),
        curves=runs(GRPO_CURVES),
        curve_embeddings=runs(GRPO_CURVE_EMB),
    output:
        json=COMPARISON,
        png=report(COMPARISON_PNG, caption="../report/comparison.rst", category="Evaluation"),
        curves_png=report(CURVES_PNG, caption="../report/curves.rst", category="Evaluation"),
        memory=job_files("compare")[0],
    log:
        f"{LOGS}/compare.log",
    benchmark:
        job_files("compare")[1]
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=30,
        warn_fraction=WARN,
    params:
        models=[["base", None], *[[sampler, seed] for sampler, seed in RUNS]],
        runs=[[sampler, seed] for sampler, seed in RUNS],
        bootstrap=config["eval"]["bootstrap"],
        seed=config["seed"],
    script:
        "../scripts/compare.py"

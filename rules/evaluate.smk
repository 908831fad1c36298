# Stage 7: diversity of sampled responses on held-out prompts, base vs each policy, and the side-by-side comparison.


rule evaluate_model:
    input:
        unpack(eval_inputs),
    output:
        eval=EVAL,
        memory=job_files("evaluate_model", ["{model}"])[0],
    log:
        f"{LOGS}/evaluate_{{model}}.log",
    benchmark:
        job_files("evaluate_model", ["{model}"])[1]
    wildcard_constraints:
        model="base|density|uniform",
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
        seed=config["seed"],
        device=DEVICE,
        dtype=DTYPE,
        model_fingerprint=model_fingerprint,
        eval=config["eval"],
        rm=RM_SCORING,
    script:
        "../scripts/evaluate.py"


rule compare:
    input:
        evals=expand(EVAL, model=EVAL_MODELS),
    output:
        json=COMPARISON,
        png=report(COMPARISON_PNG, caption="../report/comparison.rst", category="Evaluation"),
    log:
        f"{LOGS}/compare.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    script:
        "../scripts/compare.py"

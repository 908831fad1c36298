# Stage 7: diversity of sampled responses on held-out prompts, base vs each policy, and the side-by-side comparison.


rule evaluate_model:
    input:
        unpack(eval_inputs),
    output:
        EVAL,
    log:
        f"{LOGS}/evaluate_{{model}}.log",
    benchmark:
        f"{BENCH}/evaluate_model_{{model}}.tsv"
    wildcard_constraints:
        model="base|density|uniform",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(6000),
        runtime=60,
        gpu=GPU,
    params:
        eval=config["eval"],
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"


rule compare:
    input:
        expand(EVAL, model=EVAL_MODELS),
    output:
        json=COMPARISON,
        png=report(f"{RES}/eval/comparison.png", caption="../report/comparison.rst", category="Evaluation"),
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

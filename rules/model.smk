# Stage 3: the embedded GGUF model or a hub id -> a safetensors folder under resources/models/ (a local folder,
# model.name_or_path, is used in place and needs no rule); the model card: name, shape, parameter count.
if MODEL_KIND != "local":

    rule model:
        output:
            model=directory(MODEL_DIR),
            memory=f"resources/models/memory/{MODEL_SLUG}.json",
        log:
            f"logs/models/{MODEL_SLUG}.log",
        benchmark:
            f"resources/models/bench/{MODEL_SLUG}.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(4000),
            runtime=30,
            warn_fraction=WARN,
        params:
            name=MODEL_NAME,
        script:
            "../scripts/model.py"


rule model_card:
    input:
        model=ancient(MODEL_DIR),
    output:
        card=MODEL_CARD,
        memory=job_files("model_card")[0],
    log:
        f"{LOGS}/model_card.log",
    benchmark:
        job_files("model_card")[1]
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=5,
        warn_fraction=WARN,
    params:
        name=MODEL_NAME,
        model_fingerprint=model_fingerprint,
    script:
        "../scripts/model_card.py"

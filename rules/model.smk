# Stage 3: the embedded GGUF model or a hub id -> a safetensors folder under resources/models/ (a local folder,
# model.name_or_path, is used in place and needs no rule); the model card: name, shape, parameter count.
if MODEL_KIND != "local":
    MODEL_JOB = job("model", name=MODEL_SLUG, folder=MODELS, logs="logs/models")

    rule model:
        output:
            model=directory(MODEL_DIR),
            memory=MODEL_JOB["memory"],
        log:
            MODEL_JOB["log"],
        benchmark:
            MODEL_JOB["bench"]
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            **resources(4000, 30),
        params:
            name=MODEL_NAME,
        script:
            "../scripts/model.py"


CARD_JOB = job("model_card")


rule model_card:
    input:
        model=ancient(MODEL_DIR),
        stamp=params_stamp("model_card", CARD_JOB),
    output:
        card=MODEL_CARD,
        memory=CARD_JOB["memory"],
    log:
        CARD_JOB["log"],
    benchmark:
        CARD_JOB["bench"]
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **resources(1000, 5),
    params:
        name=MODEL_NAME,
        model_fingerprint=model_fingerprint,
    script:
        "../scripts/model_card.py"

# Stage 3: the embedded GGUF model or a hub id -> a safetensors folder under resources/models/.
# A local folder (model.name_or_path) is used in place and needs no rule.
if MODEL_KIND != "local":

    rule model:
        output:
            directory(MODEL_DIR),
        log:
            f"logs/models/{model_slug(MODEL_NAME)}.log",
        benchmark:
            f"resources/models/bench/{model_slug(MODEL_NAME)}.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(4000),
            runtime=30,
        params:
            name=MODEL_NAME,
        script:
            "../scripts/model.py"

# density-grpo: pairs -> prompts -> chunked Zarr embeddings -> FAISS density weights -> reward model + GRPO
# (density vs uniform sampler) -> diversity evaluation -> memory reports.
# Run: snakemake --cores all [target] [--configfile partial.yaml]
import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)
from density_grpo.config import validate_config
from density_grpo.errors import UserError


configfile: f"{workflow.basedir}/config.yaml"


try:
    validate_config(config)  # the schema (one line naming the key), then each section's cross-field checks
except UserError as e:
    raise WorkflowError(str(e)) from None


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/embed.smk"
include: "rules/density.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        WEIGHTS,
        RM_METRICS,
        runs(GRPO_METRICS),
        COMPARISON,
        SUMMARY,


rule prompts:
    input:
        PROMPTS,


rule embeddings:
    input:
        all_chunks,


rule weights:
    input:
        WEIGHTS,


rule train:
    input:
        RM_METRICS,
        runs(GRPO_METRICS),


rule evaluate:
    input:
        COMPARISON,


rule reports:
    input:
        rules.build_reports.output,

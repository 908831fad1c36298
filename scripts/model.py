"""Snakemake entry point: rule model (download / convert to a safetensors folder)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import make_model

smk = snakemake  # noqa: F821
run_step(smk, lambda: make_model(smk.params.name, smk.output[0]))

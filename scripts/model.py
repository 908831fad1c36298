"""Snakemake entry point: rule model (download / convert to a safetensors folder)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import models
from density_grpo.cli import run_step

run_step(snakemake, models.run)  # noqa: F821

"""Snakemake entry point: rule model_card."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import models
from density_grpo.cli import run_step

run_step(snakemake, models.run_card)  # noqa: F821

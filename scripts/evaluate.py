"""Snakemake entry point: rule evaluate_model (diversity of one model's samples on held-out prompts)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import evaluate
from density_grpo.cli import run_step

run_step(snakemake, evaluate.run)  # noqa: F821

"""Snakemake entry point: rule compare (density vs uniform vs base)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import evaluate
from density_grpo.cli import run_step

run_step(snakemake, evaluate.run_compare)  # noqa: F821

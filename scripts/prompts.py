"""Snakemake entry point: checkpoint unique_prompts."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import make_prompts

smk = snakemake  # noqa: F821
run_step(smk, lambda: make_prompts(smk.input[0], smk.output[0]))

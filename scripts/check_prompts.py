"""Snakemake entry point: rule check_prompts (config checks that need the number of prompts)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import pairs
from density_grpo.cli import run_step

run_step(snakemake, pairs.run_checks)  # noqa: F821

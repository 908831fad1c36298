"""Snakemake entry point: rule grpo (one TRL GRPOTrainer policy per sampler)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import grpo
from density_grpo.cli import run_step

run_step(snakemake, grpo.run)  # noqa: F821

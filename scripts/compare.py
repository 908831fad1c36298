"""Snakemake entry point: rule compare (density vs uniform vs base, 95% intervals, curves)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import compare
from density_grpo.cli import run_step

run_step(snakemake, compare.run)  # noqa: F821

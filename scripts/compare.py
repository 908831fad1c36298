"""Snakemake entry point: rule compare (density vs uniform vs base)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import make_comparison

smk = snakemake  # noqa: F821
run_step(smk, lambda: make_comparison(list(smk.input), smk.output.json, smk.output.png))

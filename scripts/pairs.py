"""Snakemake entry point: rule pairs."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import make_pairs

smk = snakemake  # noqa: F821
run_step(smk, lambda: make_pairs(smk.config["data"], smk.output[0]))

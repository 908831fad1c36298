"""Snakemake entry point: rule embed_records (the embed chunks' memory records and benchmarks in one file)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.monitor import collect

run_step(snakemake, collect)  # noqa: F821

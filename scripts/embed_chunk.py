"""Snakemake entry point: rule embed_chunk (one Zarr store per chunk of prompts)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import embed
from density_grpo.cli import run_step

run_step(snakemake, embed.run)  # noqa: F821

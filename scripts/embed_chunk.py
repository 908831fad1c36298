"""Snakemake entry point: rule embed_chunk (one Zarr store per chunk of prompts)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import embed_chunk

smk = snakemake  # noqa: F821
run_step(smk, lambda: embed_chunk(smk.input.prompts, smk.input.model, int(smk.wildcards.i), smk.config, smk.output[0]))

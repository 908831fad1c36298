"""Snakemake entry point: rule evaluate (diversity of one model's samples on held-out prompts)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import make_eval

smk = snakemake  # noqa: F821
run_step(smk, lambda: make_eval(smk.input.prompts, smk.input.base, smk.input.policy, smk.input.rm, smk.wildcards.model, smk.config, smk.output[0]))

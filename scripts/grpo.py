"""Snakemake entry point: rule grpo (one TRL GRPOTrainer policy per sampler)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import make_grpo

smk = snakemake  # noqa: F821
run_step(
    smk,
    lambda: make_grpo(
        smk.input.prompts,
        smk.input.model,
        smk.wildcards.sampler,
        smk.config,
        smk.output.model,
        smk.output.metrics,
        smk.output.draws,
        weights_path=smk.input.get("weights"),
        rm_dir=smk.input.get("rm"),
    ),
)

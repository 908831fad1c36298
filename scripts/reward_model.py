"""Snakemake entry point: rule reward_model (TRL RewardTrainer, Bradley-Terry)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import make_reward_model

smk = snakemake  # noqa: F821
run_step(smk, lambda: make_reward_model(smk.input.pairs, smk.input.model, smk.config, smk.output.model, smk.output.metrics))

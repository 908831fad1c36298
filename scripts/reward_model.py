"""Snakemake entry point: rule reward_model (TRL RewardTrainer, Bradley-Terry)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import reward
from density_grpo.cli import run_step

run_step(snakemake, reward.run)  # noqa: F821

"""Snakemake entry point: rule knn_weights (FAISS k-NN density weights)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import density
from density_grpo.cli import run_step

run_step(snakemake, density.run)  # noqa: F821

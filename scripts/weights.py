"""Snakemake entry point: rule knn_weights (FAISS k-NN density weights)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.steps import make_weights

smk = snakemake  # noqa: F821
run_step(smk, lambda: make_weights(list(smk.input), smk.config, smk.output.weights, smk.output.meta))

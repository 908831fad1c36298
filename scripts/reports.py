"""Snakemake entry point: rule build_reports (memory report, summary, plots from small artifacts)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo.cli import run_step
from density_grpo.report import build_reports

smk = snakemake  # noqa: F821
run_step(smk, lambda: build_reports(f"results/{smk.config['run']}", smk.config, str(smk.output.summary).rsplit("/", 1)[0]) and None)

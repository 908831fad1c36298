"""Snakemake entry point: rule build_reports (memory report, summary, plots)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # noqa: F821 (snakemake is injected)
from density_grpo import report
from density_grpo.cli import run_step

run_step(snakemake, report.run)  # noqa: F821

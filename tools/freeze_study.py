"""Freeze a finished run's small artifacts (exactly the inputs of rule build_reports, plus its reports and the
compare figures the summary links) into a folder from which `make study-report` rebuilds the reports without
running any upstream job.

The input list comes from Snakemake's own dry run of build_reports, so the frozen set follows the rule: no
checkpoints, no chunk stores, no pairs or prompts tables. The data folder is linked, not copied (the workflow reads
the config's data path when it is parsed). Usage:
    python tools/freeze_study.py --configfile configs/study-cpu.yaml --run-dir /path/to/finished/checkout studies/study-cpu
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from density_grpo.report import EVAL_FIGURES  # noqa: E402


def report_inputs(run_dir: Path, configfile: Path) -> list[str]:
    """The paths build_reports reads, relative to run_dir, from a dry run that may only schedule build_reports."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(run_dir), "--nolock",
           "--quiet", "host", "-n", "reports", "--configfile", str(configfile.resolve()), "--allowed-rules", "build_reports", "reports",
           "-R", "build_reports"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    block = re.search(r"^rule build_reports:\n((?:    .*\n)+)", out, re.M)
    if not block:
        raise SystemExit(f"no build_reports job in the dry run of {run_dir}:\n{out[-2000:]}")
    inputs = re.search(r"^    input: (.*)$", block.group(1), re.M)
    outputs = re.search(r"^    output: (.*)$", block.group(1), re.M)
    paths = [p for line in (inputs, outputs) for p in line.group(1).split(", ")]
    # the summary links the compare stage's figures (not inputs of build_reports): freeze them beside it
    summary = next(Path(p) for p in paths if p.endswith("summary.md"))
    return paths + [os.path.normpath(summary.parent / fig) for fig in EVAL_FIGURES]


def freeze(run_dir: Path, configfile: Path, dest: Path) -> int:
    """Copy every build_reports input and output under dest (same relative paths); returns the bytes copied."""
    total = 0
    for rel in report_inputs(run_dir, configfile):
        src, dst = run_dir / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
            total += sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
        else:
            shutil.copy2(src, dst)
            total += dst.stat().st_size
    link = dest / "data"
    if not link.exists():
        link.symlink_to(os.path.relpath(REPO / "data", dest))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", type=Path, required=True)
    ap.add_argument("--run-dir", type=Path, default=REPO, help="the checkout whose results/ hold the finished run")
    ap.add_argument("dest", type=Path)
    args = ap.parse_args()
    size = freeze(args.run_dir.resolve(), args.configfile, args.dest)
    print(f"froze {size / 2**20:.2f} MiB of report inputs and outputs into {args.dest}")


if __name__ == "__main__":
    main()

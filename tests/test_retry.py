"""Retries with more memory: a job that fails for lack of memory succeeds when retried with twice mem_mb.

tests/retry/Snakefile has one rule, with the pipeline's attempt-scaled pattern
(mem_mb = base * 2 ** (attempt - 1)), whose job fails unless it gets at least threshold_mb.
The same workflow runs through SLURM in tests/test_slurm.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

RETRY_SNAKEFILE = REPO / "tests/retry/Snakefile"


def run(workdir, *args):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(RETRY_SNAKEFILE), "--directory", str(workdir), "--cores", "1",
           "--config", "base_mb=200", "threshold_mb=300", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=120)


def attempts(workdir) -> list[int]:
    return [
        int(re.match(r"mem_mb=(\d+) ", line).group(1)) for line in (workdir / "attempts.txt").read_text().splitlines()
    ]


def test_retry_gets_double_memory(tmp_path):
    res = run(tmp_path, "--retries", "1")
    assert res.returncode == 0, res.stderr[-4000:]
    assert attempts(tmp_path) == [200, 400]  # the first attempt failed, the retry saw twice the memory
    assert (tmp_path / "done.txt").read_text().strip() == "ok"


def test_without_retry_the_job_fails(tmp_path):
    res = run(tmp_path, "--retries", "0")
    assert res.returncode != 0
    assert "needs 300 MB, got 200 MB" in res.stderr
    assert attempts(tmp_path) == [200]
    assert not (tmp_path / "done.txt").exists()


def test_pipeline_rules_scale_memory_by_attempt():
    """Every rule of the pipeline takes its resources from the helper in rules/common.smk, whose mem_mb doubles
    per attempt."""
    common = (REPO / "rules/common.smk").read_text()
    helper = re.search(r"^def resources\(mem_mb, runtime, gpu=False, processes=1\):\n(?:    .*\n|\n)+", common, re.M)
    assert helper, "rules/common.smk: def resources(mem_mb, runtime, gpu=False, processes=1) not found"
    namespace: dict = {"config": {"memory": {"warn_fraction": 0.9}}, "GPU": 1}
    exec(helper.group(0), namespace)
    res = namespace["resources"](4000, 60)
    assert [res["mem_mb"](None, attempt) for attempt in (1, 2, 3)] == [4000, 8000, 16000]
    assert "gpu" not in res and namespace["resources"](4000, 60, gpu=True)["gpu"] == 1
    two = namespace["resources"](4000, 60, gpu=True, processes=2)  # data parallel: a GPU and the memory per process
    assert two["gpu"] == 2 and two["mem_mb"](None, 1) == 8000
    # a block is the lines indented one level deeper than its "resources:" (rules inside an if are indented further)
    pattern = re.compile(r"^( *)resources:\n((?:\1    .*\n)+)", re.M)
    blocks = [m[1] for smk in sorted((REPO / "rules").glob("*.smk")) for m in pattern.findall(smk.read_text())]
    assert len(blocks) >= 10, blocks
    for block in blocks:
        helper_call = r"\s+\*\*resources\(\d+, \d+(, gpu=True)?(, processes=config\[\"\w+\"\]\[\"processes\"\])?\),\n"
        assert re.fullmatch(helper_call, block), f"resources not from the helper:\n{block}"

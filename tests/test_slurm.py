"""SLURM support: how profiles/slurm resolves, and the pipeline on a real (throwaway, one-node) SLURM cluster.

The cluster tests (marker `slurm`) need Linux, root and Debian's Slurm 22.05 packages
(apt-get install slurmctld slurmd slurm-client munge); they are skipped with the reason otherwise.
tests/slurm/cluster.py starts munged, slurmctld and slurmd (no accounting, one fake GPU), and the module's
runs start together, since SLURM jobs spend most of their time waiting for the executor's squeue polls:
  - the tiny config through `--profile profiles/slurm` (every rule an sbatch job), compared byte for byte
    with a local run of the same config;
  - embed_chunk with `device: cuda`: proves the sbatch line asks for --gpus=1 and that SLURM allocates the
    (fake) GPU to the job. torch sees no CUDA here, so the job then fails with the pipeline's clear message:
    this proves the request and the allocation, not GPU embedding;
  - tests/retry/Snakefile: a job that fails below a memory threshold succeeds when resubmitted with twice
    the memory (profile `retries: 1`, attempt-scaled mem_mb), and SLURM granted the doubled --mem.
Every Snakemake on SLURM runs under `timeout -s KILL`: if status polling broke, it would loop, ignoring SIGTERM.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import REPO, snakemake, tiny_config, tiny_pairs, write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
from cluster import LocalSlurm, why_not_available  # noqa: E402

PROFILE = REPO / "profiles/slurm"
SNAKEFILE = REPO / "Snakefile"
RETRY_SNAKEFILE = REPO / "tests/retry/Snakefile"
RES = Path("results/tiny")
RUN_TIMEOUT = 420  # seconds per Snakemake on SLURM; the whole module takes about 3-4 min on 2 busy cores
LOCK = Path("/tmp/density-grpo-slurm-test.lock")  # one local cluster per machine

SBATCH = re.compile(r"sbatch call: (sbatch .*?) --wrap=")
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_([A-Za-z0-9_]+)/")


def no_slurm_path(tmp: Path) -> str:
    """A PATH with only a shell and `which`: the machine looks like a laptop without SLURM."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sh", "bash", "which"):
        if not (bin_dir / tool).exists():
            os.symlink(shutil.which(tool), bin_dir / tool)
    return str(bin_dir)


def sbatch_calls(output: str) -> dict[str, list[str]]:
    """sbatch command lines the executor ran (logged with --verbose), by rule (from --comment rule_<name>)."""
    calls: dict[str, list[str]] = {}
    for call in SBATCH.findall(output):
        comment = re.search(r"--comment rule_(\S+)", call).group(1)  # rule_<rule>[_wildcards_<values>]
        rule = comment.split("_wildcards_")[0]
        calls.setdefault(rule, []).append(call)
    return calls


def submitted(output: str) -> dict[str, list[str]]:
    """SLURM job ids by rule."""
    jobs: dict[str, list[str]] = {}
    for jobid, rule in SUBMITTED.findall(output):
        jobs.setdefault(rule, []).append(jobid)
    return jobs


def slurm_snakemake(workdir: Path, snakefile: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake with --profile profiles/slurm in `workdir`; output also saved to workdir/snakemake.out."""
    cmd = [
        "timeout", "-s", "KILL", str(RUN_TIMEOUT),
        sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir),
        "--profile", str(PROFILE),
        "--slurm-init-seconds-before-status-checks", "2",  # default 40 s: too slow for seconds-long jobs
        "--slurm-keep-successful-logs", "--verbose", *args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    (workdir / "snakemake.out").write_text(res.stdout + res.stderr)
    if res.returncode in (124, 137):
        raise AssertionError(
            f"snakemake on SLURM killed after {RUN_TIMEOUT}s (status polling stuck?):\n{res.stderr[-6000:]}"
        )
    return res


def timed(fn, *args):
    t = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - t


# -- no cluster needed --------------------------------------------------------------------------------------


def resolved_options(tmp_path: Path, *args: str) -> dict:
    """The options Snakemake resolves for the pipeline from its profiles, on a machine without SLURM."""
    code = (
        "import json, sys; from snakemake.cli import parse_args; "
        "_, a = parse_args(sys.argv[1:]); "
        "print(json.dumps({k: getattr(a, k) for k in ('executor', 'retries', 'jobs', 'latency_wait', "
        "'rerun_incomplete', 'slurm_status_command', 'default_resources', 'set_resources')}, default=str))"
    )
    cmd = [sys.executable, "-c", code, "-s", str(SNAKEFILE), "--profile", str(PROFILE), *args]
    res = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PATH": no_slurm_path(tmp_path)}
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_slurm_profile_settings(tmp_path):
    opts = resolved_options(tmp_path)
    assert opts["executor"] == "slurm" and opts["jobs"] == 100 and opts["latency_wait"] == 60
    assert opts["rerun_incomplete"] and opts["slurm_status_command"] == "squeue"
    assert "runtime" in opts["set_resources"].get("embed_chunk", ""), opts["set_resources"]
    # profiles/default is Snakemake's *workflow* profile: loaded on every run, its keys override --profile's.
    assert opts["retries"] == 1, (
        "profiles/slurm sets retries: 1, but another profile overrides it: profiles/default/config.yaml is "
        "auto-loaded as the workflow profile and its keys win over --profile; drop `retries` from it"
    )


def test_dry_run_without_slurm(tmp_path, tiny_model):
    pairs = write_jsonl(tiny_pairs(), tmp_path / "pairs.jsonl")
    config = tiny_config(tmp_path, tiny_model, pairs)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path),
           "--profile", str(PROFILE), "--configfile", str(config), "-n"]  # fmt: skip
    res = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PATH": no_slurm_path(tmp_path)}
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "This was a dry-run" in res.stdout + res.stderr


# -- on a local SLURM cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    lock = open(LOCK, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        pytest.skip("another test run holds the local SLURM cluster")
    reason = why_not_available()
    if reason:
        lock.close()
        pytest.skip(reason)
    c = LocalSlurm()
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.base, ignore_errors=True)
        lock.close()


@pytest.fixture(scope="module")
def runs(cluster, tiny_model, tmp_path_factory):
    """Starts every run at once; each test waits for its own. Values: Future of (CompletedProcess, seconds)."""
    base = tmp_path_factory.mktemp("slurm")
    pairs = write_jsonl(tiny_pairs(), base / "pairs.jsonl")
    dirs = {name: base / name for name in ("local", "slurm", "gpu", "retry")}
    for d in dirs.values():
        d.mkdir()
    config = {name: tiny_config(dirs[name], tiny_model, pairs) for name in ("local", "slurm", "gpu")}

    def gpu_run(local: Future):
        """embed_chunk 0 again, with device: cuda, over a copy of the local run's results (mtimes kept)."""
        local.result()
        shutil.copytree(dirs["local"] / "results", dirs["gpu"] / "results")
        cuda = dirs["gpu"] / "cuda.yaml"
        cuda.write_text(yaml.safe_dump({"device": "cuda"}))
        target = str(RES / "embed/chunk_0.zarr")
        return timed(slurm_snakemake, dirs["gpu"], SNAKEFILE, "--configfile", str(config["gpu"]), str(cuda),
                     "--forcerun", target, "--retries", "0", target)  # fmt: skip

    pool = ThreadPoolExecutor(max_workers=4)
    futures = {
        "slurm": pool.submit(
            timed, slurm_snakemake, dirs["slurm"], SNAKEFILE, "weights", "--configfile", str(config["slurm"])
        ),
        "retry": pool.submit(
            timed, slurm_snakemake, dirs["retry"], RETRY_SNAKEFILE, "--config", "base_mb=200", "threshold_mb=300"
        ),
        "local": pool.submit(timed, snakemake, dirs["local"], "weights", "--configfile", str(config["local"])),
    }
    futures["gpu"] = pool.submit(gpu_run, futures["local"])
    yield {"dirs": dirs, **futures}
    pool.shutdown(wait=True)


@pytest.mark.slurm
def test_pipeline_on_slurm_matches_local(runs, cluster):
    res, seconds = runs["slurm"].result()
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{out[-6000:]}\n{cluster.logs()}"
    print(f"\npipeline on SLURM: {seconds:.0f}s (local run: {runs['local'].result()[1]:.0f}s)")

    local, slurm = runs["dirs"]["local"] / RES, runs["dirs"]["slurm"] / RES
    for name in ("data/prompts.parquet", "density/weights.parquet"):
        assert (slurm / name).read_bytes() == (local / name).read_bytes(), name

    jobs = submitted(out)  # every job of the pipeline ran as a SLURM job, and SLURM says it completed
    assert {rule: len(ids) for rule, ids in jobs.items()} == {
        "pairs": 1,
        "unique_prompts": 1,
        "embed_chunk": 4,
        "knn_weights": 1,
    }
    for jobid in sum(jobs.values(), []):
        assert "JobState=COMPLETED" in cluster.show_job(jobid), cluster.show_job(jobid)

    calls = sbatch_calls(out)  # rule resources became sbatch options
    assert all("--mem 2000" in c and "--cpus-per-task=1" in c for c in calls["pairs"]), calls["pairs"]
    assert all("--mem 4000" in c and "--cpus-per-task=2" in c and "-t 60" in c for c in calls["knn_weights"])
    assert all("--gpus" not in c and "-t 60" in c for c in calls["embed_chunk"]), calls["embed_chunk"]  # device: cpu


@pytest.mark.slurm
def test_gpu_rule_requests_a_gpu(runs, cluster):
    res, seconds = runs["gpu"].result()
    out = res.stdout + res.stderr
    workdir = runs["dirs"]["gpu"]
    calls = sbatch_calls(out)
    assert list(calls) == ["embed_chunk"], f"only the forced chunk should run: {list(calls)}\n{out[-4000:]}"
    print(f"\nGPU rule on SLURM ({seconds:.0f}s): {calls['embed_chunk'][0]}")
    assert "--gpus=1" in calls["embed_chunk"][0]
    (jobid,) = submitted(out)["embed_chunk"]
    job = subprocess.run(["scontrol", "show", "job", "-d", jobid], capture_output=True, text=True).stdout
    assert "TresPerJob=gres:gpu:1" in job and "JOB_GRES=gpu:1" in job, job  # requested and allocated
    if res.returncode != 0:  # expected without CUDA: a clear error, and Snakemake stops instead of polling forever
        log = (workdir / "logs/tiny/embed_chunk_0.log").read_text()
        assert "torch sees no CUDA device" in log, f"{log}\n{out[-4000:]}"
        assert "JobState=FAILED" in job


@pytest.mark.slurm
def test_retry_doubles_memory_on_slurm(runs, cluster):
    res, seconds = runs["retry"].result()
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{out[-6000:]}\n{cluster.logs()}"
    print(f"\nretry workflow on SLURM: {seconds:.0f}s")
    workdir = runs["dirs"]["retry"]
    assert (workdir / "done.txt").read_text().strip() == "ok"
    # first attempt: --mem 200 (fails below 300 MB); the retry: --mem 400
    calls = sbatch_calls(out)["needs_memory"]
    assert [re.search(r"--mem (\d+)", c).group(1) for c in calls] == ["200", "400"], calls
    seen = [
        re.fullmatch(r"mem_mb=(\d+) slurm_job=(\d+)", line).groups()
        for line in (workdir / "attempts.txt").read_text().splitlines()
    ]
    assert [mem for mem, _ in seen] == ["200", "400"] and [job for _, job in seen] == submitted(out)["needs_memory"]
    # and SLURM granted that memory to the two jobs (the first failed, the second completed)
    jobs = [cluster.show_job(job) for _, job in seen]
    assert "MinMemoryNode=200M" in jobs[0] and "JobState=FAILED" in jobs[0], jobs[0]
    assert "MinMemoryNode=400M" in jobs[1] and "JobState=COMPLETED" in jobs[1], jobs[1]

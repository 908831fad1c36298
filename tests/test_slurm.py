"""SLURM support: how profiles/slurm resolves, and the pipeline on a real (throwaway, one-node) SLURM cluster.

The cluster tests (marker `slurm`) need Linux, root and Debian's Slurm 22.05 packages
(apt-get install slurmctld slurmd slurm-client munge); they are skipped with the reason otherwise.
tests/slurm/cluster.py starts munged, slurmctld and slurmd (no accounting, two fake GPUs, 4x the machine's
cores and memory), and the module's runs start together, since SLURM jobs spend most of their time waiting for
the executor's squeue polls:
  - the tiny config through `--profile profiles/slurm` (every rule an sbatch job), compared byte for byte
    with a local run of the same config: the weights, and one GRPO job (uniform arm, seed 0) on 2 data-parallel
    processes (`grpo.processes: 2`, self-certainty reward: no reward model job), which is one sbatch job of one
    task with --cpus-per-task=2 and twice the rule's --mem, and launches its 2 processes inside that allocation
    (the local reference runs that job alone, over a copy of the local run's prompts);
  - embed_chunk and that GRPO job with `device: cuda`: proves the sbatch lines ask for --gpus=1 and --gpus=2
    and that SLURM allocates the (fake) GPUs to the jobs. torch sees no CUDA here, so the jobs then fail with the
    pipeline's clear message: this proves the requests and the allocations, not GPU embedding or training;
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
import torch
import yaml
from safetensors.torch import load_file
from conftest import REPO, planned_jobs, snakemake, tiny_config, tiny_pairs, write_jsonl
from test_distributed import ATOL, RTOL  # 1 vs 2 processes: float32 reduction noise (see that module)

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
from cluster import LocalSlurm, why_not_available  # noqa: E402

PROFILE = REPO / "profiles/slurm"
SNAKEFILE = REPO / "Snakefile"
RETRY_SNAKEFILE = REPO / "tests/retry/Snakefile"
RES = Path("results/tiny")
# One GRPO job on 2 data-parallel processes; self_certainty needs no reward model job (rm.max_steps would add one).
DP = {"processes": 2, "reward": "self_certainty"}
DP_JOB = "grpo_uniform_0"
DP_RUN = RES / "grpo/uniform/seed0"
DP_TARGET = str(DP_RUN / "draws.parquet")
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
    dirs = {name: base / name for name in ("local", "slurm", "gpu", "retry", "dp")}
    for d in dirs.values():
        d.mkdir()
    config = {name: tiny_config(dirs[name], tiny_model, pairs, grpo=DP) for name in ("local", "slurm", "gpu", "dp")}

    prompts: Future = Future()  # done once the local run's prompts exist and the gpu and dp folders have a copy

    def local_run():
        """The local run in two parts: the prompts checkpoint, copied (mtimes kept: nothing upstream is out of date)
        for the gpu and dp runs, which need no more; then the weights."""
        t = time.monotonic()
        try:
            snakemake(dirs["local"], str(RES / "data/prompts.parquet"), "--configfile", str(config["local"]))
            for name in ("gpu", "dp"):
                shutil.copytree(dirs["local"] / "results", dirs[name] / "results")
        except BaseException as e:
            prompts.set_exception(e)
            raise
        prompts.set_result(None)
        res = snakemake(dirs["local"], "weights", "--configfile", str(config["local"]))
        return res, time.monotonic() - t

    def gpu_run():
        """embed_chunk 0 and the 2-process GRPO job with device: cuda, over the local run's prompts; --keep-going:
        each job fails on its own (no CUDA here)."""
        prompts.result()
        cuda = dirs["gpu"] / "cuda.yaml"
        cuda.write_text(yaml.safe_dump({"device": "cuda"}))
        targets = [str(RES / "embed/chunk_0.zarr"), DP_TARGET]
        return timed(slurm_snakemake, dirs["gpu"], SNAKEFILE, "--configfile", str(config["gpu"]), str(cuda),
                     "--retries", "0", "--keep-going", *targets)  # fmt: skip

    def dp_run():
        """The 2-process GRPO job run locally over the local run's prompts: the reference for the SLURM run's."""
        prompts.result()
        return timed(snakemake, dirs["dp"], DP_TARGET, "--configfile", str(config["dp"]))

    pool = ThreadPoolExecutor(max_workers=5)
    futures = {
        "slurm": pool.submit(
            timed, slurm_snakemake, dirs["slurm"], SNAKEFILE, "weights", DP_TARGET, "--configfile", str(config["slurm"])
        ),
        "retry": pool.submit(
            timed, slurm_snakemake, dirs["retry"], RETRY_SNAKEFILE, "--config", "base_mb=200", "threshold_mb=300"
        ),
        "local": pool.submit(local_run),
        "dp": pool.submit(dp_run),
        "gpu": pool.submit(gpu_run),
    }
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
        "grpo": 1,
    }
    for jobid in sum(jobs.values(), []):
        assert "JobState=COMPLETED" in cluster.show_job(jobid), cluster.show_job(jobid)

    calls = sbatch_calls(out)  # rule resources became sbatch options
    assert all("--mem 2000" in c and "--cpus-per-task=1" in c for c in calls["pairs"]), calls["pairs"]
    assert all("--mem 4000" in c and "--cpus-per-task=2" in c and "-t 60" in c for c in calls["knn_weights"])
    assert all("--gpus" not in c and "-t 60" in c for c in calls["embed_chunk"]), calls["embed_chunk"]  # device: cpu


@pytest.mark.slurm
def test_two_process_grpo_on_slurm_matches_local(runs, cluster):
    """grpo.processes: 2 on CPU: one sbatch job, one task, 2 CPUs (threads: 1 per process) and twice the rule's
    memory; inside it the step launched 2 processes (both ranks' peaks in the memory record), and what rank 0 wrote
    equals the local 2-process run's: the draws byte for byte, metrics and weights within float32 noise."""
    res, _ = runs["slurm"].result()
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{out[-6000:]}\n{cluster.logs()}"
    (call,) = sbatch_calls(out)["grpo"]
    print(f"\n2-process GRPO job on SLURM: {call}")
    assert "--ntasks=1" in call and "--cpus-per-task=2" in call and "--mem 16000" in call and "--gpus" not in call
    (jobid,) = submitted(out)["grpo"]
    job = cluster.show_job(jobid)  # what SLURM allocated: one node, one task of 2 CPUs, 16000 MB
    for granted in ("JobState=COMPLETED", "NumNodes=1 NumCPUs=2 NumTasks=1 CPUs/Task=2", "MinMemoryNode=16000M"):
        assert granted in job, job
    slurm_log = Path(re.search(r"StdOut=(\S+)", job).group(1)).read_text()  # the job's own output, kept
    assert "launching 2 processes (threads per process: 1)" in slurm_log, slurm_log[-4000:]

    dp, seconds = runs["dp"].result()
    print(f"the same job locally: {seconds:.0f}s")
    assert planned_jobs(dp.stdout + dp.stderr) == {"grpo": 1}  # over the local run's prompts: only this job ran
    local, slurm = runs["dirs"]["dp"], runs["dirs"]["slurm"]
    for work in (local, slurm):
        rec = json.loads((work / RES / f"memory/{DP_JOB}.json").read_text())
        ranks = rec["peak_rss_per_rank_mb"]
        assert rec["status"] == "ok" and rec["extra"]["processes"] == 2 and len(ranks) == 2 and min(ranks) > 100, rec
    a, b = local / DP_RUN, slurm / DP_RUN
    assert (b / "draws.parquet").read_bytes() == (a / "draws.parquet").read_bytes()
    ma, mb = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    assert [r["prompt_ids"] for r in mb] == [r["prompt_ids"] for r in ma] and len(mb) == 2
    for key in ("reward", "reward_std", "loss", "grad_norm"):
        assert [r[key] for r in mb] == pytest.approx([r[key] for r in ma], rel=RTOL, abs=ATOL), key
    wa, wb = (load_file(d / "model/model.safetensors") for d in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=RTOL, atol=ATOL, msg=lambda m: f"{k}: {m}")


@pytest.mark.slurm
def test_gpu_rules_request_gpus(runs, cluster):
    """device: cuda: embed_chunk asks for --gpus=1, the GRPO job on 2 processes for --gpus=2 (one task, 2 CPUs);
    SLURM allocates the (fake) GPUs, then each job fails with the pipeline's one line (torch sees no CUDA here; the
    GRPO job before starting its processes)."""
    res, seconds = runs["gpu"].result()
    out = res.stdout + res.stderr
    workdir = runs["dirs"]["gpu"]
    calls = sbatch_calls(out)
    assert sorted(calls) == ["embed_chunk", "grpo"], f"only the targets' jobs should run: {list(calls)}\n{out[-4000:]}"
    print(f"\nGPU rules on SLURM ({seconds:.0f}s): {calls['embed_chunk'][0]}\n{calls['grpo'][0]}")
    assert "--gpus=1" in calls["embed_chunk"][0]
    grpo = calls["grpo"][0]
    assert "--gpus=2" in grpo and "--cpus-per-task=2" in grpo and "--mem 16000" in grpo and "--ntasks" not in grpo
    jobs = submitted(out)
    for rule, log, gpus in (("embed_chunk", "embed_chunk_0", 1), ("grpo", DP_JOB, 2)):
        (jobid,) = jobs[rule]
        job = subprocess.run(["scontrol", "show", "job", "-d", jobid], capture_output=True, text=True).stdout
        assert f"TresPerJob=gres:gpu:{gpus}" in job and f"JOB_GRES=gpu:{gpus}" in job, job  # requested and allocated
        if res.returncode != 0:  # expected without CUDA: a clear error, and Snakemake stops instead of polling forever
            text = (workdir / f"logs/tiny/{log}.log").read_text()
            assert "torch sees no CUDA device" in text and "launching" not in text, f"{text}\n{out[-4000:]}"
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

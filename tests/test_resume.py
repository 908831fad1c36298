"""Integrity end to end: SIGKILL mid-embedding, mid-weights and mid-GRPO save, then resume to byte-identical
artifacts; a model rebuilt in place reruns its dependants; a corrupted chunk names the command that rebuilds it;
the prompt-count checks stop the run before any model work, and only for the jobs that read their keys; a restored
run folder resumes (or, copied in part, names what to do); an unreadable data file is one line.

The kills use tests/killer/sitecustomize.py: the job dies after writing its temporary, before publishing it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, copy_run, planned_jobs, tiny_config, tiny_pairs, write_jsonl

from density_grpo.store import read_chunk

pytestmark = pytest.mark.e2e
RES = Path("results/tiny")
KILLER = Path(__file__).resolve().parent / "killer"


def smk(workdir: Path, *args: str, kill_at: str | None = None, kill: str = "job") -> subprocess.CompletedProcess:
    """Snakemake in a session of its own (a group kill takes Snakemake and its job, never pytest)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kill_at:
        env.update(DENSITY_GRPO_KILL_AT=kill_at, DENSITY_GRPO_KILL=kill)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(KILLER), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    cmd += [*args, "--configfile", str(workdir / "tiny.yaml")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, start_new_session=True)


def ok(res: subprocess.CompletedProcess) -> str:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    return out


def job_outputs(workdir: Path, rule: str, target: str) -> list[list[str]]:
    """Outputs of each `rule` job a dry run of `target` plans (paths are the rules' business, not the tests')."""
    out = ok(smk(workdir, "-n", "-F", target, "--quiet", "host"))  # the profile's --quiet rules hides job blocks
    blocks = re.findall(rf"^rule {rule}:\n(?:    .*\n)*?    output: (.+)$", out, re.M)
    return [[p.strip() for p in block.split(",")] for block in blocks]


GRPO_PATHS: dict[Path, tuple[str, str]] = {}


def grpo_paths(workdir: Path) -> tuple[str, str]:
    """(metrics target, model folder) of the uniform arm's GRPO job."""
    if workdir not in GRPO_PATHS:
        jobs = [o for o in job_outputs(workdir, "grpo", "train") if any("uniform" in p for p in o)]
        GRPO_PATHS[workdir] = next(p for p in jobs[0] if p.endswith(".jsonl")), next(p for p in jobs[0] if p.endswith("/model"))
    return GRPO_PATHS[workdir]


def stale(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "results").rglob(".*.tmp-*"))


def arrays(workdir: Path, i: int) -> tuple[list[str], np.ndarray]:
    ids, emb, _ = read_chunk(workdir / RES / f"embed/chunk_{i}.zarr")
    return ids, emb


def workdir_with(tmp: Path, model: Path, **extra) -> Path:
    pairs = write_jsonl(tiny_pairs(), tmp / "pairs.jsonl")
    tiny_config(tmp, model, pairs, embed={"chunk_size": 15, "batch_tokens": 512, "max_length": 64}, **extra)
    return tmp


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model) -> Path:
    """A model folder of this module's own: the last test rebuilds it in place."""
    return Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("model") / "tiny-llama"))


@pytest.fixture(scope="module")
def killed(tmp_path_factory, model) -> tuple[Path, dict, dict]:
    """A run killed mid-embedding (the job), mid-weights (Snakemake and the job) and mid-GRPO save (the job), each
    time resumed; then (the reference) the same jobs rerun uninterrupted. Returns the workdir, what each step left
    behind, and the resumed artifacts' bytes."""
    workdir, seen = workdir_with(tmp_path_factory.mktemp("killed"), model), {}
    metrics, model_dir = grpo_paths(workdir)
    targets = ["weights", metrics]

    def killed_at(name: str, res: subprocess.CompletedProcess, output: str) -> None:
        seen[name] = res.returncode, (workdir / output).exists(), stale(workdir)

    killed_at("embedding", smk(workdir, "weights", kill_at="chunk_1.zarr"), f"{RES}/embed/chunk_1.zarr")
    killed_at("weights", smk(workdir, "weights", kill_at="weights.parquet", kill="group"), f"{RES}/density/weights.parquet")
    seen["chunk log"] = (workdir / "logs/tiny/embed_chunk_1.log").read_text()  # chunk 1 ran again before the kill
    locked = smk(workdir, "weights")
    seen["locked"] = locked.returncode, locked.stdout + locked.stderr
    ok(smk(workdir, "--unlock"))
    killed_at("grpo", smk(workdir, *targets, kill_at=model_dir), model_dir)  # the weights first, then RM and GRPO
    ok(smk(workdir, *targets))
    seen["after"] = stale(workdir)
    seen["second run"] = ok(smk(workdir, *targets))

    def artifacts() -> dict[str, bytes]:
        files = [f"{RES}/embed/chunk_1.zarr/{a}" for a in ("embeddings/c/0/0", "prompt_id/c/0")]
        files += [f"{RES}/density/weights.parquet", f"{model_dir}/model.safetensors", f"{model_dir}/config.json"]
        files += [str(Path(metrics).with_name("draws.parquet"))]
        return {f: (workdir / f).read_bytes() for f in files}

    resumed = artifacts()

    # a corrupted chunk: the weights rule names it and the command that rebuilds it; following the advice rebuilds
    # chunk 1 and the weights uninterrupted (the reference for those), --forcerun the GRPO arm (its reference)
    array = workdir / RES / "embed/chunk_1.zarr/embeddings/c/0/0"
    data = bytearray(array.read_bytes())
    data[300] ^= 0xFF
    data[301] ^= 0x0F
    array.write_bytes(bytes(data))
    seen["corrupted"] = smk(workdir, "weights", "-R", "knn_weights")
    seen["weights log"] = (workdir / "logs/tiny/knn_weights.log").read_text()
    seen["weights after failure"] = (workdir / RES / "density/weights.parquet").exists()
    shutil.rmtree(workdir / RES / "embed/chunk_1.zarr")  # the advice
    seen["rebuilt"] = jobs_run(ok(smk(workdir, *targets)))
    seen["reference"] = jobs_run(ok(smk(workdir, *targets, "--forcerun", "grpo")))
    return workdir, seen, {f: (data, (workdir / f).read_bytes()) for f, data in resumed.items()}


def jobs_run(out: str) -> list[str]:
    return sorted(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", out))


def assert_identical(pairs: dict[str, tuple[bytes, bytes]], part: str) -> None:
    files = [f for f in pairs if part in f]
    assert files
    for f in files:
        assert pairs[f][0] == pairs[f][1], f"{f} differs from an uninterrupted run"


def test_kill_mid_embedding(killed):
    _, seen, pairs = killed
    code, published, temps = seen["embedding"]
    assert code != 0 and not published and temps[0].startswith(".chunk_1.zarr.tmp-")
    assert "left behind by an interrupted job" in seen["chunk log"]  # removed when the chunk's job restarted
    assert_identical(pairs, "/embed/")


def test_kill_snakemake_and_job_mid_weights(killed):
    """SIGKILL of Snakemake and its job leaves Snakemake's lock: `snakemake --unlock` (README), then resume."""
    _, seen, pairs = killed
    code, published, temps = seen["weights"]
    assert code == -9 and not published and ".weights.parquet.tmp-" in " ".join(temps)
    assert seen["locked"][0] != 0 and "--unlock" in seen["locked"][1]
    assert_identical(pairs, "weights.parquet")


def test_kill_mid_grpo_save(killed):
    workdir, seen, pairs = killed
    _, model_dir = grpo_paths(workdir)
    code, published, temps = seen["grpo"]
    assert code != 0 and not published and any(t.startswith(f".{Path(model_dir).name}.tmp-") for t in temps)
    assert seen["after"] == [] and "Nothing to be done" in seen["second run"]
    assert seen["reference"] == ["grpo"]
    assert_identical(pairs, model_dir)
    assert_identical(pairs, "draws.parquet")


def test_corrupted_chunk_names_the_rebuild(killed):
    """Two flipped bytes in a chunk's array file: the weights rule fails in one line; its advice rebuilds the chunk."""
    _, seen, _ = killed
    chunk = f"{RES}/embed/chunk_1.zarr"
    res = seen["corrupted"]
    assert res.returncode != 0 and f"{chunk}: 'embeddings' does not match its recorded sha256" in res.stderr
    assert f"delete it (rm -r {chunk}) and rerun snakemake to rebuild it" in res.stderr
    assert not seen["weights after failure"]
    assert "Traceback" not in seen["weights log"] and seen["weights log"].count(" ERROR ") == 1
    assert seen["rebuilt"] == ["embed_chunk", "knn_weights", "weights"]  # only the deleted chunk and the weights


def test_model_rebuilt_in_place_reruns_its_dependants(killed, model):
    from tiny_model import build_tiny_model

    workdir, _, _ = killed
    build_tiny_model(model, seed=1)  # same architecture and file sizes, other weights
    res = ok(smk(workdir, "-n", "weights", grpo_paths(workdir)[0]))
    assert planned_jobs(res) == {"embed_chunk": 2, "knn_weights": 1, "reward_model": 1, "grpo": 1, "weights": 1}


def test_prompt_checks_stop_before_model_work(tmp_path, tiny_model):
    """Right after the prompts checkpoint, before any embedding or reward-model job (Snakemake frames the line as the
    InputFunctionException of the job whose input function ran the checks)."""
    workdir = workdir_with(tmp_path, tiny_model, knn={"k": 30})
    res = smk(workdir)
    out = res.stdout + res.stderr
    line = "config key knn.k: 30 neighbours need at least 31 prompts, the data has 30"
    assert res.returncode != 0 and line in out and "InputFunctionException" in out
    assert re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", out) != []
    assert not (workdir / "logs/tiny/embed_chunk_0.log").exists() and not (workdir / "logs/tiny/reward_model.log").exists()
    assert (workdir / RES / "data/prompts.parquet").exists()
    res = smk(workdir, "-n")  # later dry runs fail at once
    assert res.returncode != 0 and line in res.stdout + res.stderr


def test_prompt_checks_only_for_the_requested_targets(tmp_path, tiny_model):
    """An evaluation pool that takes every prompt stops the training and evaluation jobs, not the weights: each job
    checks only the keys it reads."""
    workdir = workdir_with(tmp_path, tiny_model, eval={"pool": 30, "prompts": 6})
    ok(smk(workdir, "prompts"))
    assert ok(smk(workdir, "-n", "weights")) and ok(smk(workdir, "-n", "embeddings"))
    res = smk(workdir, "-n", "train")
    line = "config key eval.pool: 30 held-out prompts leave none of the 30 prompts for training"
    assert res.returncode != 0 and line in res.stdout + res.stderr


def test_restored_run_folder(tmp_path, finished_run):
    """A run's data/ and embed/ folders copied (mtimes kept) into another run resume there: the weights job gets
    its real inputs and publishes the same weights, no chunk is embedded again. A data/ folder copied in part fails
    in one line whose advice works."""
    workdir = copy_run(finished_run, tmp_path / "run")
    other = workdir / "results/other"
    for part in ("data", "embed"):
        shutil.copytree(workdir / RES / part, other / part)
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    (workdir / "tiny.yaml").write_text(yaml.safe_dump({**cfg, "run": "other"}))
    assert jobs_run(ok(smk(workdir, "weights"))) == ["knn_weights", "weights"]
    weights = "density/weights.parquet"
    assert (other / weights).read_bytes() == (workdir / RES / weights).read_bytes()

    shutil.rmtree(other / "density")
    (other / "data/prompts.json").unlink()
    res = smk(workdir, "weights")
    line = (
        "results/other/data/prompts.json is missing beside results/other/data/prompts.parquet (a run folder copied in "
        "part?): copy it from the original run, or rebuild the prompts: rm results/other/data/prompts.parquet, then "
        "rerun snakemake"
    )
    assert res.returncode != 0 and line in res.stderr and "Traceback" not in res.stderr
    (other / "data/prompts.parquet").unlink()
    assert jobs_run(ok(smk(workdir, "weights"))) == ["knn_weights", "unique_prompts", "weights"]
    assert (other / weights).read_bytes() == (workdir / RES / weights).read_bytes()


def test_unreadable_data_file(tmp_path, tiny_model):
    """A data file the user cannot read is named when the workflow is read (root needs its DAC override dropped)."""
    workdir = workdir_with(tmp_path, tiny_model)
    (workdir / "pairs.jsonl").chmod(0)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root reads any file; setpriv is needed to drop that")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    cmd = [*prefix, sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    res = subprocess.run([*cmd, "-n", "--configfile", str(workdir / "tiny.yaml")], capture_output=True, text=True, cwd=workdir)
    expected = "config key data.path: cannot read 'pairs.jsonl' (Permission denied)"  # as tiny.yaml names it
    out = res.stdout + res.stderr
    assert res.returncode != 0 and expected in out, out[-3000:]
    assert "Traceback" not in out and not (workdir / "results").exists()

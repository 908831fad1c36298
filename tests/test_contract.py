"""Params are the contract: every step reads exactly the params its rule declares, and a config change reruns
exactly the jobs whose code reads it (dry runs on a finished tiny run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import copy_run, planned_jobs, snakemake, tensorboard_scalars, tiny_pairs, write_jsonl

pytestmark = pytest.mark.e2e
STEP_RULES = {
    "pairs", "unique_prompts", "model_card", "embed_chunk", "embed_records", "knn_weights", "reward_model", "grpo",
    "evaluate_model", "compare", "build_reports",
}  # fmt: skip
DOWNSTREAM = {"compare": 1, "build_reports": 1, "all": 1}
RES = "results/tiny"
# the tiny run: 4 chunks; arms density and uniform x seeds 0 and 1; evaluate_model: base, control + 4 policies


@pytest.fixture(scope="module")
def audited_run(finished_run, tmp_path_factory):
    """A copy of the finished tiny run (its dry runs refresh params stamps) and the params its steps recorded they
    read (DENSITY_GRPO_AUDIT_PARAMS)."""
    workdir = copy_run(finished_run, tmp_path_factory.mktemp("audited") / "run")
    return workdir, workdir / "tiny.yaml", finished_run / "audit"


def audits(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def assert_read_equals_declared(records: dict[str, dict]) -> None:
    for job, rec in records.items():
        assert rec["read"] == rec["declared"], f"{job}: declared but not read {sorted(set(rec['declared']) - set(rec['read']))}"


def test_every_step_reads_exactly_its_params(audited_run):
    _, _, audit = audited_run
    records = audits(audit)
    assert {r["rule"] for r in records.values()} == STEP_RULES
    assert len([r for r in records.values() if r["rule"] == "embed_chunk"]) == 4
    assert_read_equals_declared(records)
    assert "knn.index" in records["knn_weights"]["declared"] and "knn.seed" not in records["knn_weights"]["declared"]
    assert "grpo.token_chunk" not in records["grpo_density_0"]["declared"]  # rm reward: never reads it
    assert "eval.temperature" in records["evaluate_model_control"]["declared"]  # the control's own temperature
    assert "dtype" not in records["reward_model"]["declared"]  # trains in fp32 master weights (train_precision)
    assert "device" in records["evaluate_model_base"]["declared"] and "train_precision" in records["reward_model"]["declared"]
    assert "density.components" not in records["knn_weights"]["declared"]  # postprocess none: never reads it
    assert "embed.pooling" in records["embed_chunk_0"]["declared"]


def test_other_branches_read_exactly_their_params(audited_run, tmp_path):
    """The IVF self-join, the self-certainty reward and the hh-rlhf source declare (and read) other keys."""
    workdir, config, _ = audited_run
    copy = copy_run(workdir, tmp_path / "copy")
    config = copy / "tiny.yaml"
    branch = copy / "branch.yaml"
    branch.write_text(yaml.safe_dump({
        "knn": {"index": "ivfjoin", "nlist": 2, "nprobe": 1, "recall_sample": 10},
        "density": {"postprocess": "abtt", "components": 2, "length_residual": "tokens_turns"},
        "grpo": {"reward": "self_certainty"},
    }))  # fmt: skip
    audit = copy / "audit"
    env = {"DENSITY_GRPO_AUDIT_PARAMS": str(audit)}
    snakemake(copy, "weights", "results/tiny/grpo/uniform/seed0/metrics.jsonl", "--configfile", str(config), str(branch), env=env)
    records = audits(audit)
    assert set(records) == {"knn_weights", "grpo_uniform_0"}
    knn_keys = {"knn.nlist", "knn.nprobe", "knn.recall_sample", "knn.seed", "knn.fix_fraction", "knn.fix_nprobe"}
    assert knn_keys <= set(records["knn_weights"]["declared"]) and "knn.rerank" not in records["knn_weights"]["declared"]
    grpo = records["grpo_uniform_0"]["declared"]
    assert "grpo.token_chunk" in grpo and "rm.max_length" not in grpo
    assert "density.components" in records["knn_weights"]["declared"]
    assert_read_equals_declared(records)

    mirror = tmp_path / "hh" / "helpful-base"
    mirror.mkdir(parents=True)
    write_jsonl(tiny_pairs(n_dense=8), mirror / "train.jsonl")
    import gzip

    (mirror / "train.jsonl.gz").write_bytes(gzip.compress((mirror / "train.jsonl").read_bytes()))
    hh = tmp_path / "hh.yaml"
    hh.write_text(yaml.safe_dump({"data": {"source": "hh-rlhf", "subsets": ["helpful-base"], "mirror": str(tmp_path / "hh")}}))
    snakemake(copy, "prompts", "--configfile", str(config), str(hh), env=env)
    pairs = audits(audit)["pairs"]
    assert pairs["declared"] == ["data.max_pairs", "data.source", "data.split", "data.subsets"]
    assert_read_equals_declared({"pairs": pairs})


# a finished run, one config change at a time: the jobs a dry run plans (4 chunks; arms density, uniform)
RERUN_MATRIX = [
    # model.dtype is the inference precision: the reward model trains in fp32 master weights and does not read it
    ({"model": {"dtype": "bfloat16"}}, {"embed_chunk": 4, "embed_records": 1, "knn_weights": 1, "grpo": 4, "evaluate_model": 6}),
    # the weights feed the density arm's sampler and every evaluation (prompts drawn stratified by weight)
    ({"embed": {"layer": 1}}, {"embed_chunk": 4, "embed_records": 1, "knn_weights": 1, "grpo": 2, "evaluate_model": 6}),
    ({"knn": {"k": 4}}, {"knn_weights": 1, "grpo": 2, "evaluate_model": 6}),
    ({"density": {"alpha": 2.0}}, {"knn_weights": 1, "grpo": 2, "evaluate_model": 6}),
    ({"rm": {"max_steps": 3}}, {"reward_model": 1, "grpo": 4, "evaluate_model": 6}),
    ({"grpo": {"steps": 3}}, {"grpo": 4, "evaluate_model": 4}),
    # processes: the same experiment, but a param (params.grpo): another layout samples other completions
    ({"grpo": {"processes": 2}}, {"grpo": 4, "evaluate_model": 4}),
    ({"rm": {"processes": 2}}, {"reward_model": 1, "grpo": 4, "evaluate_model": 6}),
    ({"eval": {"control_temperature": 0.5}}, {"evaluate_model": 1}),  # the control only
    ({"eval": {"temperature": 0.9}}, {"evaluate_model": 5}),  # every model but the control
    ({"grpo": {"max_prompt_length": 16}}, {"grpo": 4, "evaluate_model": 4}),
    ({"grpo": {"reward": "self_certainty"}}, {"grpo": 4, "evaluate_model": 4}),
    ({"grpo": {"seeds": [0, 1, 2]}}, {"grpo": 2, "evaluate_model": 2}),  # a new seed: only its own jobs
    ({"eval": {"samples": 3}}, {"evaluate_model": 6}),
    ({"eval": {"every": 2}}, {"grpo": 4, "evaluate_model": 4}),
    ({"seed": 1}, {"reward_model": 1, "grpo": 4, "evaluate_model": 6}),
    ({"device": "cuda"}, {"embed_chunk": 4, "embed_records": 1, "knn_weights": 1, "reward_model": 1, "grpo": 4, "evaluate_model": 6}),
    # the density recipes (density.* keys) and embed.pooling change the weights like knn.k / embed.layer
    ({"embed": {"pooling": "mean"}}, {"embed_chunk": 4, "embed_records": 1, "knn_weights": 1, "grpo": 2, "evaluate_model": 6}),
    ({"density": {"postprocess": "center"}}, {"knn_weights": 1, "grpo": 2, "evaluate_model": 6}),
    ({"density": {"length_residual": "tokens"}}, {"knn_weights": 1, "grpo": 2, "evaluate_model": 6}),
]


@pytest.mark.parametrize("change, expected", RERUN_MATRIX, ids=[json.dumps(c) for c, _ in RERUN_MATRIX])
def test_rerun_matrix(audited_run, tmp_path, change, expected):
    workdir, config, _ = audited_run
    override = tmp_path / "change.yaml"
    override.write_text(yaml.safe_dump(change))
    res = snakemake(workdir, "-n", "--configfile", str(config), str(override))
    assert planned_jobs(res.stdout) == {**expected, **DOWNSTREAM}, res.stdout[-3000:]


def test_nothing_to_do_without_a_change(audited_run, tmp_path):
    workdir, config, _ = audited_run
    res = snakemake(workdir, "-n", "--configfile", str(config))
    assert planned_jobs(res.stdout) == {}, res.stdout[-3000:]
    unread = tmp_path / "unread.yaml"  # density.components is read only by postprocess abtt/whiten
    unread.write_text(yaml.safe_dump({"density": {"components": 3}}))
    res = snakemake(workdir, "-n", "--configfile", str(config), str(unread))
    assert planned_jobs(res.stdout) == {}, res.stdout[-3000:]


def test_knn_change_retrains_the_density_arm_only(audited_run, tmp_path):
    workdir, config, _ = audited_run
    override = tmp_path / "k.yaml"
    override.write_text(yaml.safe_dump({"knn": {"k": 4}}))
    res = snakemake(workdir, "-n", "--quiet", "host", "--configfile", str(config), str(override))  # show job blocks
    outputs = {p.strip() for line in re.findall(r"^\s+output: (.+)$", res.stdout, re.M) for p in line.split(",")}
    for seed in (0, 1):
        assert f"results/tiny/grpo/density/seed{seed}/model" in outputs and f"results/tiny/grpo/uniform/seed{seed}/model" not in outputs


def matrix_row(change: dict) -> dict:
    return next(expected for c, expected in RERUN_MATRIX if c == change)


def dry_run(workdir: Path, config: Path, change: dict | None, tmp_path: Path) -> subprocess.CompletedProcess:
    extra = []
    if change is not None:
        extra = [str(tmp_path / "change.yaml")]
        Path(extra[0]).write_text(yaml.safe_dump(change))
    return snakemake(workdir, "-n", "--configfile", str(config), *extra)


@pytest.fixture(scope="module")
def no_metadata(finished_run, tmp_path_factory):
    """A copy of the finished run without .snakemake/ (a restored run folder, another machine, a cleaned cache)."""
    copy = copy_run(finished_run, tmp_path_factory.mktemp("restored") / "run")
    shutil.rmtree(copy / ".snakemake")
    return copy, copy / "tiny.yaml"


@pytest.mark.parametrize("change", [None, {"knn": {"k": 4}}, {"embed": {"layer": 1}}, {"eval": {"temperature": 0.9}}],
                         ids=json.dumps)  # fmt: skip
def test_params_stamps_rerun_without_snakemake_metadata(no_metadata, tmp_path, change):
    """Provenance travels with the artifacts: with .snakemake/ gone (mtimes only, for Snakemake), no change plans
    nothing and a change plans its RERUN_MATRIX row, through the jobs' params stamps."""
    workdir, config = no_metadata
    res = dry_run(workdir, config, change, tmp_path)
    assert planned_jobs(res.stdout) == ({} if change is None else {**matrix_row(change), **DOWNSTREAM}), res.stdout[-3000:]
    if change is not None:  # the reason Snakemake gives: the first changed job's updated input (its params stamp)
        assert re.search(r"updated input files:\n\s+(knn_weights|embed_chunk|evaluate_model)\n", res.stdout), res.stdout[-1500:]


def strip_stamps(workdir: Path) -> None:
    """Make a finished run look made before params stamps: no stamps, no digests, no stamps in Snakemake's records."""
    for stamps in workdir.rglob("params"):
        if stamps.is_dir():
            shutil.rmtree(stamps)
    for record in (workdir / RES).rglob("memory/*.json"):
        rec = json.loads(record.read_text())
        rec.get("extra", {}).pop("params_digest", None)
        st = record.stat()
        record.write_text(json.dumps(rec))
        os.utime(record, ns=(st.st_atime_ns, st.st_mtime_ns))  # its readers (embed_records) stay up to date
    for meta in (workdir / ".snakemake/metadata").glob("*"):
        rec = json.loads(meta.read_text())
        rec["input"] = [f for f in rec.get("input") or [] if "/params/" not in f]
        meta.write_text(json.dumps(rec))


def test_results_from_before_params_stamps(finished_run, tmp_path):
    """Upgrading keeps old results: with Snakemake's metadata nothing reruns for the new stamp input (and its params
    trigger still works); without it the records hold no digest, so they are trusted with one warning per rule."""
    workdir = copy_run(finished_run, tmp_path / "old")
    config = workdir / "tiny.yaml"
    strip_stamps(workdir)
    assert planned_jobs(dry_run(workdir, config, None, tmp_path).stdout) == {}
    assert not list((workdir / RES).rglob("params/*.json"))
    res = dry_run(workdir, config, {"knn": {"k": 4}}, tmp_path)
    assert planned_jobs(res.stdout) == {**matrix_row({"knn": {"k": 4}}), **DOWNSTREAM}, res.stdout[-3000:]
    shutil.rmtree(workdir / ".snakemake")
    res = dry_run(workdir, config, None, tmp_path)
    assert planned_jobs(res.stdout) == {}, res.stdout[-3000:]
    out = res.stdout + res.stderr
    assert "holds no params digest" in out and "--forcerun knn_weights" in out, out[-2000:]


def test_jobs_record_their_params_digest(audited_run, tmp_path):
    """Each stamped job's memory record holds the digest of its stamp: what the job was built with."""
    workdir, config, _ = audited_run
    assert planned_jobs(dry_run(workdir, config, None, tmp_path).stdout) == {}  # stamps back from the dry runs' changes
    stamps = sorted((workdir / RES).rglob("params/*.json"))
    assert {p.stem for p in stamps} >= {"pairs", "knn_weights", "reward_model", "grpo_density_0", "compare"}
    for stamp in stamps:
        if not (stamp.parent.parent / "memory" / stamp.name).exists():
            continue  # a job only planned by a dry run above (a third seed)
        record = json.loads((stamp.parent.parent / "memory" / stamp.name).read_text())
        assert record["extra"]["params_digest"] == json.loads(stamp.read_text())["digest"], stamp.name


def test_report_to_tensorboard_is_a_log(finished_run, tmp_path):
    """training.report_to gives the training jobs their TensorBoard folders as logs (not outputs, not params): the
    finished run (none) has no folder, switching the key on plans nothing, and a job that trains again writes its
    events while it trains in results/{run}/tensorboard/{job}/, the folder its rule gives it."""
    workdir = copy_run(finished_run, tmp_path / "run")
    config, on = workdir / "tiny.yaml", tmp_path / "on.yaml"
    assert not (workdir / RES / "tensorboard").exists()
    on.write_text(yaml.safe_dump({"training": {"report_to": "tensorboard"}}))
    assert planned_jobs(snakemake(workdir, "-n", "--configfile", str(config), str(on)).stdout) == {}
    snakemake(workdir, f"{RES}/grpo/uniform/seed0/summary.json", "-R", "grpo", "--configfile", str(config), str(on))
    assert [p.name for p in (workdir / RES / "tensorboard").iterdir()] == ["grpo_uniform_0"]  # the one job that ran
    scalars = tensorboard_scalars(workdir / RES / "tensorboard/grpo_uniform_0")
    assert {"train/loss", "train/reward", "curves/reward_mean"} <= scalars.keys()

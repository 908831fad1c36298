"""End-to-end Snakemake runs of the tiny config: artifacts, rebuild behaviour, determinism, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import copy_run, snakemake, tiny_config, tiny_pairs, write_jsonl

from density_grpo.store import read_chunk

pytestmark = pytest.mark.e2e
RES = Path("results/tiny")


def job_counts(output: str) -> dict[str, int]:
    """Jobs a real run executed, by rule (from 'Finished jobid: N (Rule: X)'; includes post-checkpoint jobs)."""
    counts: dict[str, int] = {}
    for rule in re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def chunk_mtimes(workdir: Path) -> dict[str, int]:
    return {p.name: (p / "zarr.json").stat().st_mtime_ns for p in sorted((workdir / RES / "embed").glob("chunk_*.zarr"))}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, finished_run):
    """A copy of the finished tiny run (30 prompts in 4 chunks of 8), which these tests change."""
    workdir = copy_run(finished_run, tmp_path_factory.mktemp("run") / "run")
    config, pairs = workdir / "tiny.yaml", workdir / "pairs.jsonl"
    snapshot = workdir / "snapshot"  # the first run's small artifacts, before later tests change the data
    snapshot.mkdir()
    for name in ("data/prompts.parquet", "density/weights.parquet"):
        shutil.copy(workdir / RES / name, snapshot / Path(name).name)
    return workdir, config, pairs


def test_full_run_artifacts(tiny_run):
    workdir, _, _ = tiny_run
    pairs = pd.read_parquet(workdir / RES / "data/pairs.parquet")
    assert list(pairs.columns) == ["pair_id", "prompt", "chosen", "rejected", "source", "subset", "topic"]
    prompts = pd.read_parquet(workdir / RES / "data/prompts.parquet")
    assert len(prompts) == 30 and prompts["prompt_id"].is_unique
    assert all(t.endswith("\n\nAssistant:") for t in prompts["text"])
    weights = pd.read_parquet(workdir / RES / "density/weights.parquet")
    assert list(weights.columns) == ["prompt_id", "knn_mean_dist", "density", "weight", "n_tokens", "turns", "topic", "group"]
    assert weights["prompt_id"].tolist() == prompts["prompt_id"].tolist()
    assert weights["turns"].tolist() == prompts["text"].str.count("\n\nHuman:").tolist() and (weights["n_tokens"] > 5).all()
    assert weights["weight"].sum() == pytest.approx(1.0)
    meta = yaml.safe_load((workdir / RES / "density/metadata.json").read_text())
    assert meta["n"] == 30 and meta["k"] == 3 and meta["index"] == "flat"
    assert meta["provenance"]["params"]["knn"] == {"k": 3, "index": "flat"}
    assert meta["pooling"] == "human" and meta["pooling_fallbacks"] == 0 and meta["postprocess"] == "none"
    assert -1 <= meta["spearman_weight_tokens"] <= 1 and meta["spearman_weight_turns"] is None  # every tiny prompt: 1 turn
    chunks = sorted((workdir / RES / "embed").glob("chunk_*.zarr"))
    assert [c.name for c in chunks] == [f"chunk_{i}.zarr" for i in range(4)]
    ids, emb, attrs = read_chunk(chunks[-1])
    assert len(ids) == 6 and emb.shape == (6, 32) and attrs["source"] == "hidden" and attrs["pooling"] == "human"
    card = json.loads((workdir / RES / "model.json").read_text())
    assert attrs["model_fingerprint"] == card["fingerprint"] and len(card["fingerprint"]) == 64
    assert meta["n_truncated"] == sum(read_chunk(c)[2]["n_truncated"] for c in chunks)
    for rule in ("pairs", "unique_prompts", "knn_weights", "embed_chunk_0"):
        assert (workdir / "logs/tiny" / f"{rule}.log").exists()
    assert (workdir / RES / "bench/knn_weights.tsv").exists()


def test_rebuild_behaviour(tiny_run):
    workdir, config, pairs = tiny_run
    # 1. nothing changed: nothing to do
    res = snakemake(workdir, "--configfile", str(config))
    assert "Nothing to be done" in res.stdout + res.stderr

    # 2. knn.k changed (partial configfile merged over config.yaml): weights rerun, no embedding job (the target is
    # the weights: which training and evaluation jobs a change reruns is test_contract's rerun matrix)
    k5 = workdir / "k5.yaml"
    k5.write_text(yaml.safe_dump({"knn": {"k": 5}}))
    before = chunk_mtimes(workdir)
    res = snakemake(workdir, "weights", "--configfile", str(config), str(k5))
    counts = job_counts(res.stdout + res.stderr)
    assert counts.get("knn_weights") == 1 and "embed_chunk" not in counts, counts
    assert chunk_mtimes(workdir) == before
    meta = yaml.safe_load((workdir / RES / "density/metadata.json").read_text())
    assert meta["k"] == 5

    # 3. appended pairs: only the last (changed) chunk and the new chunk are embedded
    write_jsonl(tiny_pairs(n_dense=5, start=100), pairs, mode="a")
    res = snakemake(workdir, "weights", "--configfile", str(config), str(k5))
    after = chunk_mtimes(workdir)
    assert [after[f"chunk_{i}.zarr"] for i in range(3)] == [before[f"chunk_{i}.zarr"] for i in range(3)]
    assert after["chunk_3.zarr"] != before["chunk_3.zarr"] and "chunk_4.zarr" in after
    assert job_counts(res.stdout + res.stderr).get("embed_chunk") == 2
    assert len(pd.read_parquet(workdir / RES / "density/weights.parquet")) == 35


def test_deterministic(tiny_run, tmp_path, tiny_model):
    """Same config and seed on CPU: byte-identical prompts, embeddings and weights."""
    workdir, _, _ = tiny_run
    pairs = write_jsonl(tiny_pairs(), tmp_path / "pairs.jsonl")
    snakemake(tmp_path, "weights", "--configfile", str(tiny_config(tmp_path, tiny_model, pairs)))
    other = tmp_path / RES
    for name in ("data/prompts.parquet", "density/weights.parquet"):
        assert (other / name).read_bytes() == (workdir / "snapshot" / Path(name).name).read_bytes(), name
    for i in range(3):  # chunks 0-2 are untouched by the rebuild test's appended pairs
        ia, ea, _ = read_chunk(other / f"embed/chunk_{i}.zarr")
        ib, eb, _ = read_chunk(workdir / RES / f"embed/chunk_{i}.zarr")
        assert ia == ib and np.array_equal(ea, eb)


def test_bad_input_line_is_named(tmp_path, tiny_model):
    pairs = tmp_path / "pairs.jsonl"
    rows = tiny_pairs(n_dense=4)
    pairs.write_text("\n".join([json.dumps(r) for r in rows[:2]] + ["{not json"]) + "\n")
    res = snakemake(tmp_path, "prompts", "--configfile", str(tiny_config(tmp_path, tiny_model, pairs)), check=False)
    assert res.returncode != 0
    assert "pairs.jsonl:3" in res.stderr
    assert "Traceback" not in (tmp_path / "logs/tiny/pairs.log").read_text()
    assert not (tmp_path / RES / "data/pairs.parquet").exists()
    assert not list(tmp_path.rglob(".pairs.parquet.tmp*"))


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"knn": {"k": 0}}, "config key knn.k"),
        ({"knn": {"kk": 3}}, "config key knn"),
        ({"data": {"source": "web"}}, "config key data.source"),
        ({"data": {"source": "local", "path": None}}, "config key data.path"),
        ({"model": {"name_or_path": "/no/such/model"}}, "model.name_or_path"),
    ],
)
def test_bad_config_names_the_key(tmp_path, override, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(override))
    res = snakemake(tmp_path, "--configfile", str(cfg), "-n", check=False)
    assert res.returncode != 0
    assert needle in res.stderr + res.stdout


def test_reports_from_frozen_artifacts(finished_run, tmp_path):
    """Delete the big artifacts (Zarr chunks, checkpoints); the README command rebuilds only the reports."""
    workdir = copy_run(finished_run, tmp_path / "run")  # up to date (tiny_run's data changed above)
    config = workdir / "tiny.yaml"
    reports = workdir / RES / "reports"
    for name in ("summary.md", "memory.md", "memory.json", "weights_hist.png", "memory_timeline.png"):
        assert (reports / name).stat().st_size > 0, name
    assert "predicted" in (reports / "memory.md").read_text().lower()
    for big in [*(workdir / RES / "embed").glob("chunk_*.zarr"), workdir / RES / "rm/model", *(workdir / RES / "grpo").glob("*/seed*/model")]:
        shutil.rmtree(big)
    for table in ("data/pairs.parquet", "data/prompts.parquet", "eval/base.npz"):
        (workdir / RES / table).unlink()
    for f in reports.iterdir():
        f.unlink()
    res = snakemake(workdir, "reports", "--allowed-rules", "build_reports", "reports", "-R", "build_reports", "--configfile", str(config))
    assert job_counts(res.stdout + res.stderr) == {"build_reports": 1, "reports": 1}
    assert (reports / "summary.md").exists() and (reports / "weights_hist.png").exists()
    # Snakemake's HTML report with the report()-flagged outputs (runs nothing)
    snakemake(workdir, "--report", "report.html", "--configfile", str(config))
    html = (workdir / "report.html").read_text()
    assert "summary.md" in html and "weights_by_topic.png" in html

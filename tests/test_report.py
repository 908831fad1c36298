"""build_reports on a synthetic run directory: with and without the training artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from density_grpo import memory as M
from density_grpo.report import PLOTS, REPORT_FILES, build_reports

REPO = Path(__file__).resolve().parent.parent
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _cfg() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["run"] = "synthetic"
    cfg["device"] = "cpu"
    return cfg


def make_run(root: Path, training: bool) -> Path:
    """A results/{run} tree with the small artifacts a finished run leaves (no Zarr chunks, no checkpoints)."""
    run = root / "results" / "synthetic"
    rng = np.random.default_rng(0)
    topics = ["cooking"] * 20 + ["python"] * 16 + [f"rare topic {i}" for i in range(8)]
    ids = [f"{i:016x}" for i in range(len(topics))]
    prompts = pd.DataFrame({"prompt_id": ids, "text": [f"How do I do thing {i} about {t}?" for i, t in enumerate(topics)], "n_pairs": 1 + (rng.random(len(ids)) < 0.2), "topic": topics})
    (run / "data").mkdir(parents=True)
    prompts.to_parquet(run / "data/prompts.parquet", index=False)
    dist = np.where([t.startswith("rare") for t in topics], 0.6, 0.2) + rng.uniform(0, 0.05, len(ids))
    w = dist / dist.sum()
    (run / "density").mkdir()
    pd.DataFrame({"prompt_id": ids, "knn_mean_dist": dist, "density": 1 / dist, "weight": w}).to_parquet(run / "density/weights.parquet", index=False)
    meta = {"n": len(ids), "k": 3, "dim": 576, "index": "flat", "recall_at_k": 1.0, "index_bytes": len(ids) * 576 * 4, "source": "hidden", "weight_stats": {"max_min_ratio": float(w.max() / w.min()), "ess_fraction": 0.9, "entropy_ratio": 0.98}}
    (run / "density/metadata.json").write_text(json.dumps(meta))
    (run / "bench").mkdir()
    (run / "bench/embed_chunk_0.tsv").write_text(BENCH_HEADER + "12.5\t0:00:12\t1010.5\t3000\t900\t950\t1\t0\t90\t11\n")
    (run / "bench/knn_weights.tsv").write_text(BENCH_HEADER + "2.1\t0:00:02\t160.2\t2600\t100\t120\t0.3\t0.1\t70\t2\n")
    (run / "bench/unique_prompts.tsv").write_text(BENCH_HEADER + "1.0\t0:00:01\t-\t-\t-\t-\t-\t-\t-\t-\n")
    cfg = _cfg()
    pred = M.predict_rule("embed_chunk", cfg, None, len(ids), 20, device="cpu")
    with M.MemoryMonitor(run / "memory", "embed_chunk_0", rule="embed_chunk", wildcards={"i": "0"}, predicted_bytes=pred, interval=0.01) as mon:
        block = np.ones(20 * M.MiB // 8)
        del block
        mon.extra.update(tokens_per_s=500.0, n_prompts=len(ids))
    if training:
        (run / "rm").mkdir()
        (run / "rm/metrics.json").write_text(json.dumps({"eval_accuracy": 0.75, "eval_margin_mean": 0.4, "n_eval": 8, "steps": 40, "train_loss_first": 0.69, "train_loss_last": 0.5, "wall_time_s": 100.0}))
        for arm, slope in (("density", 0.1), ("uniform", 0.05)):
            (run / "grpo" / arm).mkdir(parents=True)
            rows = [{"step": s, "reward": 1 + slope * s, "reward_std": 0.2, "kl": None, "entropy": 2.0, "completions/mean_length": 30 - s, "step_wall_s": 10.0} for s in range(1, 7)]
            (run / "grpo" / arm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            draws = rng.multinomial(12, w if arm == "density" else np.full(len(ids), 1 / len(ids)))
            pd.DataFrame({"prompt_id": ids, "draws": draws}).to_parquet(run / "grpo" / arm / "draws.parquet", index=False)
        metrics = {key: {"base": 0.5, "density": 0.6, "uniform": 0.55, "density_minus_uniform": 0.05} for key in ("distinct_1_within", "distinct_2_within", "vendi_within", "reward_mean", "length_tokens")}
        (run / "eval").mkdir()
        (run / "eval/comparison.json").write_text(json.dumps({"models": ["base", "density", "uniform"], "n_prompts": 16, "samples": 4, "metrics": metrics}))
    return run


def _check_common(run: Path, out: Path, written: list[str]) -> tuple[str, str, dict]:
    assert written == [str(out / name) for name in REPORT_FILES]
    for path in written:
        assert Path(path).stat().st_size > 0, path
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporaries left behind
    mem_md, summary = (out / "memory.md").read_text(), (out / "summary.md").read_text()
    mem = json.loads((out / "memory.json").read_text())
    # the classic questions, exact
    assert "5,634,048,000 bytes" in mem_md and "238,974,664,704 bytes" in mem_md
    # predicted vs measured: the monitored embed job is matched with its benchmark TSV; knn only from its TSV
    jobs = {j["job"]: j for j in mem["jobs"]}
    assert jobs["embed_chunk_0"]["bench_max_rss_mb"] == 1010.5 and jobs["embed_chunk_0"]["predicted_source"] == "run"
    assert jobs["embed_chunk_0"]["ratio"] > 0
    assert jobs["knn_weights"]["rule"] == "knn_weights" and jobs["knn_weights"]["predicted_source"] == "report"
    assert jobs["unique_prompts"]["measured_mb"] is None
    assert [r["scale"] for r in mem["scaling"]] == [1, 10, 100, 1000]
    assert mem["scaling"][0]["n"] == 44 and mem["scaling"][3]["emb_logits_bytes"] == 44_000 * 49152 * 4
    assert mem["throughput_prompts_per_s"] > 0
    assert {r["model"] for r in mem["precision_table"]} >= set(M.REFERENCE_MODELS)
    assert mem["model"]["params"] == 134_515_008
    assert "Rare" not in summary and "rare prompts get more weight ✓" in summary
    return mem_md, summary, mem


def test_build_reports_full_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path, training=True)
    (tmp_path / "resources/models/bench").mkdir(parents=True)  # the model rule's benchmark, shared by runs
    (tmp_path / "resources/models/bench/smollm2-135m-instruct.tsv").write_text(BENCH_HEADER + "30\t0:00:30\t1400\t3000\t900\t950\t1\t0\t90\t11\n")
    out = run / "reports"
    mem_md, summary, mem = _check_common(run, out, build_reports(str(run), _cfg(), str(out)))
    model = next(j for j in mem["jobs"] if j["job"] == "model")
    assert model["rule"] == "model" and model["bench_max_rss_mb"] == 1400 and model["ratio"] is not None
    assert "0.750" in summary and "not run" not in summary
    assert "density − uniform" in summary and "| density | 6 |" in summary
    assert mem["missing"] == []


def test_build_reports_without_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path, training=False)
    out = run / "reports"
    mem_md, summary, mem = _check_common(run, out, build_reports(str(run), _cfg(), str(out)))
    assert summary.count("not run") >= 3  # reward model, GRPO, diversity
    assert "rm/metrics.json" in mem["missing"] and "grpo/density/metrics.jsonl" in mem["missing"]


def test_build_reports_reads_the_model_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path, training=False)
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**M.SMOLLM2_135M, "tie_word_embeddings": False}))
    cfg = _cfg()
    cfg["model"]["name_or_path"] = str(model)
    build_reports(str(run), cfg, str(run / "reports"))
    mem = json.loads((run / "reports/memory.json").read_text())
    assert mem["model"]["params"] == 134_515_008 + 49152 * 576
    assert mem["model"]["config_source"].endswith("config.json")


def test_build_reports_empty_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "results" / "nothing"
    run.mkdir(parents=True)
    written = build_reports(str(run), _cfg(), str(run / "reports"))
    assert all(Path(p).exists() for p in written)
    assert "not run" in (run / "reports/summary.md").read_text()

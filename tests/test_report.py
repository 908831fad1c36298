"""The report step on synthetic declared inputs: it renders exactly what the stages recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from density_grpo import memory as M
from density_grpo import report
from density_grpo.monitor import MemoryMonitor, collect, expect, note

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
PARAMS = {
    "run": "synthetic", "runs": ["density/seed0", "uniform/seed0"], "device": "cpu", "dtype": "float32", "warn_fraction": 0.9,
    "embed": {"chunk_size": 128, "batch_tokens": 4096},
    "knn": {
        "k": 3, "index": "auto", "exact_max": 100_000, "max_index_gb": 8.0, "nlist": None, "nprobe": 32, "pq_m": 16,
        "fix_fraction": 0.1, "fix_nprobe": 128, "recall_sample": 1000,
    },  # fmt: skip
    "grpo": {"prompts_per_step": 2, "num_generations": 4, "max_completion_length": 32, "token_chunk": 256},
}  # fmt: skip


def write_json(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def synthetic_comparison(root: Path) -> dict:
    """compare.run on made-up evaluations: density's rewards one unit above uniform's, diverse vs repetitive texts."""
    from density_grpo import compare

    rng = np.random.default_rng(1)
    inputs = {"evals": [], "embeddings": [], "curves": [], "curve_embeddings": []}
    models = [["base", None], ["control", None], ["density", 0], ["density", 1], ["uniform", 0], ["uniform", 1]]
    for i, (name, seed) in enumerate(models):
        sets = 2 if name == "base" else 1
        texts = [[[f"answer {name} {p} {s} {k}" for s in range(4)] for p in range(8)] for k in range(sets)]
        if name == "control":  # the lower temperature: every sample of a prompt alike
            texts = [[[f"answer {p}"] * 4 for p in range(8)]]
        doc = {"model": name, "strata": ["rare"] * 4 + ["dense"] * 4, "samples": 4, "sets": sets, "completions": texts,
               "temperature": 0.7 if name == "control" else 1.0,
               "rewards": (rng.normal(size=(sets, 8, 4)) + (1.0 if name == "density" else 0.0)).tolist(),
               "lengths": np.full((sets, 8, 4), 12).tolist()}  # fmt: skip
        (root / f"eval{i}.json").write_text(json.dumps(doc))
        np.savez(root / f"eval{i}.npz", embeddings=rng.normal(size=(sets, 8, 4, 16)) + 5)
        inputs["evals"].append(str(root / f"eval{i}.json"))
        inputs["embeddings"].append(str(root / f"eval{i}.npz"))
        if name not in ("base", "control"):
            rows = [{"step": st, "reward_mean": 0.1 * st + (0.2 if name == "density" else 0), "kl_to_base": 0.01 * st, "distinct_2_within": 0.9, "length_tokens": 10} for st in (0, 2, 4)]
            (root / f"curve{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            np.savez(root / f"curve{i}.npz", embeddings=rng.normal(size=(3, 2, 4, 16)))
            inputs["curves"].append(str(root / f"curve{i}.jsonl"))
            inputs["curve_embeddings"].append(str(root / f"curve{i}.npz"))
    out = {"json": str(root / "cmp.json"), "diversity": str(root / "cmp.png"), "curves": str(root / "curves.png")}
    params = {"models": models, "runs": [m for m in models if m[0] not in ("base", "control")], "seed": 0,
              "eval": {"bootstrap": 200, "control_temperature": 0.7}}  # fmt: skip
    compare.run(inputs, out, params)
    return json.loads((root / "cmp.json").read_text())


def make_inputs(root: Path) -> dict:
    """The small artifacts a finished run declares to the report rule (no Zarr chunks, no checkpoints)."""
    rng = np.random.default_rng(0)
    topics = ["cooking"] * 20 + ["python"] * 16 + [f"rare topic {i}" for i in range(8)]
    ids = [f"{i:016x}" for i in range(len(topics))]
    texts = [f"How do I do thing {i} about {t}?" for i, t in enumerate(topics)]
    dist = np.where([t.startswith("rare") for t in topics], 0.6, 0.2) + rng.uniform(0, 0.05, len(ids))
    w = dist / dist.sum()
    n_tokens = rng.integers(10, 300, len(ids))
    group = ["rare" if t.startswith("rare") else "dense" for t in topics]
    weights = {"prompt_id": ids, "knn_mean_dist": dist, "density": 1 / dist, "weight": w, "n_tokens": n_tokens,
               "turns": 1 + n_tokens // 100, "topic": topics, "group": group}  # fmt: skip
    pd.DataFrame(weights).to_parquet(root / "weights.parquet")
    inputs = {"weights": str(root / "weights.parquet")}
    inputs["prompts_summary"] = write_json(root / "prompts.json", {
        "n_pairs": 50, "n_prompts": 44, "n_multi_turn": 3,
        "topics": {"dense": ["cooking", "python"], "n_rare": 8, "n_prompts_dense": 36, "n_prompts_rare": 8},
    })  # fmt: skip
    card = {"name": "smollm2-135m-instruct", "config": M.SMOLLM2_135M, "dims": M.dims(M.SMOLLM2_135M), "params": M.param_count(M.SMOLLM2_135M)}
    inputs["model"] = write_json(root / "model.json", card)
    ws = {"max_min_ratio": float(w.max() / w.min()), "ess_fraction": 0.9, "entropy_ratio": 0.98}
    inputs["meta"] = write_json(root / "metadata.json", {
        "n": len(ids), "k": 3, "dim": 576, "index": "flat", "recall_at_k": 1.0, "index_bytes": len(ids) * 576 * 4,
        "source": "hidden", "weight_stats": ws, "pooling": "human", "pooling_fallbacks": 2, "postprocess": "none",
        "length_residual": "none", "spearman_weight_tokens": 0.0312, "spearman_weight_turns": -0.25,
        "topics": {"rare_dense_ratio": 2.9, "n_dense": 36, "n_rare": 8, "n_rare_topics": 8},
    })  # fmt: skip
    inputs["rm"] = write_json(root / "rm.json", {
        "eval_accuracy": 0.75, "eval_accuracy_longer_baseline": 0.5, "n_eval_dropped_overlap": 3, "eval_margin_mean": 0.4, "n_eval": 8, "steps": 40,
        "train_loss_first": 0.69, "train_loss_last": 0.5, "wall_time_s": 100.0,
    })  # fmt: skip
    inputs["grpo"], inputs["draws"], inputs["grpo_summary"] = [], [], []
    for arm, slope in (("density", 0.1), ("uniform", 0.05)):
        rows = [{"step": s, "reward": 1 + slope * s, "reward_std": 0.2, "kl": None, "entropy": 2.0, "completions/mean_length": 30 - s, "step_wall_s": 10.0} for s in range(1, 7)]
        (root / f"{arm}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        draws = rng.multinomial(12, w if arm == "density" else np.full(len(ids), 1 / len(ids)))
        pd.DataFrame({"prompt_id": ids, "draws": draws}).to_parquet(root / f"{arm}_draws.parquet")
        inputs["grpo"].append(str(root / f"{arm}.jsonl"))
        summary = {"steps": 6, "first_reward": rows[0]["reward"], "final_reward": rows[-1]["reward"], "mean_reward": 1.2,
                   "unique_prompts_drawn": int((draws > 0).sum()), "n_prompts": len(ids), "step_s_mean": 10.0}  # fmt: skip
        inputs["grpo_summary"].append(write_json(root / f"{arm}_summary.json", summary))
        inputs["draws"].append(str(root / f"{arm}_draws.parquet"))
    inputs["comparison"] = write_json(root / "comparison.json", synthetic_comparison(root))
    # two monitored jobs with their benchmark TSVs: an embedding chunk (collected by rule embed_records) and the
    # weights stage
    files = {}
    for rule, wildcards, pred_mb, extra in (
        ("embed_chunk", {"i": "0"}, 600, {"tokens_per_s": 500.0, "n_prompts": 44, "n_tokens": 880}),
        ("knn_weights", {}, 150, {}),
    ):
        path = root / f"{rule}.json"
        with MemoryMonitor(path, rule, wildcards, interval=0.01):
            expect(M.prediction("cpu", {"baseline": 100 * M.MiB, "work": (pred_mb - 100) * M.MiB}, "test", "knob"))
            note(**extra)
        (root / f"{rule}.tsv").write_text(BENCH_HEADER + "12.5\t0:00:12\t1010.5\t3000\t900\t950\t1\t0\t90\t11\n")
        files[rule] = {"memory": str(path), "bench": str(root / f"{rule}.tsv")}
    inputs["memory"], inputs["bench"] = [files["knn_weights"]["memory"]], [files["knn_weights"]["bench"]]
    collect({"memory": [files["embed_chunk"]["memory"]], "bench": [files["embed_chunk"]["bench"]]},
            {"records": str(root / "embed_jobs.json")}, {})  # fmt: skip
    inputs["embed_records"] = str(root / "embed_jobs.json")
    return inputs


def test_report_renders_the_declared_inputs(tmp_path):
    (tmp_path / "in").mkdir()
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "reports"
    outputs = {"summary": out / "summary.md", "memory_md": out / "memory.md", "memory_json": out / "memory.json"}
    outputs |= {name: out / png for name, (png, _) in report.PLOTS.items()}
    report.run(inputs, {k: str(v) for k, v in outputs.items()}, PARAMS)
    for name, path in outputs.items():
        assert path.stat().st_size > 0, name
    for png, _ in report.PLOTS.values():
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in outputs.values())  # no temporaries
    mem_md, summary = (out / "memory.md").read_text(), (out / "summary.md").read_text()
    mem = json.loads((out / "memory.json").read_text())
    assert "5,634,048,000 bytes" in mem_md and "238,974,664,704 bytes" in mem_md  # the classic questions, exact
    jobs = {j["job"]: j for j in mem["jobs"]}
    assert set(jobs) == {"embed_chunk_0", "knn_weights"}  # exactly the declared jobs
    assert jobs["embed_chunk_0"]["predicted_mb"] == 600 and jobs["embed_chunk_0"]["bench_max_rss_mb"] == 1010.5
    assert jobs["embed_chunk_0"]["ratio"] > 0
    assert mem["predictions"]["knn_weights"]["components_mb"]["work"] == 50
    assert mem["prompts_per_s"] == 44 / (880 / 500)  # prompts / embedding seconds
    assert [r["scale"] for r in mem["scaling"]] == [1, 10, 100, 1000]
    assert mem["scaling"][0]["n"] == 44 and mem["scaling"][3]["emb_logits_bytes"] == 44_000 * 49152 * 4
    assert {r["model"] for r in mem["precision_table"]} >= set(M.REFERENCE_MODELS)
    assert mem["model"]["params"] == 134_515_008
    assert "rare prompts get more weight ✓" in summary and "0.750" in summary
    assert "density − uniform" in summary and "| density/seed0 | 6 |" in summary
    assert "**mean RM reward**: density − uniform = +1.14 [+0.624, +1.63] (95% CI); the interval excludes zero: density is higher" in summary
    assert "**Vendi within prompt (centred)**" in summary and "Per stratum" in summary
    assert "- Positive control, distinct-2 within prompt: control − base = " in summary
    assert "the design detects an effect of this size" in summary and "smallest detectable: ±" in summary
    assert "- Collapse check, distinct-2 within prompt: uniform − base = " in summary
    assert "Spearman(weight, prompt tokens) = **+0.03**, Spearman(weight, Human turns) = -0.25 (|ρ| ≤ 0.2: ✓)" in summary
    assert "pooling `human`, 2 prompts without Human text mean-pooled" in summary and "weights_vs_tokens.png" in summary


def test_weights_vs_tokens_plot_without_lengths(tmp_path):
    """Weights from chunk stores without per-prompt lengths: a placeholder, and the summary says n/a."""
    w = pd.DataFrame({"prompt_id": ["a", "b"], "weight": [0.5, 0.5], "rel_weight": [1.0, 1.0]})
    from density_grpo import plots

    plots.plot_weights_vs_tokens(w, {}, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    ws = {"pooling": "mean", "pooling_fallbacks": 0, "postprocess": "none", "length_residual": "none"}
    lines = report.length_lines({**ws, "spearman_weight_tokens": None, "spearman_weight_turns": None})
    assert "Length check: n/a" in lines[-1]
    lines = report.length_lines({**ws, "spearman_weight_tokens": 0.7, "spearman_weight_turns": 0.5})
    assert "**+0.70**" in lines[-1] and "✗ longer prompts get more weight" in lines[-1] and "signal" not in lines[-1]
    lines = report.length_lines({**ws, "spearman_weight_tokens": -0.5, "spearman_weight_turns": None, "spearman_rare_tokens": -0.43})
    assert "✗ shorter prompts get more weight; here rare-topic prompts are themselves shorter" in lines[-1]


def test_every_report_caption_renders_without_docutils_messages():
    """Each caption in report/ goes through Jinja and docutils as `snakemake --report` does; no system message."""
    import io

    import jinja2
    from docutils.core import publish_parts

    captions = sorted((Path(__file__).parent.parent / "report").glob("*.rst"))
    assert captions
    for caption in captions:
        text = jinja2.Environment().from_string(caption.read_text()).render()
        warnings = io.StringIO()
        body = publish_parts(
            text, writer_name="html", settings_overrides={"report_level": 1, "halt_level": 5, "warning_stream": warnings}
        )["body"]
        assert not warnings.getvalue(), f"{caption.name}: {warnings.getvalue()}"
        assert "system-message" not in body, f"{caption.name} renders a docutils system message"


def test_memory_timeline_gives_every_job_its_own_colour_and_style():
    from density_grpo.plots import timeline_styles

    jobs = [("pairs", "pairs"), ("model", "model"), ("grpo", "grpo_density_0"), ("grpo", "grpo_uniform_0")]
    jobs += [("evaluate_model", f"evaluate_model_{m}") for m in ("base", "control", "a", "b", "c", "d")]
    jobs += [(f"rule{i}", f"rule{i}") for i in range(10)]  # more rules than the palette has hues
    styles = timeline_styles(jobs)
    pairs = [(tuple(np.round(s["color"], 6)), s["linestyle"]) for s in styles]
    assert len(set(pairs)) == len(jobs)
    hue = {rule: {p[0] for p, (r, _) in zip(pairs, jobs) if r == rule} for rule, _ in jobs}
    assert styles[0]["color"] != styles[2]["color"]  # pairs and grpo_density_0: not the same blue
    assert len(hue["evaluate_model"]) == 6  # shades within a rule


def test_diversity_value_labels_tell_different_values_apart():
    from density_grpo.plots import value_labels

    labels = value_labels([1.0074, 1.0068, 1.0054, 0.9551])
    assert len(set(labels)) == 4 and all(len(x) <= 7 for x in labels), labels
    assert value_labels([19.77, 18.87]) == ["19.8", "18.9"]  # about 3 significant digits where they suffice
    assert value_labels([0.5, 0.5]) == ["0.500", "0.500"]  # equal values share a label


def test_diversity_plot_renders(tmp_path):
    from density_grpo.plots import plot_diversity

    path = tmp_path / "diversity.png"
    plot_diversity(synthetic_comparison(tmp_path), path)
    assert path.stat().st_size > 10_000


def test_memory_table_lists_each_processes_peak():
    """A job run on 2 processes shows both ranks' peaks beside the measured (largest) one; older records have none."""
    from density_grpo.report import _measured_by, memory_jobs

    base = {"job": "grpo_uniform_0", "rule": "grpo", "predicted_mb": 4000.0, "measured_mb": 4655.4,
            "measured_over_predicted": 1.16, "wall_s": 150.0, "status": "ok"}  # fmt: skip
    two = {**base, "measured_what": "peak RSS of the largest of 2 processes", "peak_rss_per_rank_mb": [4655.4, 4287.8]}
    old = {**base, "measured_what": "peak RSS of the job's process tree"}
    rows = memory_jobs([two, old], [{}, {}])
    assert [_measured_by(r) for r in rows] == [
        "peak RSS of the largest of 2 processes (per process: 4,655, 4,288 MiB)",
        "peak RSS of the job's process tree",
    ]

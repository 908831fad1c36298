"""Reports from a run's small artifacts: summary.md, memory.md + memory.json and PNG plots.

Reads only small files under results/{run}/ (density metadata + weights, prompts, benchmark TSVs, memory monitor
logs, training/eval metrics) and, when present, the model's config.json: never Zarr chunks or model weights, so
deleting embeddings and checkpoints does not stop the reports from being rebuilt. Any training artifact may be
missing: its section says "not run" and its plot is a placeholder (the set of files written is always the same).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from density_grpo import memory as M
from density_grpo.io import atomic_path, write_json

log = logging.getLogger(__name__)

MiB = M.MiB
PLOTS = {
    "memory_timeline": "memory_timeline.png",
    "memory_predicted_vs_measured": "memory_predicted_vs_measured.png",
    "weights_hist": "weights_hist.png",
    "weights_by_topic": "weights_by_topic.png",
    "grpo_rewards": "grpo_rewards.png",
    "draws_vs_weight": "draws_vs_weight.png",
    "diversity": "diversity.png",
}
REPORT_FILES = ["summary.md", "memory.md", "memory.json", *PLOTS.values()]  # what build_reports always writes
RULES = ["embed_chunk", "knn_weights", "model", "reward_model", "grpo", "evaluate_model"]  # predict_rule knows these
SCALES = (1, 10, 100, 1000)
CLASSIC = {"batch": 64, "seq": 6144, "vocab": 151_936, "token_chunk": 256}  # the "Intuitor logits" question
LOGIT_Q = {"n": 28_000, "vocab": 50_304}  # the "28,000 prompts x 50,304-dim logits" question
DIVERSITY_KEYS = [
    ("distinct_1_within", "distinct-1 within"), ("distinct_2_within", "distinct-2 within"),
    ("cosine_distance_within", "cosine dist. within"), ("vendi_within", "Vendi within"),
    ("distinct_1_across", "distinct-1 across"), ("distinct_2_across", "distinct-2 across"),
    ("cosine_distance_across", "cosine dist. across"), ("vendi_across", "Vendi across"),
    ("reward_mean", "mean RM reward"), ("length_tokens", "mean length (tokens)"),
]  # fmt: skip
MODEL_COLORS = {"base": "#8c8c8c", "density": "#1f77b4", "uniform": "#ff7f0e"}


# -----------------------------------------------------------------------------
# reading the run


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as e:  # a missing column or a corrupt file: report without it
        log.warning("cannot read %s: %s", path, e)
        return None


def _read_bench(path: Path) -> dict[str, float]:
    """A Snakemake benchmark TSV -> its max over repeats of s and max_rss (MiB); '-' cells become NaN."""
    df = pd.read_csv(path, sep="\t")
    out = {}
    for col in ("s", "max_rss", "max_vms", "max_uss", "max_pss", "mean_load", "cpu_time"):
        if col in df:
            out[col] = float(pd.to_numeric(df[col], errors="coerce").max())
    return out


def load_run(run_dir: str | os.PathLike, cfg: dict) -> dict[str, Any]:
    """Every small artifact of a run that exists (None / empty where missing)."""
    run = Path(run_dir)
    prompts = _read_parquet(run / "data/prompts.parquet")
    samplers = list(cfg.get("grpo", {}).get("samplers", ["density", "uniform"]))
    if (run / "grpo").is_dir():
        samplers += sorted(p.name for p in (run / "grpo").iterdir() if p.is_dir() and p.name not in samplers)
    monitors = []
    for path in sorted((run / "memory").glob("*.json")):
        rec = _read_json(path)
        if rec is not None:
            rec.setdefault("job", path.stem)
            rec["_timeline"] = str(path.with_suffix(".tsv"))
            monitors.append(rec)
    bench = {p.stem: _read_bench(p) for p in sorted((run / "bench").glob("*.tsv"))}
    # the model rule is shared by runs: its benchmark lives under resources/models/bench/ (relative to the workdir)
    name = str(cfg.get("model", {}).get("name_or_path", ""))
    model_bench = Path("resources/models/bench") / f"{name.replace('/', '--')}.tsv"
    if name and "model" not in bench and model_bench.exists():
        bench["model"] = _read_bench(model_bench)
    return {
        "run": cfg.get("run", run.name),
        "dir": run,
        "meta": _read_json(run / "density/metadata.json"),
        "weights": _read_parquet(run / "density/weights.parquet"),
        "prompts": prompts,
        "monitors": monitors,
        "bench": bench,
        "rm": _read_json(run / "rm/metrics.json"),
        "grpo": {s: _read_jsonl(run / "grpo" / s / "metrics.jsonl") for s in samplers},
        "draws": {s: _read_parquet(run / "grpo" / s / "draws.parquet") for s in samplers},
        "comparison": _read_json(run / "eval/comparison.json"),
    }


def topic_groups(prompts: pd.DataFrame | None) -> dict[str, str] | None:
    """topic -> 'dense' (>= 5% of prompts and >= 5 prompts) or 'rare'; None when the prompts carry no topics."""
    if prompts is None or "topic" not in prompts or not (prompts["topic"].astype(str) != "").any():
        return None
    counts = prompts["topic"].astype(str).value_counts()
    cut = max(5, 0.05 * len(prompts))
    return {t: ("dense" if c >= cut else "rare") for t, c in counts.items() if t}


def weights_frame(data: dict) -> pd.DataFrame | None:
    """weights.parquet joined with the prompts' topic; rel_weight = n x weight (1 = uniform)."""
    w = data["weights"]
    if w is None or w.empty:
        return None
    w = w.copy()
    w["prompt_id"] = w["prompt_id"].astype(str)
    w["rel_weight"] = w["weight"] * len(w) / w["weight"].sum()
    groups = topic_groups(data["prompts"])
    if groups is not None:
        topics = data["prompts"][["prompt_id", "topic"]].astype(str)
        w = w.merge(topics, on="prompt_id", how="left")
        w["topic"] = w["topic"].fillna("")
        w["group"] = w["topic"].map(groups).fillna("")
    return w


# -----------------------------------------------------------------------------
# memory tables


def _rule_of(stem: str) -> tuple[str, dict[str, str]]:
    """Rule and wildcards of a benchmark file stem, e.g. embed_chunk_3 -> (embed_chunk, {i: 3})."""
    names = {r: r for r in RULES}  # benchmark files are named like jobs: {rule}[_{wildcards}].tsv
    for name in sorted(names, key=len, reverse=True):
        if stem == name:
            return names[name], {}
        if stem.startswith(name + "_"):
            rest = stem[len(name) + 1 :]
            return names[name], {"i": rest} if names[name] == "embed_chunk" else {"wildcards": rest}
    return stem, {}


def _bench_stem(job: str, rule: str, wildcards: dict, bench: dict) -> str | None:
    for stem in (job, "_".join([rule, *map(str, wildcards.values())]), rule):
        if stem in bench:
            return stem
    return None


def memory_jobs(data: dict, cfg: dict, model_cfg: dict, prompt_tokens: int | None) -> list[dict]:
    """One row per job (monitor logs, plus benchmark TSVs without a monitor log): predicted vs measured (MiB)."""
    n = _n_prompts(data)
    rows, used = [], set()
    jobs = [(m["job"], m.get("rule") or m["job"], m.get("wildcards") or {}, m) for m in data["monitors"]]
    for stem in data["bench"]:
        if not any(_bench_stem(j, r, w, data["bench"]) == stem for j, r, w, _ in jobs):
            rule, wc = _rule_of(stem)
            jobs.append((stem, rule, wc, None))
    for job, rule, wildcards, mon in sorted(jobs, key=lambda j: _natural(j[0])):
        stem = _bench_stem(job, rule, wildcards, data["bench"])
        used.add(stem)
        bench = data["bench"].get(stem, {}) if stem else {}
        pred = (mon or {}).get("predicted_mb")
        source = "run" if pred is not None else None
        n_job = n
        if rule == "embed_chunk" and n and str(wildcards.get("i", "")).isdigit():  # the last chunk may be short
            size = int(cfg.get("embed", {}).get("chunk_size", 128))
            n_job = max(1, min(size, n - int(wildcards["i"]) * size))
        p = M.predict_rule(rule, cfg, model_cfg, n_job, prompt_tokens, device=_device(cfg)) if rule in RULES else None
        if pred is None and p is not None:
            pred, source = p["total_bytes"] / MiB, "report"
        rss = (mon or {}).get("peak_rss_mb")
        cuda = (mon or {}).get("peak_cuda_mb")
        on_gpu = p is not None and p["device"] == "cuda" and cuda
        measured = cuda if on_gpu else (rss if rss is not None else bench.get("max_rss"))
        rows.append(
            {
                "job": job,
                "rule": rule,
                "wildcards": wildcards,
                "predicted_mb": _round(pred),
                "predicted_source": source,
                "measured_mb": _round(measured),
                "measured_what": "cuda max_memory_allocated" if on_gpu else ("monitor peak RSS" if rss is not None else "bench max_rss"),
                "monitor_peak_rss_mb": _round(rss),
                "bench_max_rss_mb": _round(bench.get("max_rss")),
                "peak_cuda_mb": _round(cuda),
                "ratio": _round(measured / pred, 3) if measured and pred else None,
                "wall_s": _round((mon or {}).get("wall_s", bench.get("s"))),
                "bench_s": _round(bench.get("s")),
                "status": (mon or {}).get("status"),
                "timeline": (mon or {}).get("_timeline"),
            }
        )
    return rows


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _round(x: Any, nd: int = 1) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def _device(cfg: dict) -> str:
    return _device_of(str(cfg.get("device", "auto")))


@functools.lru_cache(maxsize=4)
def _device_of(spec: str) -> str:
    from density_grpo.device import wants_gpu  # auto: runs nvidia-smi once

    return "cuda" if wants_gpu(spec) else "cpu"


def _n_prompts(data: dict) -> int | None:
    if data["meta"] and data["meta"].get("n"):
        return int(data["meta"]["n"])
    if data["prompts"] is not None:
        return len(data["prompts"])
    return None


def _prompt_tokens(data: dict) -> int | None:
    """The longest prompt in tokens, estimated from its characters (prompts.parquet)."""
    p = data["prompts"]
    if p is None or "text" not in p or p.empty:
        return None
    return max(M.estimate_tokens(p["text"].astype(str).tolist()))


def embed_throughput(data: dict, jobs: list[dict]) -> tuple[float | None, str]:
    """Prompts embedded per second and where the figure comes from (monitor extras, else wall/bench time)."""
    embeds = [m for m in data["monitors"] if m.get("rule") == "embed_chunk"]
    tps = [m["tokens_per_s"] for m in embeds if m.get("tokens_per_s")]
    p = data["prompts"]
    if tps and p is not None and "text" in p:
        mean_tokens = float(np.mean(M.estimate_tokens(p["text"].astype(str).tolist())))
        return float(np.mean(tps)) / mean_tokens, f"embed jobs' tokens_per_s ({np.mean(tps):,.0f}) / ~{mean_tokens:.0f} tokens per prompt"
    n_done = sum(int(m["n_prompts"]) for m in embeds if m.get("n_prompts"))
    secs = [j["wall_s"] for j in jobs if j["rule"] == "embed_chunk" and j["wall_s"]]
    n = n_done or _n_prompts(data)
    if secs and n:
        return n / sum(secs), "prompts / summed embed job wall time (includes model loading: conservative)"
    return None, "no embed job timings"


def scaling_table(data: dict, cfg: dict, model_cfg: dict, prompts_per_s: float | None) -> list[dict]:
    """Bytes and times at N x 1, 10, 100, 1000 prompts: embeddings (hidden vs vocab logits), indexes, embed time."""
    d = M._dims(model_cfg)
    dim = int((data["meta"] or {}).get("dim") or d["h"])
    n0 = _n_prompts(data) or 1000
    k = cfg.get("knn", {})
    rows = []
    for s in SCALES:
        n = n0 * s
        kind = M.choose_index(n, dim, k)
        knn = M.predict_rule("knn_weights", cfg, model_cfg, n, device="cpu")
        rows.append(
            {
                "scale": s,
                "n": n,
                "chunks": math.ceil(n / int(cfg.get("embed", {}).get("chunk_size", 128))),
                "emb_hidden_bytes": M.embedding_store_bytes(n, dim),
                "emb_logits_bytes": M.embedding_store_bytes(n, d["V"]),
                "flat_bytes": M.faiss_index_bytes(n, dim, "flat"),
                "ivf_bytes": M.faiss_index_bytes(n, dim, "ivf", k.get("nlist")),
                "ivfpq_bytes": M.faiss_index_bytes(n, dim, "ivfpq", k.get("nlist"), int(k.get("pq_m", 16))),
                "auto_index": kind,
                "knn_peak_bytes": knn["total_bytes"],
                "embed_cpu_s": n / prompts_per_s if prompts_per_s else None,
            }
        )
    return rows


def recommendations(cfg: dict, model_cfg: dict, dim: int, scaling: list[dict], prompts_per_s: float | None, device: str) -> list[str]:
    """Index type, chunk size, dtype and batch budget implied by the scaling table and this machine's RAM."""
    ram = psutil.virtual_memory().total
    budget = float(cfg.get("memory", {}).get("warn_fraction", 0.9)) * ram
    k = cfg.get("knn", {})
    free_for_index = budget - M.BASELINE_BYTES["faiss"]
    n_flat = int(free_for_index // (dim * 4))
    n_pq = int(free_for_index // (int(k.get("pq_m", 16)) + 16))  # codes + id + direct map
    out = [f"Machine RAM {ram / 2**30:.1f} GiB; budget {cfg.get('memory', {}).get('warn_fraction', 0.9):.0%} of it = {budget / 2**30:.1f} GiB."]
    out.append(
        f"Index: a flat (exact) or IVF-flat index of {dim}-dim fp32 vectors fits up to ~{n_flat:,} prompts here; "
        f"IVF-PQ (m={k.get('pq_m', 16)}) up to ~{n_pq:,}. knn.index: auto picks "
        + ", ".join(f"{r['auto_index']} at N={r['n']:,}" for r in scaling)
        + ". Flat search is all-pairs (time ~N^2): beyond ~1e5 prompts prefer ivf for speed, ivfpq only beyond memory."
    )
    for r in scaling:
        if r["knn_peak_bytes"] > budget:
            out.append(f"At N={r['n']:,} the k-NN job needs ~{_h(r['knn_peak_bytes'])}: over budget, set knn.index: ivfpq (or raise knn.max_index_gb only on a larger node).")
            break
    n_params = M.param_count(model_cfg)
    if device == "cuda":
        out.append("dtype: on CUDA keep model.dtype auto (bf16 where supported): half the weights and activations of fp32.")
    else:
        out.append(
            f"dtype: on this CPU keep model.dtype auto (= float32, {_h(M.weights_bytes(n_params, 'fp32'))} of weights): "
            f"bfloat16 would save {_h(M.weights_bytes(n_params, 'fp32') - M.weights_bytes(n_params, 'bf16'))} but CPU bf16 matmuls are usually slower."
        )
    e = cfg.get("embed", {})
    per_token = M.inference_activation_bytes(model_cfg, 1, 1, M._run_precision(cfg, device))
    spare = budget - M.BASELINE_BYTES["torch"] - M.weights_bytes(n_params, M._run_precision(cfg, device))
    out.append(
        f"embed.batch_tokens: ~{per_token / 1024:.0f} KiB of activations per token (+ attention probabilities); "
        f"memory would allow ~{max(0, int(spare // per_token)):,} tokens per batch, so the current {e.get('batch_tokens')} is set by speed, not memory."
    )
    if prompts_per_s:
        target = 2 ** max(5, round(math.log2(max(1.0, 300 * prompts_per_s))))
        out.append(
            f"embed.chunk_size: a chunk holds only {_h(int(e.get('chunk_size', 128)) * dim * 4)} of vectors; size it by time: "
            f"at ~{prompts_per_s:.2f} prompts/s, ~5 minutes per job is chunk_size ~{target} (now {e.get('chunk_size')})."
        )
    return out


def precision_table(model_cfg: dict, model_name: str) -> list[dict]:
    """Weights by precision, full fine-tune state and KV cache for the configured model and Llama-like references."""
    rows = []
    for name, c in [(model_name, model_cfg), *M.REFERENCE_MODELS.items()]:
        n = M.param_count(c)
        d = M._dims(c)
        row = {"model": name, "params": n, **{p: M.weights_bytes(n, p) for p in ("fp32", "bf16", "int8", "int4")}}
        row["finetune_adamw_fp32"] = 16 * n  # fp32 weights + grads + AdamW m, v (activations not included)
        row["kv_per_1k_tokens_bf16"] = M.kv_cache_bytes(c, 1, 1000, "bf16")
        row["config"] = {key: d[key] for key in ("L", "h", "I", "heads", "kv_heads", "V")} | {"tied": bool(c.get("tie_word_embeddings", True))}
        rows.append(row)
    return rows


def logits_section(cfg: dict, model_cfg: dict) -> dict:
    """GRPO logits naive vs chunked (configured and the classic B=64, T=6144, V=151,936), PPO vs Intuitor."""
    g = cfg.get("grpo", {})
    B = int(g.get("prompts_per_step", 2)) * int(g.get("num_generations", 4))
    T = int(g.get("max_completion_length", 32))
    V = M._dims(model_cfg)["V"]
    chunk = int(g.get("token_chunk", 256))
    c = CLASSIC
    return {
        "configured": {"batch": B, "seq": T, "vocab": V, "token_chunk": chunk, "naive": M.grpo_logits_bytes(B, T, V), "chunked": M.grpo_logits_bytes(B, T, V, chunk)},
        "classic": {**c, "naive": M.grpo_logits_bytes(c["batch"], c["seq"], c["vocab"]), "chunked": M.grpo_logits_bytes(c["batch"], c["seq"], c["vocab"], c["token_chunk"])},
        "ppo_vs_intuitor_configured": M.ppo_vs_intuitor(model_cfg, B, T, M._run_precision(cfg, _device(cfg)), chunk),
    }  # fmt: skip


# -----------------------------------------------------------------------------
# formatting


def _h(b: float | None) -> str:
    """Bytes, human-readable in binary units."""
    if b is None:
        return "n/a"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"


def _f(x: Any, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, fmt) if isinstance(x, (int, float)) else str(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _duration(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


# -----------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    _plt().close(fig)


def _plain_log(axis) -> None:
    """Log-scale axis with plain tick labels (0.5, 1, 2) instead of 5x10^-1."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))


def _placeholder(path: Path, title: str, reason: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, f"not run: {reason}", ha="center", va="center", fontsize=12, color="#555555", wrap=True)
    _save(fig, path)


def plot_memory_timeline(jobs: list[dict], path: Path) -> None:
    """Process-tree RSS over time, one line per monitored job (embed chunks beyond 8 drawn grey, unlabelled)."""
    with_tl = [j for j in jobs if j["timeline"] and Path(j["timeline"]).exists()]
    if not with_tl:
        return _placeholder(path, "Memory timeline", "no memory monitor timelines in memory/")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    n_embed = 0
    for i, j in enumerate(with_tl):
        tl = pd.read_csv(j["timeline"], sep="\t")
        grey = j["rule"] == "embed_chunk" and n_embed >= 8
        n_embed += j["rule"] == "embed_chunk"
        kw = dict(color="#bbbbbb", linewidth=0.8) if grey else dict(label=j["job"], linewidth=1.6)
        line = ax.plot(tl["t_s"], tl["rss_mb"], **kw)[0]
        if "cuda_alloc_mb" in tl and tl["cuda_alloc_mb"].max() > 0:
            ax.plot(tl["t_s"], tl["cuda_alloc_mb"], linestyle="--", color=line.get_color(), label=None if grey else f"{j['job']} (CUDA)")
    ax.set_xlabel("time since job start (s)")
    ax.set_ylabel("RSS of process + children (MiB)")
    ax.set_title("Memory timeline per job (sampled RSS; dashed: CUDA allocated)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    _save(fig, path)


def plot_predicted_vs_measured(jobs: list[dict], path: Path) -> None:
    """Per rule (max over its jobs): predicted, monitor peak and benchmark max_rss, in MiB."""
    rules = {}
    for j in jobs:
        if j["predicted_mb"] is None and j["measured_mb"] is None:
            continue
        r = rules.setdefault(j["rule"], {"pred": [], "mon": [], "bench": [], "n": 0})
        r["n"] += 1
        for key, col in (("pred", "predicted_mb"), ("mon", "measured_mb"), ("bench", "bench_max_rss_mb")):
            if j[col] is not None and not (key == "mon" and j["measured_what"] == "bench max_rss"):
                r[key].append(j[col])
    if not rules:
        return _placeholder(path, "Predicted vs measured peak memory", "no memory logs or benchmark TSVs")
    plt = _plt()
    names = list(rules)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names) + 2), 4.8))
    series = [("pred", "predicted", "#9ecae1"), ("mon", "measured (monitor / CUDA)", "#08519c"), ("bench", "Snakemake bench max_rss", "#fd8d3c")]
    for i, (key, label, color) in enumerate(series):
        vals = [max(rules[n][key]) if rules[n][key] else 0 for n in names]
        bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label, color=color)
        for b, v in zip(bars, vals):
            if v:
                ax.annotate(f"{v:,.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, [f"{n}\n({rules[n]['n']} job{'s' if rules[n]['n'] > 1 else ''})" for n in names], fontsize=9)
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title("Predicted vs measured peak memory per rule (max over its jobs)")
    ax.legend(fontsize=8)
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_weights_hist(w: pd.DataFrame | None, path: Path) -> None:
    """Histogram of n x weight (log x), dense vs rare topics stacked when topics exist."""
    if w is None:
        return _placeholder(path, "Density weights", "no density/weights.parquet")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rel = w["rel_weight"].clip(lower=1e-12)
    bins = np.logspace(np.log10(rel.min()), np.log10(rel.max()) + 1e-9, 40) if rel.max() > rel.min() else 20
    if "group" in w and (w["group"] != "").any():
        parts = [(g, rel[w["group"] == g]) for g in ("dense", "rare") if (w["group"] == g).any()]
        ax.hist([p for _, p in parts], bins=bins, stacked=True, label=[f"{g} topics ({len(p)} prompts)" for g, p in parts], color=["#ff7f0e", "#1f77b4"][: len(parts)])
        ax.legend()
    else:
        ax.hist(rel, bins=bins, color="#1f77b4")
    if rel.max() > rel.min():
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
    ax.axvline(1.0, color="black", linestyle=":", linewidth=1, label="uniform")
    ax.set_xlabel("sampling weight × n (1 = uniform)")
    ax.set_ylabel("prompts")
    ax.set_title(f"Density weights of {len(w)} prompts (rare prompts should sit right of 1)")
    _save(fig, path)


def plot_weights_by_topic(w: pd.DataFrame | None, path: Path) -> None:
    """Box + strip of n x weight per dense topic and for all rare topics pooled."""
    if w is None:
        return _placeholder(path, "Weight by topic", "no density/weights.parquet")
    if "group" not in w or not (w["group"] != "").any():
        return _placeholder(path, "Weight by topic", "the prompts carry no topics")
    plt = _plt()
    dense = sorted(w.loc[w["group"] == "dense", "topic"].unique(), key=lambda t: -(w["topic"] == t).sum())
    n_rare = w.loc[w["group"] == "rare", "topic"].nunique()
    labels = [*dense, f"rare\n({n_rare} topics)"] if n_rare else list(dense)
    data = [w.loc[w["topic"] == t, "rel_weight"].to_numpy() for t in dense]
    if n_rare:
        data.append(w.loc[w["group"] == "rare", "rel_weight"].to_numpy())
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) + 2), 4.8))
    ax.boxplot(data, showfliers=False, widths=0.6)
    rng = np.random.default_rng(0)
    for i, vals in enumerate(data, start=1):
        color = "#1f77b4" if (n_rare and i == len(data)) else "#ff7f0e"
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(vals)), vals, s=10, alpha=0.6, color=color)
        ax.annotate(f"n={len(vals)}\nmean {np.mean(vals):.2f}", (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=8)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    _plain_log(ax.yaxis)
    ax.set_ylabel("sampling weight × n (1 = uniform, log)")
    ax.set_title("Density weight by topic: dense topics vs rare topics")
    ax.margins(y=0.15)
    _save(fig, path)


def plot_grpo_rewards(grpo: dict[str, list[dict]], path: Path) -> None:
    """Per GRPO arm: reward (± reward_std), mean completion length and step time against the step."""
    arms = {s: rows for s, rows in grpo.items() if rows}
    if not arms:
        return _placeholder(path, "GRPO training curves", "no grpo/{sampler}/metrics.jsonl")
    plt = _plt()
    panels = [("reward", "mean reward"), ("completions/mean_length", "mean completion length (tokens)"), ("step_wall_s", "step wall time (s)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for s, rows in arms.items():
        df = pd.DataFrame(rows)
        step = df["step"] if "step" in df else pd.Series(range(1, len(df) + 1))
        color = MODEL_COLORS.get(s)
        for ax, (key, _) in zip(axes, panels):
            if key in df and df[key].notna().any():
                y = pd.to_numeric(df[key], errors="coerce")
                ax.plot(step, y, marker="o", markersize=3, label=s, color=color)
                if key == "reward" and "reward_std" in df and df["reward_std"].notna().any():
                    sd = pd.to_numeric(df["reward_std"], errors="coerce")
                    ax.fill_between(step, y - sd, y + sd, alpha=0.15, color=color)
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Reward per GRPO arm (band: ± within-step std)")
    axes[1].set_title("Completion length")
    axes[2].set_title("Step time")
    _save(fig, path)


def plot_draws_vs_weight(draws: dict[str, pd.DataFrame | None], w: pd.DataFrame | None, path: Path) -> None:
    """Mean draws per prompt in bins of n x weight, per arm, against what each sampler should give."""
    arms = {s: d for s, d in draws.items() if d is not None and not d.empty}
    if not arms or w is None:
        return _placeholder(path, "Prompt draws vs density weight", "no grpo/{sampler}/draws.parquet" if not arms else "no weights.parquet")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    n_bins = int(min(8, max(1, len(w) // 5)))
    bins = pd.qcut(w["rel_weight"].rank(method="first"), n_bins, labels=False)
    x = w.groupby(bins)["rel_weight"].mean()
    for s, d in arms.items():
        m = w[["prompt_id", "rel_weight"]].merge(d.assign(prompt_id=d["prompt_id"].astype(str))[["prompt_id", "draws"]], on="prompt_id", how="left").fillna({"draws": 0})
        total = m["draws"].sum()
        y = m.groupby(bins.to_numpy())["draws"].mean()
        color = MODEL_COLORS.get(s)
        ax.plot(x, y, marker="o", color=color, label=f"{s}: observed ({int(total)} draws)")
        expected = x * total / len(m) if s == "density" else pd.Series(total / len(m), index=x.index)
        ax.plot(x, expected, linestyle="--", color=color, alpha=0.8, label=f"{s}: expected")
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    ax.set_xlabel(f"sampling weight × n, mean of each of {n_bins} equal-count bins (log)")
    ax.set_ylabel("mean draws per prompt in the bin")
    ax.set_title("GRPO prompt draws vs density weight (density arm should rise with weight)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_diversity(comparison: dict | None, path: Path) -> None:
    """Small multiples: one bar chart per metric, a bar per model (base, density, uniform)."""
    if not comparison or not comparison.get("metrics"):
        return _placeholder(path, "Diversity comparison", "no eval/comparison.json")
    plt = _plt()
    names = comparison.get("models") or []
    keys = [(k, label) for k, label in DIVERSITY_KEYS if k in comparison["metrics"]]
    ncols = 5
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.flat, keys):
        row = comparison["metrics"][key]
        vals = [row.get(n) for n in names]
        bars = ax.bar(names, [v or 0 for v in vals], color=[MODEL_COLORS.get(n, "#2ca02c") for n in names])
        for b, v in zip(bars, vals):
            neg = v is not None and v < 0
            ax.annotate("n/a" if v is None else f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="top" if neg else "bottom", fontsize=8, xytext=(0, -2 if neg else 1), textcoords="offset points")
        if any(v is not None and v < 0 for v in vals):
            ax.axhline(0, color="black", linewidth=0.8)
        diff = row.get("density_minus_uniform")
        ax.set_title(label if diff is None else f"{label}\ndensity − uniform = {diff:+.3g}", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.15)
    fig.suptitle(f"Completion diversity, {comparison.get('n_prompts')} held-out prompts × {comparison.get('samples')} samples (higher = more diverse)")
    fig.tight_layout()
    _save(fig, path)


# -----------------------------------------------------------------------------
# documents


def _weights_summary(data: dict, w: pd.DataFrame | None) -> dict[str, Any] | None:
    meta = data["meta"]
    if meta is None and w is None:
        return None
    out = {key: (meta or {}).get(key) for key in ("n", "k", "dim", "index", "recall_at_k", "index_bytes", "source", "alpha")}
    out.update((meta or {}).get("weight_stats", {}))
    if w is not None and "group" in w and (w["group"] != "").any():
        means = w.groupby("group")["rel_weight"].mean()
        if "dense" in means and "rare" in means:
            out["rare_dense_ratio"] = float(means["rare"] / means["dense"])
            out["n_dense"] = int((w["group"] == "dense").sum())
            out["n_rare"] = int((w["group"] == "rare").sum())
            out["n_rare_topics"] = int(w.loc[w["group"] == "rare", "topic"].nunique())
    return out


def write_memory_md(path: Path, rep: dict) -> None:
    m = rep
    lines = [f"# Memory report: run `{m['run']}`", ""]
    mc = m["machine"]
    lines += [
        f"Machine: {mc['ram_gib']:.1f} GiB RAM ({mc['available_gib']:.1f} GiB available when the report was built), {mc['cpus']} CPUs; "
        f"config device `{m['device_config']}` → predictions for **{m['device']}**, precision **{m['precision']}**.",
        f"Model: {m['model']['name']} ({m['model']['params']:,} parameters; config from {m['model']['config_source']}).",
        "Units: MiB = 2^20 bytes (Snakemake's benchmark `max_rss` is in the same unit).",
        "",
        "## Predicted vs measured peak per job",
        "",
    ]
    jobs = m["jobs"]
    if not jobs:
        lines.append("No memory monitor logs (`memory/`) and no benchmark TSVs (`bench/`): nothing measured yet.")
    else:
        shown = jobs if len(jobs) <= 24 else [j for j in jobs if j["rule"] != "embed_chunk"] + [j for j in jobs if j["rule"] == "embed_chunk"][:8]
        lines.append(
            _table(
                ["job", "rule", "predicted MiB", "measured MiB", "bench max_rss MiB", "measured / predicted", "wall", "measured by"],
                [[j["job"], j["rule"], _f(j["predicted_mb"], ",.0f") + ("" if j["predicted_source"] != "report" else "*"), _f(j["measured_mb"], ",.0f"), _f(j["bench_max_rss_mb"], ",.0f"), _f(j["ratio"], ".2f"), _duration(j["wall_s"]), j["measured_what"]] for j in shown],
            )
        )
        if len(shown) < len(jobs):
            lines.append(f"\n({len(jobs) - len(shown)} more embed_chunk jobs in memory.json; the per-rule table covers them all.)")
        lines += ["", "\\* predicted at report time (the job's monitor log has no prediction).", "", "Per rule (max over jobs):", ""]
        lines.append(_table(["rule", "jobs", "max predicted MiB", "max measured MiB", "measured / predicted (range)"], [[r, s["jobs"], _f(s["max_predicted_mb"], ",.0f"), _f(s["max_measured_mb"], ",.0f"), s["ratio_range"]] for r, s in m["per_rule"].items()]))
    lines += ["", "### Predicted components (MiB)", ""]
    for rule, p in m["predictions"].items():
        comp = ", ".join(f"{k} {v / MiB:,.1f}" for k, v in p["components"].items())
        lines.append(f"- **{rule}** ({p['device']}, {p['precision']}): {comp} → **{p['total_bytes'] / MiB:,.0f} MiB**. `{p['formula']}`; {json.dumps(p['assumptions'], default=str)}")
    lines += [
        "",
        f"Baselines (RSS after imports, measured once): {', '.join(f'{k} {v / MiB:.0f} MiB' for k, v in M.BASELINE_BYTES.items())}. "
        "Activation formulas: see `density_grpo/memory.py`.",
        "",
        "## Scaling with the number of prompts",
        "",
        f"N = {m['scaling'][0]['n']:,} prompts{' (nominal: no prompts in this run yet)' if m['n_prompts'] is None else ''} × 1, 10, 100, 1000. Embeddings are fp32; 'vocab logits' is what storing the "
        f"true {m['vocab']:,}-dim mean-pooled logits would take instead of the exact {m['dim']}-dim transform. "
        f"Embed time: serial CPU time from {m['throughput_source']}.",
        "",
        _table(
            ["N", "chunks", "embeddings (d-dim)", "vocab logits", "flat index", "IVF-flat", "IVF-PQ", "auto picks", "k-NN job peak", "embed time"],
            [[f"{r['n']:,}", f"{r['chunks']:,}", _h(r["emb_hidden_bytes"]), _h(r["emb_logits_bytes"]), _h(r["flat_bytes"]), _h(r["ivf_bytes"]), _h(r["ivfpq_bytes"]), r["auto_index"], _h(r["knn_peak_bytes"]), _duration(r["embed_cpu_s"])] for r in m["scaling"]],
        ),
        "",
        "## Recommendations for this machine",
        "",
        *[f"- {r}" for r in m["recommendations"]],
        "",
        "## Model size × precision",
        "",
        "Weights only (int8/int4 without quantisation scales); full fine-tune = fp32 weights + grads + AdamW m, v (16 B/param, no activations); KV cache per 1,000 tokens at batch 1 in bf16.",
        "",
        _table(
            ["model", "params", "fp32", "bf16", "int8", "int4", "full fine-tune", "KV / 1k tokens", "config (L, h, I, heads, kv, V, tied)"],
            [[r["model"], f"{r['params'] / 1e9:.3f} B", _h(r["fp32"]), _h(r["bf16"]), _h(r["int8"]), _h(r["int4"]), _h(r["finetune_adamw_fp32"]), _h(r["kv_per_1k_tokens_bf16"]), ", ".join(str(v) for v in r["config"].values())] for r in m["precision_table"]],
        ),
        "",
        "## GRPO logits: naive vs chunked",
        "",
    ]
    lg = m["logits"]
    c, k = lg["configured"], lg["classic"]
    lines += [
        f"- Configured GRPO (B = prompts_per_step × num_generations = {c['batch']}, T = max_completion_length = {c['seq']}, V = {c['vocab']:,}): "
        f"naive fp32 logits B·T·V·4 = {c['naive']:,} B ({_h(c['naive'])}); chunked ({c['token_chunk']} tokens × V × 4) = {c['chunked']:,} B ({_h(c['chunked'])}).",
        f"- **Intuitor adds how much logits memory over PPO?** At B = {k['batch']}, T = {k['seq']:,}, V = {k['vocab']:,}: computing self-certainty from a "
        f"separate full logits tensor costs {k['batch']} × {k['seq']:,} × {k['vocab']:,} × 4 = **{k['naive']:,} bytes ({k['naive'] / 1e9:.1f} GB, {_h(k['naive'])})** "
        f"on top of PPO's own log-prob logits; computed in chunks of {k['token_chunk']} tokens (this project) it adds only "
        f"{k['token_chunk']} × {k['vocab']:,} × 4 = {k['chunked']:,} bytes ({_h(k['chunked'])}), {k['naive'] / k['chunked']:,.0f}× less.",
    ]
    pv = lg["ppo_vs_intuitor_configured"]
    lines += [
        "",
        f"PPO vs Intuitor for the configured model ({pv['precision']} weights, B = {pv['batch']}, T = {pv['seq']} completion tokens; activations, "
        "equal for both policies, excluded; Intuitor needs its reference only when beta > 0):",
        "",
        _table(
            ["component", "PPO", "Intuitor"],
            [[key, _h(pv["ppo"].get(key)) if key in pv["ppo"] else "—", _h(pv["intuitor"].get(key)) if key in pv["intuitor"] else "—"] for key in dict.fromkeys([*pv["ppo"], *pv["intuitor"]])]
            + [["self-certainty logits (naive / chunked)", "—", f"{_h(pv['self_certainty_naive'])} / {_h(pv['self_certainty_chunked'])}"], ["**total**", _h(pv["ppo_total"]), f"{_h(pv['intuitor_total_naive'])} naive / {_h(pv['intuitor_total_chunked'])} chunked"]],
        ),
        "",
        "## 28,000 prompts × 50,304-dim logit embeddings",
        "",
    ]
    q = m["logit_embeddings"]
    lines += [
        f"Storing mean-pooled logits as vectors: {q['n']:,} × {q['vocab']:,} × 4 = **{q['logits_bytes']:,} bytes ({q['logits_bytes'] / 1e9:.2f} GB, {_h(q['logits_bytes'])})**. "
        f"This project stores the exact d_model transform instead (for a linear head, distances and cosines are identical): "
        f"{q['n']:,} × {q['dim']} × 4 = {q['dim_bytes']:,} bytes ({_h(q['dim_bytes'])}), {q['ratio']:.0f}× smaller. A FAISS flat index over the logits would need the same {q['logits_bytes'] / 1e9:.1f} GB again.",
        "",
        "## Plots",
        "",
        f"![memory timeline]({PLOTS['memory_timeline']})",
        "",
        f"![predicted vs measured]({PLOTS['memory_predicted_vs_measured']})",
    ]
    if m["missing"]:
        lines += ["", "## Missing", "", *[f"- {x}" for x in m["missing"]]]
    _write_text(path, "\n".join(lines) + "\n")


def write_summary_md(path: Path, data: dict, ws: dict | None, mem: dict) -> None:
    lines = [f"# density-grpo run `{data['run']}`", ""]
    p = data["prompts"]
    n_pairs = int(p["n_pairs"].sum()) if p is not None and "n_pairs" in p else None
    groups = topic_groups(p)
    topics = f", {sum(v == 'dense' for v in groups.values())} dense and {sum(v == 'rare' for v in groups.values())} rare topics" if groups else ""
    lines += ["## Data", "", f"{_f(n_pairs, ',')} preference pairs, {_f(len(p) if p is not None else None, ',')} unique prompts{topics}." if p is not None else "not run (no data/prompts.parquet)", ""]

    lines += ["## Density weights", ""]
    if ws is None:
        lines.append("not run (no density/metadata.json)")
    else:
        recall = f", recall@k {ws['recall_at_k']:.3f}" if ws.get("recall_at_k") is not None else ""
        lines.append(f"{_f(ws.get('n'), ',')} prompts, {ws.get('dim')}-dim {ws.get('source') or ''} embeddings, k = {ws.get('k')}, index {ws.get('index')}{recall}, index {_h(ws.get('index_bytes'))}.")
        lines.append(f"Weights: max/min {_f(ws.get('max_min_ratio'), '.2f')}, ESS/n {_f(ws.get('ess_fraction'), '.2f')}, entropy/log n {_f(ws.get('entropy_ratio'), '.3f')}.")
        if ws.get("rare_dense_ratio") is not None:
            verdict = "rare prompts get more weight ✓" if ws["rare_dense_ratio"] > 1 else "rare prompts do NOT get more weight ✗"
            lines.append(f"Mean weight of rare-topic prompts / dense-topic prompts = **{ws['rare_dense_ratio']:.2f}** ({ws['n_rare']} prompts in {ws['n_rare_topics']} rare topics vs {ws['n_dense']} dense): {verdict}.")
        lines += ["", f"![weights]({PLOTS['weights_hist']}) ![by topic]({PLOTS['weights_by_topic']})"]
    lines += ["", "## Reward model", ""]
    rm = data["rm"]
    if rm is None:
        lines.append("not run (no rm/metrics.json)")
    else:
        lines.append(
            f"Held-out accuracy **{_f(rm.get('eval_accuracy'), '.3f')}** on {_f(rm.get('n_eval'))} pairs, mean margin {_f(rm.get('eval_margin_mean'), '.3f')}; "
            f"train loss {_f(rm.get('train_loss_first'), '.3f')} → {_f(rm.get('train_loss_last'), '.3f')} over {_f(rm.get('steps'))} steps ({_duration(rm.get('wall_time_s') or rm.get('train_time_s'))})."
        )
    lines += ["", "## GRPO", ""]
    arms = {s: rows for s, rows in data["grpo"].items() if rows}
    if not arms:
        lines.append("not run (no grpo/{sampler}/metrics.jsonl)")
    else:
        rows = []
        for s, r in arms.items():
            rewards = [x.get("reward") for x in r if x.get("reward") is not None]
            steps_s = [x.get("step_wall_s") for x in r if x.get("step_wall_s") is not None]
            d = data["draws"].get(s)
            uniq = f"{int((d['draws'] > 0).sum())} / {len(d)}" if d is not None and not d.empty else "n/a"
            rows.append([s, len(r), _f(rewards[0] if rewards else None, ".3f"), _f(rewards[-1] if rewards else None, ".3f"), _f(float(np.mean(rewards)) if rewards else None, ".3f"), uniq, _f(float(np.mean(steps_s)) if steps_s else None, ".1f")])
        lines.append(_table(["arm", "steps", "first reward", "final reward", "mean reward", "prompts drawn", "s / step"], rows))
        lines += ["", f"![rewards]({PLOTS['grpo_rewards']}) ![draws]({PLOTS['draws_vs_weight']})"]
    missing = [s for s in data["grpo"] if not data["grpo"][s]]
    if arms and missing:
        lines.append(f"\nArms not run: {', '.join(missing)}.")
    lines += ["", "## Diversity (held-out prompts)", ""]
    comp = data["comparison"]
    if not comp or not comp.get("metrics"):
        lines.append("not run (no eval/comparison.json)")
    else:
        names = comp.get("models") or []
        has_diff = "density" in names and "uniform" in names
        rows = []
        for key, label in DIVERSITY_KEYS:
            row = comp["metrics"].get(key)
            if row is None:
                continue
            rows.append([label, *[_f(row.get(n), ".4g") for n in names], *([_f(row.get("density_minus_uniform"), "+.3g")] if has_diff else [])])
        lines.append(f"{comp.get('n_prompts')} held-out prompts × {comp.get('samples')} samples; higher diversity = less mode collapse.\n")
        lines.append(_table(["metric", *names, *(["density − uniform"] if has_diff else [])], rows))
        lines += ["", f"![diversity]({PLOTS['diversity']})"]
    lines += ["", "## Memory", "", mem["headline"], "", "## Files", ""]
    lines += [f"- [{name}]({name})" for name in ("memory.md", "memory.json", *PLOTS.values())]
    _write_text(path, "\n".join(lines) + "\n")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _per_rule(jobs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for j in jobs:
        r = out.setdefault(j["rule"], {"jobs": 0, "pred": [], "meas": [], "ratios": []})
        r["jobs"] += 1
        for key, col in (("pred", "predicted_mb"), ("meas", "measured_mb"), ("ratios", "ratio")):
            if j[col] is not None:
                r[key].append(j[col])
    return {
        rule: {
            "jobs": r["jobs"],
            "max_predicted_mb": max(r["pred"]) if r["pred"] else None,
            "max_measured_mb": max(r["meas"]) if r["meas"] else None,
            "ratio_range": (f"{min(r['ratios']):.2f}–{max(r['ratios']):.2f}" if len(r["ratios"]) > 1 else f"{r['ratios'][0]:.2f}") if r["ratios"] else "n/a",
        }
        for rule, r in out.items()
    }


def memory_report(data: dict, cfg: dict, model_cfg: dict, model_source: str) -> dict:
    """Everything memory.md and memory.json show."""
    device = _device(cfg)
    prompt_tokens = _prompt_tokens(data)
    jobs = memory_jobs(data, cfg, model_cfg, prompt_tokens)
    pps, pps_source = embed_throughput(data, jobs)
    scaling = scaling_table(data, cfg, model_cfg, pps)
    d = M._dims(model_cfg)
    dim = int((data["meta"] or {}).get("dim") or d["h"])
    n = _n_prompts(data)
    predictions = {r: M.predict_rule(r, cfg, model_cfg, n, prompt_tokens, device=device) for r in RULES}
    vm = psutil.virtual_memory()
    measured = [j for j in jobs if j["measured_mb"] is not None]
    if measured:
        top = max(measured, key=lambda j: j["measured_mb"])
        ratios = [j["ratio"] for j in jobs if j["ratio"] is not None]
        headline = (
            f"Largest measured peak: **{top['measured_mb']:,.0f} MiB** ({top['job']}), {top['measured_mb'] * MiB / vm.total:.0%} of this machine's "
            f"{vm.total / 2**30:.1f} GiB RAM; measured / predicted across {len(ratios)} jobs: "
            + (f"{min(ratios):.2f}–{max(ratios):.2f}." if ratios else "n/a.")
            + " Details: [memory.md](memory.md)."
        )
    else:
        headline = "No memory measurements yet (no memory/ logs or bench/ TSVs). Predictions: [memory.md](memory.md)."
    missing = []
    for what, ok in (
        ("density/metadata.json", data["meta"] is not None),
        ("density/weights.parquet", data["weights"] is not None),
        ("data/prompts.parquet", data["prompts"] is not None),
        ("memory/*.json (memory monitor)", bool(data["monitors"])),
        ("bench/*.tsv (Snakemake benchmarks)", bool(data["bench"])),
        ("rm/metrics.json", data["rm"] is not None),
        ("eval/comparison.json", data["comparison"] is not None),
    ):
        if not ok:
            missing.append(what)
    missing += [f"grpo/{s}/metrics.jsonl" for s, rows in data["grpo"].items() if not rows]
    q = LOGIT_Q
    return {
        "run": data["run"],
        "machine": {"ram_gib": vm.total / 2**30, "available_gib": vm.available / 2**30, "cpus": psutil.cpu_count()},
        "device_config": cfg.get("device", "auto"),
        "device": device,
        "precision": M._run_precision(cfg, device),
        "model": {"name": cfg.get("model", {}).get("name_or_path"), "params": M.param_count(model_cfg), "config_source": model_source, "config": M._dims(model_cfg)},
        "n_prompts": n,
        "dim": dim,
        "vocab": d["V"],
        "jobs": jobs,
        "per_rule": _per_rule(jobs),
        "predictions": predictions,
        "throughput_prompts_per_s": pps,
        "throughput_source": pps_source,
        "scaling": scaling,
        "recommendations": recommendations(cfg, model_cfg, dim, scaling, pps, device),
        "precision_table": precision_table(model_cfg, str(cfg.get("model", {}).get("name_or_path", "configured"))),
        "logits": logits_section(cfg, model_cfg),
        "logit_embeddings": {**q, "dim": d["h"], "logits_bytes": M.embedding_store_bytes(q["n"], q["vocab"]), "dim_bytes": M.embedding_store_bytes(q["n"], d["h"]), "ratio": q["vocab"] / d["h"]},
        "headline": headline,
        "missing": missing,
    }


def build_reports(run_dir: str, cfg: dict, out_dir: str, model_cfg: dict | None = None) -> list[str]:
    """Write summary.md, memory.md, memory.json and the PNG plots (REPORT_FILES) into out_dir; return their paths.

    run_dir: results/{run}. model_cfg: the model's config.json dict (None: read it from the model folder when it
    exists, else SmolLM2-135M defaults). Every file is always written (missing inputs: "not run").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_run(run_dir, cfg)
    source = "the caller (build_reports model_cfg)"
    if model_cfg is None:
        model_cfg, source = M.load_model_config(cfg)
    mem = memory_report(data, cfg, model_cfg, source)
    w = weights_frame(data)

    plot_memory_timeline(mem["jobs"], out / PLOTS["memory_timeline"])
    plot_predicted_vs_measured(mem["jobs"], out / PLOTS["memory_predicted_vs_measured"])
    plot_weights_hist(w, out / PLOTS["weights_hist"])
    plot_weights_by_topic(w, out / PLOTS["weights_by_topic"])
    plot_grpo_rewards(data["grpo"], out / PLOTS["grpo_rewards"])
    plot_draws_vs_weight(data["draws"], w, out / PLOTS["draws_vs_weight"])
    plot_diversity(data["comparison"], out / PLOTS["diversity"])

    write_json({k: v for k, v in mem.items()}, out / "memory.json")
    write_memory_md(out / "memory.md", mem)
    write_summary_md(out / "summary.md", data, _weights_summary(data, w), mem)
    return [str(out / name) for name in REPORT_FILES]

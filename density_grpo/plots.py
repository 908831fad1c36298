"""Figures: one function per figure, shared by the stages that draw them and the report.

Each takes the small data it shows (a summary dict or frame) and a path; with nothing to show it draws a
placeholder saying why, so a report always has the same set of files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from density_grpo.io import atomic_path

MODEL_COLORS = {"base": "#8c8c8c", "density": "#1f77b4", "uniform": "#ff7f0e"}
DIVERSITY_KEYS = [
    "distinct_1_within", "distinct_2_within", "cosine_distance_within", "vendi_within",
    "distinct_1_across", "distinct_2_across", "cosine_distance_across", "vendi_across",
    "reward_mean", "length_tokens",
]  # fmt: skip


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    _plt().close(fig)


def _plain_log(axis) -> None:
    """Log-scale axis with plain tick labels (0.5, 1, 2) instead of 5x10^-1."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))


def _placeholder(path: str | Path, title: str, reason: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, f"not run: {reason}", ha="center", va="center", fontsize=12, color="#555555", wrap=True)
    _save(fig, path)


def plot_memory_timeline(records: list[dict], path: str | Path) -> None:
    """Process-tree RSS over time, one line per job (embed chunks beyond 8 drawn grey, unlabelled)."""
    if not records:
        return _placeholder(path, "Memory timeline", "no memory records")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    n_embed = 0
    for rec in records:
        tl = rec["timeline"]
        grey = rec["rule"] == "embed_chunk" and n_embed >= 8
        n_embed += rec["rule"] == "embed_chunk"
        kw = dict(color="#bbbbbb", linewidth=0.8) if grey else dict(label=rec["job"], linewidth=1.6)
        line = ax.plot(tl["t_s"], tl["rss_mb"], **kw)[0]
        if "cuda_alloc_mb" in tl and max(tl["cuda_alloc_mb"], default=0) > 0:
            label = None if grey else f"{rec['job']} (CUDA)"
            ax.plot(tl["t_s"], tl["cuda_alloc_mb"], linestyle="--", color=line.get_color(), label=label)
    ax.set_xlabel("time since job start (s)")
    ax.set_ylabel("RSS of process + children (MiB)")
    ax.set_title("Memory timeline per job (sampled RSS; dashed: CUDA allocated)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    _save(fig, path)


def plot_predicted_vs_measured(per_rule: dict[str, dict], path: str | Path) -> None:
    """Per rule (max over its jobs): predicted, measured (monitor / CUDA) and Snakemake benchmark max_rss, in MiB."""
    if not per_rule:
        return _placeholder(path, "Predicted vs measured peak memory", "no memory records")
    plt = _plt()
    names = list(per_rule)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names) + 2), 4.8))
    series = [
        ("max_predicted_mb", "predicted", "#9ecae1"),
        ("max_measured_mb", "measured (monitor / CUDA)", "#08519c"),
        ("max_bench_rss_mb", "Snakemake bench max_rss", "#fd8d3c"),
    ]
    for i, (key, label, color) in enumerate(series):
        vals = [per_rule[n][key] or 0 for n in names]
        bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label, color=color)
        for b, v in zip(bars, vals):
            if v:
                ax.annotate(f"{v:,.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, [f"{n}\n({per_rule[n]['jobs']} job{'s' if per_rule[n]['jobs'] > 1 else ''})" for n in names], fontsize=9)
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title("Predicted vs measured peak memory per rule (max over its jobs)")
    ax.legend(fontsize=8)
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_weights_hist(w: pd.DataFrame | None, path: str | Path) -> None:
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


def plot_weights_by_topic(w: pd.DataFrame | None, path: str | Path) -> None:
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


def plot_weights_vs_tokens(w: pd.DataFrame | None, meta: dict, path: str | Path) -> None:
    """Scatter of n x weight against prompt tokens (both log), rare vs dense topics coloured, Spearman in the title."""
    if w is None:
        return _placeholder(path, "Weight vs prompt length", "no density/weights.parquet")
    if "n_tokens" not in w:
        return _placeholder(path, "Weight vs prompt length", "the embedding chunks carry no per-prompt token counts")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    groups = [("dense", "#ff7f0e"), ("rare", "#1f77b4")] if "group" in w and (w["group"] != "").any() else []
    for g, color in groups:
        sel = w["group"] == g
        label = f"{g} topics ({int(sel.sum())})"
        ax.scatter(w.loc[sel, "n_tokens"], w.loc[sel, "rel_weight"], s=12, alpha=0.6, color=color, label=label)
    if not groups:
        ax.scatter(w["n_tokens"], w["rel_weight"], s=12, alpha=0.6, color="#1f77b4")
    else:
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log(ax.xaxis)
    _plain_log(ax.yaxis)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("prompt tokens (whole prompt, log)")
    ax.set_ylabel("sampling weight × n (1 = uniform, log)")
    rho = {key: meta.get(f"spearman_weight_{key}") for key in ("tokens", "turns")}
    rho = {key: "n/a" if v is None else f"{v:+.2f}" for key, v in rho.items()}
    recipe = f"pooling {meta.get('pooling')}, postprocess {meta.get('postprocess')}, residual {meta.get('length_residual')}"
    ax.set_title(
        f"Weight vs prompt length: Spearman ρ(weight, tokens) = {rho['tokens']}, ρ(weight, turns) = {rho['turns']}\n"
        f"({recipe}; a flat cloud means the weights ignore length)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_grpo_rewards(grpo: dict[str, list[dict]], path: str | Path) -> None:
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


def plot_draws_vs_weight(draws: dict[str, pd.DataFrame | None], w: pd.DataFrame | None, path: str | Path) -> None:
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


def plot_diversity(comparison: dict | None, path: str | Path) -> None:
    """Small multiples: one bar chart per metric, a bar per model (base, density, uniform)."""
    if not comparison or not comparison.get("metrics"):
        return _placeholder(path, "Diversity comparison", "no eval/comparison.json")
    plt = _plt()
    names = comparison["models"]
    keys = [(k, comparison["labels"][k]) for k in DIVERSITY_KEYS if k in comparison["metrics"]]
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

"""Figures: one function per figure, each drawn once, by the stage or report that owns it.

Each takes the small data it shows (a summary dict or frame) and a path; with nothing to show it draws a
placeholder saying why, so a report always has the same set of files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from density_grpo.io import atomic_path

MODEL_COLORS = {"base": "#8c8c8c", "control": "#2ca02c", "density": "#1f77b4", "uniform": "#ff7f0e"}


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


LINE_STYLES = ("-", "--", "-.", ":")


def timeline_styles(jobs: list[tuple[str, str]]) -> list[dict]:
    """Line colour and style of each (rule, job): a hue per rule (tab10, the rules in order of first appearance;
    after 10 rules the hues come round again with other line styles), a lighter shade and another line style per
    job of that rule, so every (colour, style) differs and a rule's jobs read as one group."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    palette = colormaps["tab10"].colors
    rules = list(dict.fromkeys(rule for rule, _ in jobs))
    members = {rule: [j for r, j in jobs if r == rule] for rule in rules}
    out = []
    for rule, job in jobs:
        k, i, n = rules.index(rule), members[rule].index(job), len(members[rule])
        base = np.array(to_rgb(palette[k % len(palette)]))
        light = 0.0 if n == 1 else 0.55 * i / (n - 1)  # blend towards white: same hue, lighter
        out.append({"color": tuple(base + (1 - base) * light), "linestyle": LINE_STYLES[(i + k // len(palette)) % len(LINE_STYLES)]})
    return out


def plot_memory_timeline(records: list[dict], path: str | Path) -> None:
    """Process-tree RSS over time, one line per job (embed chunks beyond 8 drawn grey, unlabelled); a colour family
    per rule (timeline_styles), the legend outside the axes."""
    if not records:
        return _placeholder(path, "Memory timeline", "no memory records")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.8))
    n_embed, shown, cuda = 0, [], False
    for rec in records:
        grey = rec["rule"] == "embed_chunk" and n_embed >= 8
        n_embed += rec["rule"] == "embed_chunk"
        shown.append(not grey)
    styles = iter(timeline_styles([(r["rule"], r["job"]) for r, keep in zip(records, shown) if keep]))
    for rec, keep in zip(records, shown):
        tl = rec["timeline"]
        kw = dict(label=rec["job"], linewidth=1.6, **next(styles)) if keep else dict(color="#bbbbbb", linewidth=0.8)
        ax.plot(tl["t_s"], tl["rss_mb"], **kw)
        if "cuda_alloc_mb" in tl and max(tl["cuda_alloc_mb"], default=0) > 0:
            label, cuda = (f"{rec['job']} (CUDA)" if keep else None), True
            ax.plot(tl["t_s"], tl["cuda_alloc_mb"], color=kw["color"], linestyle=(0, (1, 1)), linewidth=1.0, label=label)
    ax.set_xlabel("time since job start (s)")
    ax.set_ylabel("RSS of process + children (MiB)")
    ax.set_title("Memory timeline per job (sampled RSS" + ("; fine dots: CUDA allocated)" if cuda else ")"))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    n_labels = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=8, ncol=1 if n_labels <= 24 else 2, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
    """Per GRPO run ("arm/seedN", coloured by arm): reward (± reward_std), mean completion length and step time."""
    plt = _plt()
    panels = [("reward", "mean reward"), ("completions/mean_length", "mean completion length (tokens)"), ("step_wall_s", "step wall time (s)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    styles: dict[str, int] = {}
    for s, rows in grpo.items():
        df = pd.DataFrame(rows)
        step = df["step"]
        arm = s.split("/")[0]
        styles[arm] = styles.get(arm, -1) + 1  # seeds of one arm: one colour, different line styles
        color, style = MODEL_COLORS.get(arm), ["-", "--", ":", "-."][styles[arm] % 4]
        for ax, (key, _) in zip(axes, panels):
            if key in df and df[key].notna().any():
                y = pd.to_numeric(df[key], errors="coerce")
                ax.plot(step, y, marker="o", markersize=3, label=s, color=color, linestyle=style)
                if key == "reward" and "reward_std" in df and df["reward_std"].notna().any():
                    sd = pd.to_numeric(df["reward_std"], errors="coerce")
                    ax.fill_between(step, y - sd, y + sd, alpha=0.15, color=color)
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Reward per GRPO run (band: ± within-step std)")
    axes[1].set_title("Completion length")
    axes[2].set_title("Step time")
    _save(fig, path)


def plot_draws_vs_weight(draws: dict[str, pd.DataFrame], w: pd.DataFrame, path: str | Path) -> None:
    """Mean draws per prompt in bins of n x weight, per arm (its seeds' draws summed), against what each sampler
    should give."""
    arms: dict[str, pd.DataFrame] = {}
    for run, d in draws.items():
        arm = run.split("/")[0]
        arms[arm] = d if arm not in arms else pd.concat([arms[arm], d]).groupby("prompt_id", as_index=False)["draws"].sum()
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


DIVERSITY_PANELS = ("distinct_2_within", "vendi_within", "vendi_across", "cosine_across", "reward_mean")


def _ci_err(value: float, ci: dict) -> list[list[float]]:
    return [[value - ci["lo"]], [ci["hi"] - value]]


def value_labels(values: list[float]) -> list[str]:
    """Labels with about 3 significant digits, more where needed so that different values never share a label
    (cosine distances of 1.0074 and 1.0054 are not both "1.01")."""
    finite = [v for v in values if math.isfinite(v)]
    top = max((abs(v) for v in finite), default=1.0) or 1.0
    decimals = max(0, 2 - math.floor(math.log10(top)))
    for d in range(decimals, decimals + 5):
        labels = [f"{v:.{d}f}" for v in values]
        if all((labels[i] == labels[j]) == (values[i] == values[j]) for i in range(len(values)) for j in range(i)):
            break
    return labels


NOISE_FLOOR = {"facecolor": "#f6e3b4", "edgecolor": "#c9a227", "hatch": "///", "linewidth": 0.8}  # never an interval's grey
DIFF_COLORS = {True: "#1f77b4", False: "#555555"}  # density - uniform interval: excludes 0, includes 0


def plot_diversity(comparison: dict, path: str | Path) -> None:
    """Top row: each model's value per metric (arms: mean over seeds, small dots: single seeds). Bottom row: density - uniform
    with its 95% bootstrap interval, over all evaluated prompts and per stratum, against the base model's noise floor
    (hatched band: the interval of base vs base)."""
    plt = _plt()
    keys = [k for k in DIVERSITY_PANELS if k in comparison["metrics"]]
    fig, axes = plt.subplots(2, len(keys), figsize=(3.3 * len(keys), 7.2), squeeze=False)
    for col, key in enumerate(keys):
        m = comparison["metrics"][key]
        ax = axes[0, col]
        names = list(m["values"])
        labels = value_labels([float(m["values"][n]) for n in names])
        for i, (n, text) in enumerate(zip(names, labels)):
            color = MODEL_COLORS.get(n, "#2ca02c")
            ax.scatter([i], [m["values"][n]], color=color, s=90, zorder=3, marker="D")
            if n in m["per_seed"]:
                ax.scatter([i + 0.12] * len(m["per_seed"][n]), m["per_seed"][n], color=color, s=14, alpha=0.7, zorder=2)
            ax.annotate(text, (i, m["values"][n]), ha="right", va="center", fontsize=8, xytext=(-8, 0), textcoords="offset points")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(-0.7, len(names) - 0.3)
        ax.margins(y=0.25)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(m["label"], fontsize=9)
        ax = axes[1, col]
        rows = [("all", m)] + [(s, m["strata"][s]) for s in ("rare", "dense") if s in m["strata"]]
        rows = [(label, r) for label, r in rows if "density_minus_uniform" in r]
        for i, (label, r) in enumerate(rows):
            d = r["density_minus_uniform"]
            color = DIFF_COLORS[bool(d["excludes_zero"])]
            ax.errorbar([i], [d["diff"]], yerr=_ci_err(d["diff"], d), fmt="o", color=color, capsize=5, linewidth=2, zorder=3)
            if "noise_floor" in r:
                nf = r["noise_floor"]
                ax.add_patch(plt.Rectangle((i - 0.3, nf["lo"]), 0.6, nf["hi"] - nf["lo"], zorder=0, **NOISE_FLOOR))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(rows)), [f"{label}\n(n={comparison['n_prompts'] if label == 'all' else comparison['strata'][label]})" for label, _ in rows], fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_title("density − uniform, 95% CI", fontsize=9)
    axes[1, 0].set_ylabel("density − uniform")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], color=DIFF_COLORS[True], marker="o", linewidth=2, label="density − uniform, 95% CI excludes 0"),
        Line2D([], [], color=DIFF_COLORS[False], marker="o", linewidth=2, label="95% CI includes 0 (no evidence of a difference)"),
        Patch(**NOISE_FLOOR, label="noise floor: base − base (two sample sets), 95% CI"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.04))
    seeds = comparison["seeds"]
    fig.suptitle(
        f"Diversity of completions on {comparison['n_prompts']} held-out prompts × {comparison['samples']} samples "
        f"({', '.join(f'{a}: {len(s)} seeds' for a, s in seeds.items() if s)}); higher = less mode collapse.\n"
        "Top: diamond = model (arms: mean over seeds), dots = single seeds. Bottom: density − uniform per stratum "
        "against the noise floor (legend below).",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)


def plot_curves(comparison: dict, path: str | Path) -> None:
    """Collapse curves per arm (line: mean over seeds, band: min-max over seeds): diversity, reward and KL to the base
    policy against the step, and diversity against reward (the diversity-reward frontier)."""
    plt = _plt()
    curves = comparison["curves"]
    panels = [("step", "vendi_within"), ("step", "reward_mean"), ("step", "kl_to_base"), ("reward_mean", "vendi_within")]
    labels = {"step": "GRPO step", "vendi_within": "Vendi within prompt (centred)", "reward_mean": "mean reward", "kl_to_base": "KL(policy || base) per token"}
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, (x, y) in zip(axes, panels):
        for arm, runs in curves.items():
            color = MODEL_COLORS.get(arm)
            steps = sorted({p["step"] for pts in runs.values() for p in pts})
            by_step = {st: [p for pts in runs.values() for p in pts if p["step"] == st] for st in steps}
            xs = [np.mean([p[x] for p in by_step[st]]) for st in steps]
            ys = np.array([[p[y] for p in by_step[st]] for st in steps], dtype=object)
            mean = [np.mean(v) for v in ys]
            ax.plot(xs, mean, marker="o", color=color, label=f"{arm} ({len(runs)} seeds)")
            if x == "step":
                ax.fill_between(xs, [np.min(v) for v in ys], [np.max(v) for v in ys], color=color, alpha=0.18)
            else:
                for pts in runs.values():
                    ax.plot([p[x] for p in pts], [p[y] for p in pts], color=color, alpha=0.35, linewidth=0.8)
        ax.set_xlabel(labels[x])
        ax.set_ylabel(labels[y])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[3].set_title("diversity-reward frontier (thin: single seeds)", fontsize=9)
    axes[0].set_title("collapse: diversity over training (band: seeds)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)

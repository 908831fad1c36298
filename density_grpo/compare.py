"""Stage 7b, comparison: does the density arm collapse less than the uniform arm? Differences with 95% intervals.

Diversity is measured in one shared space: every response embedding of every compared model (base, each arm x seed)
is centred on their common mean before cosine distances and Vendi scores are taken (mean-pooled LM states share a
large common offset that makes every pair look alike; one offset added to 20 random vectors moves Vendi from ~11
to ~1). The raw (uncentred) Vendi scores are kept as secondary metrics.

Intervals: percentile bootstrap. Each resample draws the evaluated prompts with replacement, the same draw for
every model (paired: all models answered the same prompts), and each arm's seeds with replacement. The noise floor
is the same statistic between two independent sample sets of the base model. Per stratum (rare / dense prompts by
density weight) the prompts are resampled within the stratum. Curves: diversity against step, and at matched reward
and matched KL to the base model: each run's curve interpolated at a level every run reached after step 0 (at step 0
every run is the base model), the curve prompts resampled (paired) and the seeds resampled.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from density_grpo.stats import distinct_n, pairwise_cosine_distance, vendi_score
from density_grpo.io import read_json, write_json

log = logging.getLogger(__name__)

ARMS = ("density", "uniform")
# key: (label, kind) where kind is "within" (a per-prompt mean) or "across" (all responses pooled)
METRICS: dict[str, tuple[str, str]] = {
    "distinct_1_within": ("distinct-1 within prompt", "within"),
    "distinct_2_within": ("distinct-2 within prompt", "within"),
    "cosine_within": ("cosine distance within prompt (centred)", "within"),
    "vendi_within": ("Vendi within prompt (centred)", "within"),
    "vendi_within_raw": ("Vendi within prompt (raw)", "within"),
    "distinct_2_across": ("distinct-2 across prompts", "across"),
    "cosine_across": ("cosine distance across prompts (centred)", "across"),
    "vendi_across": ("Vendi across prompts (centred)", "across"),
    "vendi_across_raw": ("Vendi across prompts (raw)", "across"),
    "reward_mean": ("mean RM reward", "within"),
    "length_tokens": ("mean length (tokens)", "within"),
}
HEADLINE = ("vendi_within", "vendi_across", "distinct_2_within", "reward_mean")
# differences reported: (a, b) -> name; base_b is the base model's second sample set
PAIRS = {
    ("density", "uniform"): "density_minus_uniform",
    ("density", "base"): "density_minus_base",
    ("uniform", "base"): "uniform_minus_base",
    ("control", "base"): "control_minus_base",
    ("base", "base_b"): "noise_floor",
}
DETECTABLE_SE = 2.8  # a difference of 2.8 standard errors: a 95% interval excludes zero with 80% power (1.96 + 0.84)


# -----------------------------------------------------------------------------
# one run's metrics


class Run:
    """One model's sample set: texts [prompt][sample], rewards and lengths (prompts, samples), embeddings (centred
    and raw, prompts x samples x dim)."""

    def __init__(self, texts: list[list[str]], rewards, lengths, emb: np.ndarray, centre: np.ndarray):
        self.texts, self.raw = texts, np.asarray(emb, dtype=np.float64)
        self.rewards, self.lengths = np.asarray(rewards, float), np.asarray(lengths, float)
        self.emb = self.raw - centre

    def per_prompt(self) -> dict[str, np.ndarray]:
        """The within-prompt metrics, one value per prompt."""
        return {
            "distinct_1_within": np.array([distinct_n(t, 1) for t in self.texts]),
            "distinct_2_within": np.array([distinct_n(t, 2) for t in self.texts]),
            "cosine_within": np.array([pairwise_cosine_distance(e) for e in self.emb]),
            "vendi_within": np.array([vendi_score(e) for e in self.emb]),
            "vendi_within_raw": np.array([vendi_score(e) for e in self.raw]),
            "reward_mean": self.rewards.mean(1),
            "length_tokens": self.lengths.mean(1),
        }

    def across(self, idx: np.ndarray) -> dict[str, float]:
        """The across-prompt metrics over the prompts `idx` (with repeats, as a bootstrap draws them)."""
        emb, raw = self.emb[idx].reshape(-1, self.emb.shape[-1]), self.raw[idx].reshape(-1, self.raw.shape[-1])
        return {
            "distinct_2_across": distinct_n([t for i in idx for t in self.texts[i]], 2),
            "cosine_across": pairwise_cosine_distance(emb),
            "vendi_across": vendi_score(emb),
            "vendi_across_raw": vendi_score(raw),
        }


# -----------------------------------------------------------------------------
# bootstrap


def interval(samples: np.ndarray, point: float) -> dict[str, Any]:
    """95% percentile interval of a bootstrap distribution, its standard error and the smallest difference of this
    design that a 95% interval would exclude zero for with 80% power (DETECTABLE_SE standard errors)."""
    lo, hi = np.percentile(samples, [2.5, 97.5])
    se = float(np.std(samples, ddof=1)) if len(samples) > 1 else 0.0
    return {
        "diff": float(point), "lo": float(lo), "hi": float(hi), "excludes_zero": bool(lo > 0 or hi < 0), "se": se,
        "detectable": DETECTABLE_SE * se,
    }  # fmt: skip


def bootstrap_diff(
    stat: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, float]],
    n_prompts: int, n_seeds: tuple[int, int], B: int, rng: np.random.Generator,
) -> dict[str, Any]:  # fmt: skip
    """Percentile interval of stat_a - stat_b. stat(prompts, seeds_a, seeds_b) -> (a, b); the point estimate uses all
    prompts and seeds once; each resample draws prompts (shared, paired) and each side's seeds with replacement.

    Also the two parts of the standard error, from B/4 resamples each: se_prompts with the seeds held fixed,
    se_seeds with the prompts held fixed (se^2 ≈ se_prompts^2 + se_seeds^2), so that the error of a design with
    other numbers of prompts and seeds can be predicted (tools/predict_run.py)."""
    all_p, all_a, all_b = np.arange(n_prompts), np.arange(n_seeds[0]), np.arange(n_seeds[1])
    a, b = stat(all_p, all_a, all_b)

    def draws(prompts: bool, seeds: bool, n: int) -> np.ndarray:
        out = np.empty(n)
        for i in range(n):
            p = rng.integers(0, n_prompts, n_prompts) if prompts else all_p
            sa = rng.integers(0, n_seeds[0], n_seeds[0]) if seeds else all_a
            sb = rng.integers(0, n_seeds[1], n_seeds[1]) if seeds else all_b
            x, y = stat(p, sa, sb)
            out[i] = x - y
        return out

    out = interval(draws(True, True, B), a - b)
    quarter = max(2, B // 4)
    out["se_prompts"] = float(np.std(draws(True, False, quarter), ddof=1))
    out["se_seeds"] = float(np.std(draws(False, True, quarter), ddof=1)) if max(n_seeds) > 1 else 0.0
    return out


def detectable_at(diff: dict[str, Any], measured: tuple[int, int], planned: tuple[int, int]) -> float:
    """The smallest difference a design of `planned` (prompts, seeds per arm) could detect, from one measured with
    `measured` (prompts, seeds per arm): each part of the standard error scaled by its own sample size."""
    se2 = diff["se_prompts"] ** 2 * measured[0] / planned[0] + diff["se_seeds"] ** 2 * measured[1] / planned[1]
    return DETECTABLE_SE * float(np.sqrt(se2))


def compare_models(groups: dict[str, list[Run]], key: str, idx: np.ndarray, B: int, seed: int) -> dict[str, Any]:
    """One metric over the prompts `idx`: each group's value (mean over its runs) and the differences with intervals.

    groups: "base" (the base model's first sample set), "base_b" (its second: the noise floor), "control" (the
    base model at the control temperature), "density", "uniform" (one Run per seed); any but base may be missing.
    """
    kind = METRICS[key][1]
    if kind == "within":
        per = {g: np.stack([r.per_prompt()[key][idx] for r in runs]) for g, runs in groups.items()}  # (runs, prompts)

        def value(g: str, p: np.ndarray, s: np.ndarray) -> float:
            return float(per[g][s][:, p].mean())
    else:
        cache: dict[tuple, float] = {}

        def value(g: str, p: np.ndarray, s: np.ndarray) -> float:
            out = []
            for k in s:
                ck = (g, int(k), p.tobytes())
                if ck not in cache:
                    cache[ck] = groups[g][k].across(idx[p])[key]
                out.append(cache[ck])
            return float(np.mean(out))

    n = len(idx)
    out: dict[str, Any] = {"values": {}, "per_seed": {}}
    for g, runs in groups.items():
        if g != "base_b":
            out["values"][g] = value(g, np.arange(n), np.arange(len(runs)))
        if g in ARMS:
            out["per_seed"][g] = [value(g, np.arange(n), np.array([k])) for k in range(len(runs))]
    for (a, b), name in PAIRS.items():
        if a in groups and b in groups:
            rng = np.random.default_rng([seed, len(idx), sum(map(ord, key + a + b))])
            out[name] = bootstrap_diff(
                lambda p, sa, sb: (value(a, p, sa), value(b, p, sb)), n, (len(groups[a]), len(groups[b])), B, rng
            )
    return out


# -----------------------------------------------------------------------------
# curves


def curve_points(curves: dict[str, dict[int, list[dict]]], embeddings: dict[str, dict[int, np.ndarray]]) -> dict:
    """Each curve point with its diversity in one shared space (all curve responses centred on their common mean)."""
    all_emb = np.concatenate([e.reshape(-1, e.shape[-1]) for runs in embeddings.values() for e in runs.values()])
    centre = all_emb.mean(0)
    out: dict[str, dict[int, list[dict]]] = {}
    for arm, runs in curves.items():
        out[arm] = {}
        for s, rows in runs.items():
            pts = []
            for row, emb in zip(rows, embeddings[arm][s]):
                e = emb.astype(np.float64) - centre
                per_prompt = [vendi_score(x) for x in e]
                pts.append({
                    **row,
                    "vendi_within": float(np.mean(per_prompt)),
                    "vendi_within_per_prompt": per_prompt,
                    "vendi_across": vendi_score(e.reshape(-1, e.shape[-1])),
                })  # fmt: skip
            out[arm][s] = pts
    return out


def _at(pts: list[dict], x: str, level: float, key: str) -> np.ndarray:
    """`key` (a scalar, or per prompt for vendi_within) of one run's curve interpolated linearly at x = level."""
    order = sorted(pts, key=lambda p: p[x])
    xs = [p[x] for p in order]
    if key == "vendi_within" and all("vendi_within_per_prompt" in p for p in order):
        ys = np.array([p["vendi_within_per_prompt"] for p in order])  # (points, prompts)
        return np.array([np.interp(level, xs, ys[:, j]) for j in range(ys.shape[1])])
    return np.array([np.interp(level, xs, [p[key] for p in order])])


def matched(points: dict[str, dict[int, list[dict]]], x: str, B: int, seed: int) -> dict[str, Any]:
    """Diversity of each arm at one level of `x` (reward_mean or kl_to_base) that every run's curve reached.

    The level is the middle of the range every run covered after step 0 (at step 0 every run is the base model, so a
    level reached only there compares the base model with itself). Each run's curve is interpolated linearly at the
    level; the arms' means are compared with the seeds resampled and, for vendi_within, the curve prompts resampled
    (paired: every run samples the same curve prompts). None when the ranges do not overlap.
    """
    runs = [(arm, pts) for arm in ARMS if arm in points for pts in points[arm].values()]
    if len(runs) < 2 or not all(len([p for p in pts if p["step"] > 0]) >= 1 and len(pts) >= 2 for _, pts in runs):
        return {"level": None, "note": "needs curve points after step 0 for every run"}
    later = [[p[x] for p in pts if p["step"] > 0] for _, pts in runs]
    ranges = [(min(v), max(v)) for v in later]
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo > hi:
        return {"level": None, "note": f"the runs' {x} ranges after step 0 do not overlap"}
    level = (lo + hi) / 2
    out: dict[str, Any] = {"level": level, "range": [lo, hi], "resampled": "seeds; curve prompts for vendi_within"}
    rng = np.random.default_rng([seed, sum(map(ord, x))])
    for key in ("vendi_within", "vendi_across", "distinct_2_within"):
        at = {arm: np.stack([_at(pts, x, level, key) for pts in points[arm].values()]) for arm in ARMS if arm in points}
        out[key] = {"values": {a: float(v.mean()) for a, v in at.items()}}  # v: (seeds, prompts or 1)
        if len(at) == 2:
            d, u = at["density"], at["uniform"]
            n_p = d.shape[1] if d.shape[1] == u.shape[1] else 1
            boot = np.empty(B)
            for b in range(B):
                p = rng.integers(0, n_p, n_p) if n_p > 1 else slice(None)
                sd, su = rng.integers(0, len(d), len(d)), rng.integers(0, len(u), len(u))
                boot[b] = d[sd][:, p].mean() - u[su][:, p].mean()
            out[key]["density_minus_uniform"] = interval(boot, d.mean() - u.mean())
    out["n_seeds"] = {arm: len(points[arm]) for arm in ARMS if arm in points}
    return out


# -----------------------------------------------------------------------------
# step


def run(input: dict, output: dict, params: dict) -> None:
    """Rule compare: base vs the control and each arm (seeds pooled) per metric and per stratum, with 95% intervals
    and the smallest detectable difference; the collapse curves; the two figures.

    input: evals/embeddings (in the order params.models names them: base, control if any, each arm x seed),
    curves/curve_embeddings (each arm x seed, as params.runs names them). params: models, runs, eval (bootstrap,
    control_temperature), seed.
    """
    from density_grpo.config import EvalConfig
    from density_grpo.io import read_jsonl
    from density_grpo.plots import plot_curves, plot_diversity

    ev_cfg = EvalConfig.from_params(params["eval"])
    evals = [read_json(p) for p in input["evals"]]
    embs = [np.load(p)["embeddings"] for p in input["embeddings"]]
    centre = np.concatenate([e.reshape(-1, e.shape[-1]) for e in embs]).astype(np.float64).mean(0)
    groups: dict[str, list[Run]] = {}
    for (group, _), ev, emb in zip(params["models"], evals, embs):
        for k in range(ev["sets"]):
            name = group if k == 0 else "base_b"
            groups.setdefault(name, []).append(Run(ev["completions"][k], ev["rewards"][k], ev["lengths"][k], emb[k], centre))
    first = evals[0]
    strata = np.array(first["strata"])
    B, seed = ev_cfg.bootstrap, params["seed"]
    metrics = {}
    for key, (label, kind) in METRICS.items():
        row = {"label": label, "kind": kind, **compare_models(groups, key, np.arange(len(strata)), B, seed), "strata": {}}
        for stratum in ("rare", "dense"):
            idx = np.nonzero(strata == stratum)[0]
            if len(idx) >= 2:
                row["strata"][stratum] = compare_models(groups, key, idx, B, seed)
        metrics[key] = row
        log.info("%s: %s", key, {k: round(v, 4) for k, v in row["values"].items()})

    curves: dict[str, dict[int, list[dict]]] = {}
    curve_emb: dict[str, dict[int, np.ndarray]] = {}
    for (arm, s), path, emb_path in zip(params["runs"], input["curves"], input["curve_embeddings"]):
        rows = [{k: v for k, v in r.items() if k != "completions"} for r in read_jsonl(path)]  # texts stay in curves.jsonl
        curves.setdefault(arm, {})[s] = rows
        curve_emb.setdefault(arm, {})[s] = np.load(emb_path)["embeddings"]
    points = curve_points(curves, curve_emb)
    n_resp = sum(len(r.texts) * len(r.texts[0]) for runs in groups.values() for r in runs)
    comparison = {
        "space": f"base model mean-pooled last hidden state, centred on the mean of all {n_resp} responses compared",
        "n_prompts": len(strata),
        "strata": {s: int((strata == s).sum()) for s in ("rare", "dense")},
        "samples": first["samples"],
        "temperature": first["temperature"],
        "control_temperature": ev_cfg.control_temperature,
        "seeds": {arm: [s for a, s in params["runs"] if a == arm] for arm in ARMS},
        "bootstrap": B,
        "detectable_se": DETECTABLE_SE,
        "headline": list(HEADLINE),
        "order": list(METRICS),  # the metrics in reading order (the JSON's keys are sorted)
        "metrics": metrics,
        "curves": points,
        "matched": {"reward": matched(points, "reward_mean", B, seed), "kl": matched(points, "kl_to_base", B, seed)},
    }
    write_json(comparison, output["json"])
    plot_diversity(comparison, output["diversity"])
    plot_curves(comparison, output["curves"])

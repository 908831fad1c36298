"""Stage 8, reports: summary.md, memory.md + memory.json and PNG plots, rendered from the stages' declared summaries.

Reads only its rule's inputs (prompts and weights tables, metadata and metrics JSON, the jobs' memory records and
benchmark TSVs, the model card): never Zarr chunks or model weights, so deleting embeddings and checkpoints does not
stop the reports from being rebuilt. What it computes beyond reading is reference arithmetic from density_grpo.memory.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from density_grpo import memory as M
from density_grpo import plots
from density_grpo.io import atomic_path, read_json, read_jsonl, write_json
from density_grpo.memory import MiB, human_bytes as _h
from density_grpo.monitor import read_bench

# the report's own figures: name -> (file, caption under report/); diversity.png and curves.png are the compare
# stage's (eval/), linked from the summary
PLOTS = {
    "memory_timeline": ("memory_timeline.png", "plots.rst"),
    "memory_predicted_vs_measured": ("memory_predicted_vs_measured.png", "plots.rst"),
    "weights_hist": ("weights_hist.png", "plots.rst"),
    "weights_by_topic": ("weights_by_topic.png", "plots.rst"),
    "weights_vs_tokens": ("weights_vs_tokens.png", "weights_vs_tokens.rst"),
    "grpo_rewards": ("grpo_rewards.png", "plots.rst"),
    "draws_vs_weight": ("draws_vs_weight.png", "plots.rst"),
}
EVAL_FIGURES = ("../eval/diversity.png", "../eval/curves.png")


# -----------------------------------------------------------------------------
# reading the declared inputs


def weights_frame(weights: pd.DataFrame) -> pd.DataFrame:
    """The weights with rel_weight = n x weight (1 = uniform) for the plots."""
    return weights.assign(rel_weight=weights["weight"] * len(weights) / weights["weight"].sum())


def weights_summary(meta: dict) -> dict[str, Any]:
    """What the summary shows of the weights stage's metadata."""
    keys = ("n", "k", "dim", "index", "recall_at_k", "index_bytes", "source", "pooling", "pooling_fallbacks",
            "postprocess", "length_residual", "spearman_weight_tokens", "spearman_weight_turns")  # fmt: skip
    return {**{key: meta.get(key) for key in keys}, **meta["weight_stats"], **(meta.get("topics") or {})}


def machine_of(records: list[dict]) -> dict[str, Any]:
    """The machine(s) the jobs ran on, as their memory records say (not the machine that renders the report)."""
    hosts = sorted({r.get("host") or "?" for r in records})
    ram = [r["total_ram_mb"] for r in records if r.get("total_ram_mb")]
    cpus = [r["cpus"] for r in records if r.get("cpus")]
    return {"hosts": hosts, "ram_mb": min(ram) if ram else float("nan"), "cpus": min(cpus) if cpus else None}


def memory_jobs(records: list[dict], benches: list[dict]) -> list[dict]:
    """One row per job: the stage's prediction beside the monitor's measurement and Snakemake's benchmark."""
    rows = []
    for rec, bench in zip(records, benches):
        rows.append(
            {
                "job": rec["job"],
                "rule": rec["rule"],
                "predicted_mb": rec["predicted_mb"],
                "measured_mb": rec["measured_mb"],
                "measured_what": rec["measured_what"],
                "per_process_mb": rec.get("peak_rss_per_rank_mb"),  # a multi-process job's ranks (older records: none)
                "ratio": rec["measured_over_predicted"],
                "bench_max_rss_mb": bench.get("max_rss"),
                "wall_s": rec["wall_s"],
                "status": rec["status"],
            }
        )
    return sorted(rows, key=lambda j: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", j["job"])])


def _measured_by(job: dict) -> str:
    """What the measured figure is; a multi-process job's cell also lists every process's peak RSS."""
    ranks = job["per_process_mb"]
    return job["measured_what"] + (f" (per process: {', '.join(f'{r:,.0f}' for r in ranks)} MiB)" if ranks else "")


def per_rule(jobs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for j in jobs:
        r = out.setdefault(j["rule"], {"jobs": 0, "pred": [], "meas": [], "bench": [], "ratios": []})
        r["jobs"] += 1
        for key, col in (("pred", "predicted_mb"), ("meas", "measured_mb"), ("bench", "bench_max_rss_mb"), ("ratios", "ratio")):
            if j[col] is not None and not (isinstance(j[col], float) and math.isnan(j[col])):
                r[key].append(j[col])
    return {
        rule: {
            "jobs": r["jobs"],
            "max_predicted_mb": max(r["pred"], default=None),
            "max_measured_mb": max(r["meas"], default=None),
            "max_bench_rss_mb": max(r["bench"], default=None),
            "ratio_range": (f"{min(r['ratios']):.2f}–{max(r['ratios']):.2f}" if r["ratios"] else "n/a"),
        }
        for rule, r in out.items()
    }


def embed_throughput(records: list[dict]) -> float | None:
    """Prompts embedded per second of embedding time (model loading excluded), over all embed jobs."""
    embeds = [r["extra"] for r in records if r["rule"] == "embed_chunk" and r["extra"].get("tokens_per_s")]
    seconds = sum(e["n_tokens"] / e["tokens_per_s"] for e in embeds)
    return sum(e["n_prompts"] for e in embeds) / seconds if seconds else None


# -----------------------------------------------------------------------------
# formatting


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


def _write(path: str, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# -----------------------------------------------------------------------------
# documents


def memory_md(m: dict) -> list[str]:
    mc = m["machine"]
    lines = [
        f"# Memory report: run `{m['run']}`",
        "",
        f"Machine: {mc['ram_mb'] / 1024:.1f} GiB RAM, {_f(mc['cpus'])} CPUs ({', '.join(mc['hosts'])}, as the jobs' memory "
        f"records say); jobs ran on **{m['device']}** in **{m['dtype']}**.",
        f"Model: {m['model']['name']} ({m['model']['params']:,} parameters).",
        "Units: MiB = 2^20 bytes (Snakemake's benchmark `max_rss` is in the same unit). Each job's prediction comes "
        "from its own stage, computed from the batch shapes it ran.",
        "",
        "## Predicted vs measured peak per job",
        "",
    ]
    jobs = m["jobs"]
    embeds = [j for j in jobs if j["rule"] == "embed_chunk"]
    shown = jobs if len(jobs) <= 24 else [j for j in jobs if j["rule"] != "embed_chunk"] + embeds[:8]
    lines.append(
        _table(
            ["job", "predicted MiB", "measured MiB", "bench max_rss MiB", "measured / predicted", "wall", "measured by"],
            [
                [j["job"], _f(j["predicted_mb"], ",.0f"), _f(j["measured_mb"], ",.0f"), _f(j["bench_max_rss_mb"], ",.0f"),
                 _f(j["ratio"], ".2f"), _duration(j["wall_s"]), _measured_by(j)]
                for j in shown
            ],  # fmt: skip
        )
    )
    if len(shown) < len(jobs):
        lines.append(f"\n({len(jobs) - len(shown)} more embed_chunk jobs in memory.json; the per-rule table covers them all.)")
    lines += ["", "Per rule (max over jobs):", ""]
    lines.append(
        _table(
            ["rule", "jobs", "max predicted MiB", "max measured MiB", "measured / predicted (range)"],
            [[r, s["jobs"], _f(s["max_predicted_mb"], ",.0f"), _f(s["max_measured_mb"], ",.0f"), s["ratio_range"]] for r, s in m["per_rule"].items()],
        )
    )
    lines += ["", "### Predicted components (MiB), largest job per rule", ""]
    for rule, p in m["predictions"].items():
        comp = ", ".join(f"{k} {v:,.1f}" for k, v in p["components_mb"].items())
        lines.append(
            f"- **{rule}** ({p['device']}): {comp} → **{p['total_bytes'] / MiB:,.0f} MiB**. `{p['formula']}`; "
            f"{json.dumps(p['assumptions'], default=str)}; if it does not fit: {p['knob']}"
        )
    s0 = m["scaling"][0]
    lines += [
        "",
        f"Baselines (RSS after imports, measured once): {', '.join(f'{k} {v / MiB:.0f} MiB' for k, v in M.BASELINE_BYTES.items())}.",
        "",
        "## Scaling with the number of prompts",
        "",
        f"N = {s0['n']:,} prompts × 1, 10, 100, 1000. Embeddings are fp32; 'vocab logits' is what storing the true "
        f"{m['vocab']:,}-dim mean-pooled logits would take instead of the exact {m['dim']}-dim transform. Embed time: "
        f"serial time at the measured {_f(m['prompts_per_s'], '.2f')} prompts/s.",
        "",
        _table(
            ["N", "chunks", "embeddings (d-dim)", "vocab logits", "flat index", "IVF-flat", "IVF-PQ", "auto picks", "k-NN job peak", "embed time"],
            [
                [f"{r['n']:,}", f"{r['chunks']:,}", _h(r["emb_hidden_bytes"]), _h(r["emb_logits_bytes"]), _h(r["flat_bytes"]),
                 _h(r["ivf_bytes"]), _h(r["ivfpq_bytes"]), r["auto_index"], _h(r["knn_peak_bytes"]), _duration(r["embed_cpu_s"])]
                for r in m["scaling"]
            ],  # fmt: skip
        ),
        "",
        "## Recommendations for this machine",
        "",
        *[f"- {r}" for r in m["recommendations"]],
        "",
        "## Model size × precision",
        "",
        "Weights only (int8/int4 without quantisation scales); full fine-tune = fp32 weights + grads + AdamW m, v "
        "(16 B/param, no activations); KV cache per 1,000 tokens at batch 1 in bf16.",
        "",
        _table(
            ["model", "params", "fp32", "bf16", "int8", "int4", "full fine-tune", "KV / 1k tokens", "config (L, h, I, heads, kv, V, tied)"],
            [
                [r["model"], f"{r['params'] / 1e9:.3f} B", _h(r["fp32"]), _h(r["bf16"]), _h(r["int8"]), _h(r["int4"]),
                 _h(r["finetune_adamw_fp32"]), _h(r["kv_per_1k_tokens_bf16"]), ", ".join(str(v) for v in r["config"].values())]
                for r in m["precision_table"]
            ],  # fmt: skip
        ),
        "",
        "## GRPO logits: naive vs chunked",
        "",
    ]
    lg = m["logits"]
    c, k = lg["configured"], lg["classic"]
    lines += [
        f"- Configured GRPO (B = prompts_per_step × num_generations = {c['batch']}, T = max_completion_length = {c['seq']}, "
        f"V = {c['vocab']:,}): naive fp32 logits B·T·V·4 = {c['naive']:,} B ({_h(c['naive'])}); chunked "
        f"({c['token_chunk']} tokens × V × 4) = {c['chunked']:,} B ({_h(c['chunked'])}).",
        f"- **Intuitor adds how much logits memory over PPO?** At B = {k['batch']}, T = {k['seq']:,}, V = {k['vocab']:,}: "
        f"computing self-certainty from a separate full logits tensor costs {k['batch']} × {k['seq']:,} × {k['vocab']:,} × 4 = "
        f"**{k['naive']:,} bytes ({k['naive'] / 1e9:.1f} GB, {_h(k['naive'])})** on top of PPO's own log-prob logits; computed "
        f"in chunks of {k['token_chunk']} tokens (this project) it adds only {k['token_chunk']} × {k['vocab']:,} × 4 = "
        f"{k['chunked']:,} bytes ({_h(k['chunked'])}), {k['naive'] / k['chunked']:,.0f}× less.",
    ]
    pv = lg["ppo_vs_intuitor"]
    keys = list(dict.fromkeys([*pv["ppo"], *pv["intuitor"]]))
    lines += [
        "",
        f"PPO vs Intuitor for the configured model ({pv['precision']} weights, B = {pv['batch']}, T = {pv['seq']} completion "
        "tokens; activations, equal for both policies, excluded; Intuitor needs its reference only when beta > 0):",
        "",
        _table(
            ["component", "PPO", "Intuitor"],
            [[key, _h(pv["ppo"][key]) if key in pv["ppo"] else "—", _h(pv["intuitor"][key]) if key in pv["intuitor"] else "—"] for key in keys]
            + [
                ["self-certainty logits (naive / chunked)", "—", f"{_h(pv['self_certainty_naive'])} / {_h(pv['self_certainty_chunked'])}"],
                ["**total**", _h(pv["ppo_total"]), f"{_h(pv['intuitor_total_naive'])} naive / {_h(pv['intuitor_total_chunked'])} chunked"],
            ],
        ),
        "",
        "## 28,000 prompts × 50,304-dim logit embeddings",
        "",
    ]
    q = lg["logit_embeddings"]
    lines += [
        f"Storing mean-pooled logits as vectors: {q['n']:,} × {q['vocab']:,} × 4 = **{q['logits_bytes']:,} bytes "
        f"({q['logits_bytes'] / 1e9:.2f} GB, {_h(q['logits_bytes'])})**. This project stores the exact d_model transform "
        f"instead (for a linear head, distances and cosines are identical): {q['n']:,} × {q['dim']} × 4 = {q['dim_bytes']:,} "
        f"bytes ({_h(q['dim_bytes'])}), {q['ratio']:.0f}× smaller. A FAISS flat index over the logits would need the same "
        f"{q['logits_bytes'] / 1e9:.1f} GB again.",
        "",
        "## Plots",
        "",
        f"![memory timeline]({PLOTS['memory_timeline'][0]})",
        "",
        f"![predicted vs measured]({PLOTS['memory_predicted_vs_measured'][0]})",
    ]
    return lines


def _ci(c: dict) -> str:
    return f"{c['diff']:+.3g} [{c['lo']:+.3g}, {c['hi']:+.3g}]"


def verdict(label: str, m: dict) -> str:
    """One sentence: the density - uniform difference, its interval, whether it excludes zero, the smallest
    difference the design could detect, and the noise floor."""
    d = m["density_minus_uniform"]
    if d["excludes_zero"]:
        what = f"the interval excludes zero: density is {'higher' if d['diff'] > 0 else 'lower'} than uniform"
    else:
        what = "the interval includes zero: no evidence of a difference"
    nf = f" Base vs base (noise floor): {_ci(m['noise_floor'])}." if "noise_floor" in m else ""
    return f"- **{label}**: density − uniform = {_ci(d)} (95% CI); {what}; smallest detectable: ±{d['detectable']:.3g}.{nf}"


def check_line(what: str, d: dict, yes: str, no: str) -> str:
    """A difference that must (or may) exclude zero, in one sentence."""
    return f"{what} = {_ci(d)} (95% CI): {yes if d['excludes_zero'] else no}"


def diversity_md(comp: dict) -> list[str]:
    """The experiment's answer: per metric the models' values, the differences with their intervals, the noise
    floor and the smallest detectable difference; per stratum; the collapse check (uniform - base), the positive
    control (control - base) and one sentence per headline metric; the collapse curves at matched reward and KL."""
    metrics = comp["metrics"]
    first = metrics[comp["headline"][0]]
    has_arms, has_control = "density_minus_uniform" in first, "control_minus_base" in first
    seeds = ", ".join(f"{a}: seeds {s}" for a, s in comp["seeds"].items() if s)
    control = f" Positive control: the base model at temperature {comp['control_temperature']}." if has_control else ""
    lines = [
        "## Diversity (held-out prompts)",
        "",
        f"{comp['n_prompts']} held-out prompts never trained on ({comp['strata']['rare']} rare, {comp['strata']['dense']} dense "
        f"by density weight) × {comp['samples']} samples per model at temperature {comp.get('temperature', 'n/a')}; {seeds}."
        f"{control} Embedding space: {comp['space']}. Intervals: 95% bootstrap ({comp['bootstrap']} resamples; prompts "
        "paired across models, seeds resampled); smallest detectable = 2.8 bootstrap standard errors of density − "
        "uniform (a 95% interval excludes zero with 80% power). Higher diversity = less mode collapse.",
        "",
    ]
    names = [n for n in ("base", "control", "density", "uniform") if n in first["values"]]
    cols = [(k, h) for k, h in (("density_minus_uniform", "density − uniform"), ("uniform_minus_base", "uniform − base"),
                                ("control_minus_base", "control − base"), ("noise_floor", "base − base (noise floor)")) if k in first]  # fmt: skip
    rows = []
    for key in comp["order"]:
        m = metrics[key]
        detect = [f"±{m['density_minus_uniform']['detectable']:.3g}"] if has_arms else []
        rows.append([m["label"], *[_f(m["values"][n], ".4g") for n in names], *[_ci(m[k]) for k, _ in cols], *detect])
    header = ["metric", *names, *[f"{h} [95% CI]" for _, h in cols], *(["smallest detectable"] if has_arms else [])]
    lines.append(_table(header, rows))
    if has_arms:
        lines += ["", "Per stratum (density − uniform [95% CI]):", ""]
        strata = [s for s in ("rare", "dense") if s in first["strata"]]
        lines.append(_table(
            ["metric", *[f"{s} ({comp['strata'][s]} prompts)" for s in strata]],
            [[metrics[k]["label"], *[_ci(metrics[k]["strata"][s]["density_minus_uniform"]) for s in strata]] for k in comp["headline"]],
        ))  # fmt: skip
    lines += ["", "Headline:", ""]
    within = [k for k in comp["headline"] if metrics[k]["kind"] == "within" and k != "reward_mean"]
    if "uniform_minus_base" in first:
        for k in within:
            lines.append("- Collapse check, " + check_line(
                f"{metrics[k]['label']}: uniform − base", metrics[k]["uniform_minus_base"],
                "the uniform arm is measurably " + ("less" if metrics[k]["uniform_minus_base"]["diff"] < 0 else "more") + " diverse than the base model",
                "no measurable change from the base model",
            ) + ".")  # fmt: skip
    if has_control:
        for k in within:
            lines.append("- Positive control, " + check_line(
                f"{metrics[k]['label']}: control − base", metrics[k]["control_minus_base"],
                "the design detects an effect of this size",
                "the interval includes zero, so this design is too small to trust on this metric",
            ) + ".")  # fmt: skip
    if has_arms:
        lines += [verdict(metrics[k]["label"], metrics[k]) for k in comp["headline"]]
        for x, what in (("reward", "mean reward"), ("kl", "KL to the base policy")):
            mt = comp["matched"][x]
            if mt["level"] is None:
                lines.append(f"- At matched {what}: not available ({mt['note']}).")
            elif "density_minus_uniform" in mt["vendi_within"]:
                d = mt["vendi_within"]["density_minus_uniform"]
                zero = "excludes zero" if d["excludes_zero"] else "includes zero"
                few = min(mt["n_seeds"].values())
                rough = f"; with {few} seeds per arm this interval is rough" if few < 5 else ""
                lines.append(f"- At matched {what} ({mt['level']:.3g}, on the collapse curves after step 0): Vendi within, "
                             f"density − uniform = {_ci(d)} (curve prompts and seeds resampled); the interval {zero}{rough}.")  # fmt: skip
    lines += ["", f"![diversity]({EVAL_FIGURES[0]}) ![curves]({EVAL_FIGURES[1]})", ""]
    return lines


def length_lines(ws: dict) -> list[str]:
    """The length check of the weights: how much they follow prompt length rather than content."""
    rho_tok, rho_turns = ws["spearman_weight_tokens"], ws["spearman_weight_turns"]
    fallbacks = f", {ws['pooling_fallbacks']} prompts without Human text mean-pooled" if ws["pooling_fallbacks"] else ""
    recipe = (
        f"Recipe: pooling `{ws['pooling']}`{fallbacks}, post-processing `{ws['postprocess']}`, "
        f"length residual `{ws['length_residual']}`."
    )
    if rho_tok is None:
        return [recipe, "Length check: n/a (the embedding chunks carry no per-prompt token counts)."]
    if abs(rho_tok) <= 0.2:
        verdict = "✓"
    else:
        verdict = f"✗ {'longer' if rho_tok > 0 else 'shorter'} prompts get more weight"
        rare = ws.get("spearman_rare_tokens")
        if rare is not None and abs(rare) > 0.2 and (rare > 0) == (rho_tok > 0):
            side = "longer" if rare > 0 else "shorter"
            verdict += f"; here rare-topic prompts are themselves {side} (ρ(rare, tokens) = {rare:+.2f}), so part of it is signal"
        verdict += "; see README, \"Density recipes\""
    return [
        recipe,
        f"Length check: Spearman(weight, prompt tokens) = **{rho_tok:+.2f}**, Spearman(weight, Human turns) = "
        f"{_f(rho_turns, '+.2f')} (|ρ| ≤ 0.2: {verdict}).",
    ]


def summary_md(run: str, d: dict, ws: dict, mem: dict) -> list[str]:
    ps = d["prompts_summary"]
    topics = ps["topics"]
    groups = f", {len(topics['dense'])} dense and {topics['n_rare']} rare topics" if topics else ""
    lines = [f"# density-grpo run `{run}`", "", "## Data", ""]
    lines += [f"{ps['n_pairs']:,} preference pairs, {ps['n_prompts']:,} unique prompts ({ps['n_multi_turn']:,} multi-turn){groups}.", ""]
    if ps.get("subsets"):  # absent in prompts.json files written before the per-subset counts
        per = "; ".join(f"`{k}` {v['pairs']:,} pairs, {v['prompts']:,} prompts" for k, v in ps["subsets"].items())
        lines += [f"Per subset: {per}.", ""]
    lines += ["## Density weights", ""]
    recall = f", recall@k {ws['recall_at_k']:.3f}" if ws.get("recall_at_k") is not None else ""
    lines.append(
        f"{_f(ws['n'], ',')} prompts, {ws['dim']}-dim {ws['source']} embeddings, k = {ws['k']}, index {ws['index']}{recall}, "
        f"index {_h(ws['index_bytes'])}."
    )
    lines.append(f"Weights: max/min {_f(ws['max_min_ratio'], '.2f')}, ESS/n {_f(ws['ess_fraction'], '.2f')}, entropy/log n {_f(ws['entropy_ratio'], '.3f')}.")
    if "rare_dense_ratio" in ws:
        verdict = "rare prompts get more weight ✓" if ws["rare_dense_ratio"] > 1 else "rare prompts do NOT get more weight ✗"
        lines.append(
            f"Mean weight of rare-topic prompts / dense-topic prompts = **{ws['rare_dense_ratio']:.2f}** ({ws['n_rare']} prompts "
            f"in {ws['n_rare_topics']} rare topics vs {ws['n_dense']} dense): {verdict}."
        )
    lines += length_lines(ws)
    figures = [f"![{name}]({PLOTS[name][0]})" for name in ("weights_hist", "weights_by_topic", "weights_vs_tokens")]
    lines += ["", " ".join(figures)]
    lines += ["", "## Reward model", ""]
    rm = d["rm"]
    lines.append(
        f"Held-out accuracy **{_f(rm['eval_accuracy'], '.3f')}** on {_f(rm['n_eval'])} pairs ({rm['n_eval_dropped_overlap']} held-out "
        f"pairs dropped because a response also occurs in training; longer-response baseline "
        f"{_f(rm['eval_accuracy_longer_baseline'], '.3f')}), mean margin {_f(rm['eval_margin_mean'], '.3f')}; train loss "
        f"{_f(rm['train_loss_first'], '.3f')} → {_f(rm['train_loss_last'], '.3f')} over {_f(rm['steps'])} steps ({_duration(rm['wall_time_s'])})."
    )
    lines += ["", "## GRPO", ""]
    rows = []
    for label, g in d["grpo_summary"].items():
        rows.append([
            label, g["steps"], _f(g["first_reward"], ".3f"), _f(g["final_reward"], ".3f"), _f(g["mean_reward"], ".3f"),
            f"{g['unique_prompts_drawn']} / {g['n_prompts']}", _f(g["step_s_mean"], ".1f"),
        ])  # fmt: skip
    lines.append(_table(["run", "steps", "first reward", "final reward", "mean reward", "prompts drawn", "s / step"], rows))
    lines += ["", f"![rewards]({PLOTS['grpo_rewards'][0]}) ![draws]({PLOTS['draws_vs_weight'][0]})", ""]
    lines += diversity_md(d["comparison"])
    lines += ["## Memory", "", mem["headline"], "", "## Files", ""]
    lines += [f"- [{name}]({name})" for name in ("memory.md", "memory.json", *(png for png, _ in PLOTS.values()), *EVAL_FIGURES)]
    return lines


def memory_report(d: dict, params: dict) -> dict:
    """Everything memory.md and memory.json show: the jobs' records as tables, plus the reference arithmetic."""
    card, meta = d["model"], d["meta"]
    jobs = memory_jobs(d["memory"], d["bench"])
    rules = per_rule(jobs)
    predictions = {}
    for rec in d["memory"]:  # each rule's largest prediction
        p = rec["prediction"]
        if p is not None and (rec["rule"] not in predictions or p["total_bytes"] > predictions[rec["rule"]]["total_bytes"]):
            predictions[rec["rule"]] = p
    pps = embed_throughput(d["memory"])
    e, knn, g = params["embed"], params["knn"], params["grpo"]
    scaling = M.scaling_table(meta["n"], meta["dim"], card["dims"]["V"], e["chunk_size"], knn, pps)
    machine = machine_of(d["memory"])
    measured = [j for j in jobs if j["measured_mb"] is not None]
    top = max(measured, key=lambda j: j["measured_mb"])
    ratios = [j["ratio"] for j in jobs if j["ratio"] is not None]
    headline = (
        f"Largest measured peak: **{top['measured_mb']:,.0f} MiB** ({top['job']}), {top['measured_mb'] / machine['ram_mb']:.0%} of "
        f"the {machine['ram_mb'] / 1024:.1f} GiB RAM of the machine it ran on; measured / predicted across {len(ratios)} jobs: "
        + (f"{min(ratios):.2f}–{max(ratios):.2f}." if ratios else "n/a.")
        + " Details: [memory.md](memory.md)."
    )
    return {
        "run": params["run"],
        "machine": machine,
        "device": params["device"],
        "dtype": params["dtype"],
        "model": {"name": card["name"], "params": card["params"], "dims": card["dims"]},
        "n_prompts": meta["n"],
        "dim": meta["dim"],
        "vocab": card["dims"]["V"],
        "jobs": jobs,
        "per_rule": rules,
        "predictions": predictions,
        "prompts_per_s": pps,
        "scaling": scaling,
        "recommendations": M.recommendations(
            card["config"], meta["dim"], scaling, pps, params, machine["ram_mb"] * MiB
        ),
        "precision_table": M.precision_table(card["config"], card["name"]),
        "logits": M.logits_questions(
            card["config"], g["prompts_per_step"] * g["num_generations"], g["max_completion_length"], g["token_chunk"],
            M.precision_key(params["dtype"]),
        ),  # fmt: skip
        "headline": headline,
    }


def run(input: dict, output: dict, params: dict) -> None:
    """Rule build_reports: summary.md, memory.md, memory.json and the PNG plots from the declared inputs.

    params: run (title), runs (labels "arm/seedN" of the grpo/draws inputs, in order), device, dtype, warn_fraction and the
    config the reference tables need (embed.chunk_size/batch_tokens, the knn section, the GRPO batch shape).
    """
    runs = params["runs"]
    embed = read_json(input["embed_records"])  # the embed chunks' records, collected by rule embed_records
    d = {
        "prompts_summary": read_json(input["prompts_summary"]),
        "model": read_json(input["model"]),
        "meta": read_json(input["meta"]),
        "rm": read_json(input["rm"]),
        "grpo": dict(zip(runs, map(read_jsonl, input["grpo"]))),
        "grpo_summary": dict(zip(runs, map(read_json, input["grpo_summary"]))),
        "draws": dict(zip(runs, map(pd.read_parquet, input["draws"]))),
        "comparison": read_json(input["comparison"]),
        "memory": [read_json(p) for p in input["memory"]] + embed["records"],
        "bench": [read_bench(p) for p in input["bench"]] + embed["bench"],
    }
    w = weights_frame(pd.read_parquet(input["weights"]))
    mem = memory_report(d, params)
    out = output
    plots.plot_memory_timeline(d["memory"], out["memory_timeline"])
    plots.plot_predicted_vs_measured(mem["per_rule"], out["memory_predicted_vs_measured"])
    plots.plot_weights_hist(w, out["weights_hist"])
    plots.plot_weights_by_topic(w, out["weights_by_topic"])
    plots.plot_weights_vs_tokens(w, d["meta"], out["weights_vs_tokens"])
    plots.plot_grpo_rewards(d["grpo"], out["grpo_rewards"])
    plots.plot_draws_vs_weight(d["draws"], w, out["draws_vs_weight"])
    write_json(mem, out["memory_json"])
    _write(out["memory_md"], memory_md(mem))
    _write(out["summary"], summary_md(params["run"], d, weights_summary(d["meta"]), mem))

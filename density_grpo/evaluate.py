"""Diversity evaluation: sample completions on held-out prompts and measure how varied they are.

Lexical diversity: distinct-n (unique / total whitespace n-grams). Semantic diversity: mean pairwise cosine distance
and the Vendi score of response embeddings. Every policy's responses are embedded with the BASE model (mean-pooled
last hidden state), so all policies are compared in one space.

"within" = among the samples of one prompt, averaged over prompts (does a prompt get varied answers?);
"across" = all responses of all prompts pooled (does the policy say the same thing to every prompt?).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from density_grpo.data import HUMAN_TAG

log = logging.getLogger(__name__)

# (metric, label, higher means more diverse); the order of tables and plots
METRICS = [
    ("distinct_1_within", "distinct-1 within prompt", True),
    ("distinct_2_within", "distinct-2 within prompt", True),
    ("cosine_distance_within", "cosine distance within prompt", True),
    ("vendi_within", "Vendi score within prompt", True),
    ("distinct_1_across", "distinct-1 across prompts", True),
    ("distinct_2_across", "distinct-2 across prompts", True),
    ("cosine_distance_across", "cosine distance across prompts", True),
    ("vendi_across", "Vendi score across prompts", True),
    ("reward_mean", "mean RM reward", None),
    ("reward_std", "RM reward std", None),
    ("length_tokens", "mean length (tokens)", None),
    ("length_words", "mean length (words)", None),
]
MODEL_COLORS = {"base": "#8c8c8c", "density": "#1f77b4", "uniform": "#ff7f0e"}


# -----------------------------------------------------------------------------
# metrics


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / total n-grams over whitespace tokens (n-grams never span two texts); 0 when there are none."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pairwise_cosine_distance(emb: np.ndarray) -> float:
    """Mean of 1 - cos(e_i, e_j) over i < j; 0 for fewer than two rows."""
    n = len(emb)
    if n < 2:
        return 0.0
    sim = _unit_rows(emb) @ _unit_rows(emb).T
    return float(np.mean(1.0 - sim[np.triu_indices(n, k=1)]))


def vendi_score(emb: np.ndarray) -> float:
    """exp(Shannon entropy of the eigenvalues of K/n), K the cosine-similarity kernel: 1 (all alike) .. n (orthogonal)."""
    n = len(emb)
    if n == 0:
        return 0.0
    x = _unit_rows(emb)
    lam = np.clip(np.linalg.eigvalsh(x @ x.T / n), 0.0, None)
    lam = lam[lam > 1e-12] / lam.sum()
    return float(np.exp(-np.sum(lam * np.log(lam))))


# -----------------------------------------------------------------------------
# sampling


def cut_at(text: str, stop: str) -> str:
    """Text before `stop`; also drops a trailing partial `stop` (>= 4 chars) left by the token limit."""
    text = text.split(stop)[0]
    for k in range(len(stop) - 1, 3, -1):
        if text.endswith(stop[:k]):
            return text[:-k]
    return text


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 8,
    stop: str | None = HUMAN_TAG,
) -> list[list[str]]:
    """`samples` completions per prompt -> out[prompt][sample], reproducible for a given seed and batch_size.

    Pure temperature sampling (top_k=0, top_p=1, as TRL's GRPO samples), left padding, stopping at EOS. Each
    completion is cut at `stop` (the model starting the next "Human:" turn itself); temperature 0 is greedy.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    sampling = (
        dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    )
    out: list[list[str]] = []
    try:
        # fork_rng: seeding here must not disturb the caller's random stream
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
                seqs = model.generate(
                    **enc,
                    **sampling,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=samples,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                texts = tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                if stop:
                    texts = [cut_at(t, stop) for t in texts]
                out += [texts[i : i + samples] for i in range(0, len(texts), samples)]  # rows grouped by prompt
    finally:
        tokenizer.padding_side = side
    return out


# -----------------------------------------------------------------------------
# evaluation


def diversity_metrics(completions: list[list[str]], emb: np.ndarray) -> dict[str, float]:
    """Lexical and embedding diversity of completions[prompt][sample] with emb (prompts, samples, dim)."""
    pooled = [c for cs in completions for c in cs]
    return {
        "distinct_1_within": float(np.mean([distinct_n(cs, 1) for cs in completions])),
        "distinct_2_within": float(np.mean([distinct_n(cs, 2) for cs in completions])),
        "distinct_1_across": distinct_n(pooled, 1),
        "distinct_2_across": distinct_n(pooled, 2),
        "cosine_distance_within": float(np.mean([pairwise_cosine_distance(e) for e in emb])),
        "cosine_distance_across": pairwise_cosine_distance(emb.reshape(-1, emb.shape[-1])),
        "vendi_within": float(np.mean([vendi_score(e) for e in emb])),
        "vendi_across": vendi_score(emb.reshape(-1, emb.shape[-1])),
    }


def evaluate_policy(
    policy_dir: str, base_dir: str, prompts: list[str], cfg: dict, rm_dir: str | None, name: str
) -> dict:
    """Sample `eval.samples` completions per held-out prompt and measure diversity, reward and length."""
    from density_grpo.device import resolve
    from density_grpo.embed import Embedder
    from density_grpo.models import load_causal_lm
    from density_grpo.reward import load_reward_model, score

    e = cfg["eval"]
    device, dtype = resolve(cfg)
    prompts = list(prompts)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    policy, tok = load_causal_lm(policy_dir, dtype=dtype, device=device)
    # ~64 sequences per generate call: fewer decode loops, which dominate on CPU
    batch = max(1, 64 // e["samples"])
    completions = generate(
        policy, tok, prompts, e["samples"], e["max_new_tokens"], e["temperature"], cfg["seed"], batch_size=batch
    )
    flat = [c for cs in completions for c in cs]
    n_tokens = [len(ids) for ids in tok(flat, add_special_tokens=False)["input_ids"]]
    timings["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if str(base_dir) != str(policy_dir):
        del policy
        base, base_tok = load_causal_lm(base_dir, dtype=dtype, device=device)
    else:
        base, base_tok = policy, tok
    emb_cfg = cfg.get("embed", {})
    embedder = Embedder(
        base,
        base_tok,
        source="hidden",
        layer=-1,
        max_length=emb_cfg.get("max_length", 512),
        batch_tokens=emb_cfg.get("batch_tokens", 8192),
    )
    emb = embedder.embed(flat, progress=False).reshape(len(prompts), e["samples"], -1)
    del base, embedder
    timings["embed_s"] = time.perf_counter() - t

    metrics = diversity_metrics(completions, emb)
    metrics["length_tokens"] = float(np.mean(n_tokens))
    metrics["length_words"] = float(np.mean([len(c.split()) for c in flat]))
    metrics["reward_mean"] = metrics["reward_std"] = None
    if rm_dir is not None:
        t = time.perf_counter()
        rm, rm_tok = load_reward_model(rm_dir, device=device, dtype=dtype)
        rm_cfg = cfg.get("rm", {})
        rewards = score(
            rm,
            rm_tok,
            [p for p in prompts for _ in range(e["samples"])],
            flat,
            rm_cfg.get("max_length", 512),
            rm_cfg.get("batch_size", 8),
        )
        metrics["reward_mean"], metrics["reward_std"] = float(rewards.mean()), float(rewards.std())
        timings["reward_s"] = time.perf_counter() - t

    log.info(
        "%s: distinct-2 within %.3f across %.3f, Vendi within %.2f across %.2f, reward %s",
        name,
        metrics["distinct_2_within"],
        metrics["distinct_2_across"],
        metrics["vendi_within"],
        metrics["vendi_across"],
        metrics["reward_mean"],
    )
    return {
        "model": name,
        "policy_dir": str(policy_dir),
        "n_prompts": len(prompts),
        "samples": e["samples"],
        "max_new_tokens": e["max_new_tokens"],
        "temperature": e["temperature"],
        "seed": cfg["seed"],
        "embedding": "base model, mean-pooled last hidden state; across = all responses pooled",
        "metrics": metrics,
        "examples": [{"prompt": p, "completions": cs[:2]} for p, cs in zip(prompts[:3], completions[:3])],
        "time_s": timings,
    }


def compare(results: dict[str, dict]) -> dict:
    """Models side by side: per metric, each model's value and density - uniform (when both are present)."""
    names = list(results)
    table: dict[str, dict[str, Any]] = {}
    for key, label, higher_is_diverse in METRICS:
        row: dict[str, Any] = {name: results[name]["metrics"].get(key) for name in names}
        d, u = row.get("density"), row.get("uniform")
        row["density_minus_uniform"] = d - u if d is not None and u is not None else None
        table[key] = row
    first = results[names[0]] if names else {}
    return {
        "models": names,
        "n_prompts": first.get("n_prompts"),
        "samples": first.get("samples"),
        "metrics": table,
        "labels": {key: label for key, label, _ in METRICS},
    }


def plot_comparison(comparison: dict, path: str) -> None:
    """One PNG: a bar chart per key metric (diversity within and across prompts, reward, length), bars per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from density_grpo.io import atomic_path

    keys = [k for k, _, _ in METRICS if k not in ("reward_std", "length_words")]
    names = comparison["models"]
    colors = [MODEL_COLORS.get(n, f"C{i + 2}") for i, n in enumerate(names)]
    ncols = 5
    fig, axes = plt.subplots(2, ncols, figsize=(3.2 * ncols, 6.6))
    layout = keys[:4] + ["reward_mean"] + keys[4:8] + ["length_tokens"]
    for ax, key in zip(axes.flat, layout):
        row = comparison["metrics"][key]
        values = [row.get(n) for n in names]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(names, heights, color=colors)
        for bar, v in zip(bars, values):
            text = "n/a" if v is None else f"{v:.3g}"
            below = v is not None and v < 0  # label under a negative bar
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="top" if below else "bottom",
                fontsize=9,
                xytext=(0, -2 if below else 2),
                textcoords="offset points",
            )
        diff = row.get("density_minus_uniform")
        title = comparison["labels"][key]
        ax.set_title(title if diff is None else f"{title}\ndensity − uniform = {diff:+.3g}", fontsize=10)
        ax.margins(y=0.15)
        ax.tick_params(axis="x", labelsize=9)
        if any(v is not None and v < 0 for v in values):
            ax.axhline(0, color="black", linewidth=0.8)
    fig.suptitle(
        f"Completion diversity on {comparison.get('n_prompts')} held-out prompts × {comparison.get('samples')} samples "
        "(diversity: higher = less mode collapse)",
        fontsize=12,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

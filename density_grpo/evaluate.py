"""Stage 7a, evaluation: sample completions of one model on the evaluated held-out prompts, score and embed them.

The evaluated prompts are drawn from the held-out pool (never trained on) stratified by density weight (pairs.py:
holdout_split, stratified_eval). Every model's responses are embedded with the BASE model (mean-pooled last hidden
state), so all models can be compared in one space; the diversity metrics, their centring and the intervals are
computed by the comparison (compare.py). The base model is evaluated with two independent sample sets: their
difference is the noise floor.

Metrics: lexical diversity distinct-n (unique / total whitespace n-grams); semantic diversity, the mean pairwise
cosine distance and the Vendi score of response embeddings; "within" = among the samples of one prompt, averaged
over prompts; "across" = all responses of all prompts pooled.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from density_grpo import memory
from density_grpo.io import write_json
from density_grpo.pairs import HUMAN_TAG

log = logging.getLogger(__name__)

GENERATE_SEQUENCES = 64  # sequences per generate() call: fewer decode loops, which dominate on CPU
EMBED_BATCH_TOKENS = 4096  # responses are embedded in token-budget batches of this size


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
    """exp(Shannon entropy of the eigenvalues of K/n), K the cosine-similarity kernel: 1 (all alike) .. n (orthogonal).

    K/n = X X^T / n has the nonzero eigenvalues of X^T X / n, whichever of n and dim is smaller is decomposed.
    """
    n = len(emb)
    if n == 0:
        return 0.0
    x = _unit_rows(emb)
    lam = np.clip(np.linalg.eigvalsh((x @ x.T if n <= x.shape[1] else x.T @ x) / n), 0.0, None)
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


def generation_batch(samples: int) -> int:
    """Prompts per generate() call (each with `samples` completions)."""
    return max(1, GENERATE_SEQUENCES // samples)


def predict(model_cfg: dict, params: dict, prompt_tokens: int, device: str) -> dict:
    """Peak memory of evaluating one model: one model's weights at a time (policy, base, RM loaded in turn) plus the
    largest of the generation KV cache and logits, the response embedding batch and the RM scoring batch."""
    e = params["eval"]
    prec = memory.precision_key(params["dtype"])
    B = generation_batch(e["samples"]) * e["samples"]
    S = prompt_tokens + e["max_new_tokens"]
    c = {
        **memory.baseline("torch", device),
        "weights": memory.weights_bytes(memory.param_count(model_cfg), prec),
        "max(generation KV cache + logits, embedding, RM scoring)": max(
            memory.kv_cache_bytes(model_cfg, B, S, prec) + B * memory.dims(model_cfg)["V"] * 4,
            memory.inference_activation_bytes(model_cfg, max(1, EMBED_BATCH_TOKENS // e["max_new_tokens"]), e["max_new_tokens"], prec),
            memory.inference_activation_bytes(model_cfg, params["rm"]["batch_size"], S, prec),
        ),
    }
    return memory.prediction(
        device, c, "baseline + one model's weights + max(KV cache + logits, embedding, RM activations)",
        "eval.samples (or model.dtype)", generation_batch=B, seq=S,
    )  # fmt: skip


def evaluate_policy(policy_dir: str, base_dir: str, prompts: list[str], params: dict, rm_dir: str, sets: int = 1) -> dict:
    """`sets` independent sets of `eval.samples` completions per prompt: texts, RM rewards, token lengths and
    base-model embeddings (array `embeddings`: sets x prompts x samples x dim).

    params: eval (samples, max_new_tokens, temperature), rm (max_length, batch_size: scoring), seed (set k samples
    with seed + k: every model sees the same sampling seeds), device, dtype.
    """
    from density_grpo.device import torch_device, torch_dtype
    from density_grpo.embed import Embedder
    from density_grpo.models import load_causal_lm
    from density_grpo.monitor import expect
    from density_grpo.reward import load_reward_model, score

    e, rm_cfg = params["eval"], params["rm"]
    device = torch_device(params["device"])
    dtype = torch_dtype(params["dtype"], device)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    policy, tok = load_causal_lm(policy_dir, dtype=dtype, device=device)
    longest = max(len(x) for x in tok(prompts)["input_ids"])
    expect(predict(memory.model_config(policy_dir), params, longest, params["device"]))
    completions = [
        generate(policy, tok, prompts, e["samples"], e["max_new_tokens"], e["temperature"], params["seed"] + k, generation_batch(e["samples"]))
        for k in range(sets)
    ]  # fmt: skip
    flat = [c for cs in completions for c_p in cs for c in c_p]
    n_tokens = np.array([len(ids) for ids in tok(flat, add_special_tokens=False)["input_ids"]])
    timings["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if str(base_dir) != str(policy_dir):
        del policy
        base, base_tok = load_causal_lm(base_dir, dtype=dtype, device=device)
    else:
        base, base_tok = policy, tok
    # responses are at most max_new_tokens long; re-tokenized text may differ a little, hence the margin
    embedder = Embedder(base, base_tok, source="hidden", layer=-1, max_length=4 * e["max_new_tokens"], batch_tokens=EMBED_BATCH_TOKENS)
    shape = (sets, len(prompts), e["samples"])
    emb = embedder.embed(flat, progress=False).reshape(*shape, -1)
    del base, embedder
    timings["embed_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rm, rm_tok = load_reward_model(rm_dir, device=device, dtype=dtype)
    per_sample = [p for _ in range(sets) for p in prompts for _ in range(e["samples"])]
    rewards = score(rm, rm_tok, per_sample, flat, rm_cfg["max_length"], rm_cfg["batch_size"]).reshape(shape)
    timings["reward_s"] = time.perf_counter() - t
    log.info("%d sets x %d prompts x %d samples: mean reward %.3f, mean length %.1f tokens", *shape, rewards.mean(), n_tokens.mean())
    return {
        "completions": completions,
        "rewards": rewards.tolist(),
        "lengths": n_tokens.reshape(shape).tolist(),
        "embeddings": emb.astype(np.float32),
        "time_s": timings,
    }


def run(input: dict, output: dict, params: dict) -> None:
    """Rule evaluate_model: one model on the evaluated prompts -> eval JSON (texts, rewards, lengths) + embeddings NPZ.

    params: name, sets (2 for the base model: the noise floor), seed, device, dtype, eval (pool, prompts,
    rare_fraction, rare_quantile, samples, max_new_tokens, temperature), rm (max_length, batch_size).
    """
    import pandas as pd

    from density_grpo.io import atomic_path
    from density_grpo.pairs import holdout_split, stratified_eval

    e = params["eval"]
    _, pool = holdout_split(pd.read_parquet(input["prompts"]), e["pool"], params["seed"])
    weights = pd.read_parquet(input["weights"]).set_index("prompt_id")["weight"]
    chosen = stratified_eval(pool, weights, e["prompts"], e["rare_fraction"], e["rare_quantile"], params["seed"])
    result = evaluate_policy(input["policy"], input["base"], chosen["text"].tolist(), params, input["rm"], params["sets"])
    with atomic_path(output["embeddings"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=result.pop("embeddings"))
    write_json(
        {
            "model": params["name"],
            "prompt_ids": chosen["prompt_id"].tolist(),
            "prompts": chosen["text"].tolist(),
            "strata": chosen["stratum"].tolist(),
            "samples": e["samples"],
            "sets": params["sets"],
            "max_new_tokens": e["max_new_tokens"],
            "temperature": e["temperature"],
            "seed": params["seed"],
            "embedding": "base model, mean-pooled last hidden state",
            **result,
        },
        output["eval"],
    )

"""Memory: the one place that predicts (analytic model) and measures (sampling monitor) how much a job needs.

Units: bytes everywhere in the API; reports and monitor files use MiB (2^20 bytes, what Snakemake's benchmark
`max_rss` calls MB). Torch is imported only on CUDA paths, so predicting and reporting stay cheap.

Analytic model (Llama-like decoder: GQA attention, SwiGLU MLP, RMSNorm):
- parameters: exact (see `param_count`);
- weights: params x bytes of the precision (int8/int4 without quantisation scales);
- training: weights + grads (same dtype) + AdamW m and v (2 x fp32) + stored activations + LM-head logits;
- stored activations per token per layer: 8·h + 2·kv + 4·I elements (h: hidden, kv: k/v width, I: MLP width):
  two RMSNorm inputs and outputs, q/k before and after RoPE, attention output, o_proj input, MLP gate, up,
  SiLU(gate) and the product. Measured on SmolLM2-135M (CPU, fp32, SDPA): ~10.5k elements vs 11.1k predicted.
  Gradient checkpointing keeps one h-vector per token per layer plus one layer's full set (recomputed);
- inference activations: one layer at a time, peak ~ tokens x (8·h + 6·I) elements (calibrated on SmolLM2 CPU
  fp32 at 8192 tokens, includes allocator slack) + attention probabilities tokens x heads x T (math SDPA with a
  padding mask materialises them);
- process baselines: RSS of a bare process after its imports, measured once (BASELINE_BYTES).
Predictions are estimates (typically within +-40% on CPU): the report sets them beside measured peaks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import psutil

from density_grpo.io import atomic_path, write_json

log = logging.getLogger(__name__)

MiB = 2**20
PRECISION_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}

# RSS (MiB) of a bare process after its imports; measured on Linux x86-64, Python 3.12, torch 2.13 CPU,
# transformers 5.23, trl 1.16, faiss-cpu 1.15 (`python -c "import ...; print(psutil.Process().memory_info().rss)"`)
BASELINE_BYTES = {
    "python": 105 * MiB,  # numpy + pandas
    "faiss": 130 * MiB,  # numpy, pandas, faiss, zarr (density_grpo.density)
    "torch": 330 * MiB,  # torch, transformers, AutoModelForCausalLM/AutoTokenizer, density_grpo.embed
    "trl": 435 * MiB,  # torch, transformers, datasets, trl GRPOTrainer/RewardTrainer
}
CUDA_CONTEXT_BYTES = 500 * MiB  # host RSS of an initialised CUDA context (varies by driver; not measured here)
FAISS_BLAS_BLOCK_BYTES = 4096 * 1024 * 4  # IndexFlat search: query block x database block of float32 scores
PQ_NBITS = 8  # bits per PQ sub-quantizer code (density.knn_search builds IVF-PQ with this)

# SmolLM2-135M(-Instruct): the default model (its config.json)
SMOLLM2_135M = {
    "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True, "dtype": "float32",
}  # fmt: skip
# Llama-like reference configs (public config.json values); param_count gives 1.24B, 3.21B, 6.74B, 13.0B, 69.0B
REFERENCE_MODELS = {
    "Llama-3.2-1B": {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "Llama-3.2-3B": {"num_hidden_layers": 28, "hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "Llama-2-7B": {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False},
    "Llama-2-13B": {"num_hidden_layers": 40, "hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000, "tie_word_embeddings": False},
    "Llama-2-70B": {"num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False},
}  # fmt: skip

# the config knob to turn when a rule's predicted peak does not fit
KNOBS = {
    "embed_chunk": "embed.batch_tokens (or model.dtype: bfloat16/float16)",
    "knn_weights": "knn.index (ivf/ivfpq) or knn.max_index_gb",
    "model": "model.name_or_path (a smaller model)",
    "reward_model": "rm.batch_size / rm.max_length (or rm.gradient_checkpointing: true)",
    "grpo": "grpo.prompts_per_step (or grpo.num_generations, grpo.max_completion_length, model.dtype, grpo.gradient_checkpointing)",
    "evaluate_model": "eval.samples (or model.dtype)",
}


# -----------------------------------------------------------------------------
# analytic model


def precision_key(precision: str) -> str:
    """'float32'/'fp32' -> 'fp32', etc.; ValueError for an unknown precision."""
    p = _ALIASES.get(str(precision).removeprefix("torch."), str(precision).removeprefix("torch."))
    if p not in PRECISION_BYTES:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISION_BYTES)})")
    return p


def _dims(cfg: Mapping) -> dict[str, int]:
    """Layers, hidden, intermediate, heads, kv heads, head_dim, vocab from an HF config dict (text part)."""
    cfg = cfg.get("text_config") or cfg
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    return {
        "L": int(cfg["num_hidden_layers"]),
        "h": hidden,
        "I": int(cfg["intermediate_size"]),
        "heads": heads,
        "kv_heads": int(cfg.get("num_key_value_heads") or heads),
        "hd": int(cfg.get("head_dim") or hidden // heads),
        "V": int(cfg["vocab_size"]),
    }


def param_count(model_cfg: Mapping) -> int:
    """Exact parameter count of a Llama-like decoder (tied embeddings counted once).

    embeddings V·h; per layer: q h·(heads·hd), k and v h·(kv·hd) each, o (heads·hd)·h, MLP gate/up/down 3·h·I,
    two RMSNorm weights 2·h (plus biases when attention_bias / mlp_bias); final norm h; untied head V·h.
    """
    d = _dims(model_cfg)
    cfg = model_cfg.get("text_config") or model_cfg
    h, q, kv = d["h"], d["heads"] * d["hd"], d["kv_heads"] * d["hd"]
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv + h) if cfg.get("attention_bias") else 0)
    mlp = 3 * h * d["I"] + ((2 * d["I"] + h) if cfg.get("mlp_bias") else 0)
    layer = attn + mlp + 2 * h
    head = 0 if cfg.get("tie_word_embeddings", True) else d["V"] * h
    return d["V"] * h + d["L"] * layer + h + head


def weights_bytes(n_params: int, precision: str = "fp32") -> int:
    """Bytes of the weights alone (int8/int4: no quantisation scales, e.g. GGUF Q4_1 adds ~1 bit per weight)."""
    return math.ceil(n_params * PRECISION_BYTES[precision_key(precision)])


def kv_cache_bytes(model_cfg: Mapping, batch: int, seq: int, precision: str = "fp32") -> int:
    """K and V of every layer for `batch` sequences of `seq` tokens: 2·L·B·T·kv_heads·head_dim·bytes."""
    d = _dims(model_cfg)
    return math.ceil(2 * d["L"] * batch * seq * d["kv_heads"] * d["hd"] * PRECISION_BYTES[precision_key(precision)])


def activation_bytes(model_cfg: Mapping, batch: int, seq: int, precision: str = "fp32", gradient_checkpointing: bool = False) -> int:
    """Activations stored for backward: per token per layer 8·h + 2·kv + 4·I elements (see module docstring).

    With checkpointing: one h-vector per token per layer, plus one layer's full set while it is recomputed.
    Attention probabilities of one layer (B·heads·T²) are added as a transient (SDPA does not store them).
    """
    d = _dims(model_cfg)
    b = PRECISION_BYTES[precision_key(precision)]
    tokens = batch * seq
    per_layer = tokens * (8 * d["h"] + 2 * d["kv_heads"] * d["hd"] + 4 * d["I"]) * b
    probs = batch * d["heads"] * seq * seq * b
    if gradient_checkpointing:
        return math.ceil(d["L"] * tokens * d["h"] * b + per_layer + probs)
    return math.ceil(d["L"] * per_layer + probs)


def inference_activation_bytes(model_cfg: Mapping, batch: int, seq: int, precision: str = "fp32") -> int:
    """Peak live activations of a no-grad forward: tokens·(8·h + 6·I) + attention probs B·heads·T², in bytes."""
    d = _dims(model_cfg)
    b = PRECISION_BYTES[precision_key(precision)]
    return math.ceil(batch * seq * (8 * d["h"] + 6 * d["I"]) * b + batch * d["heads"] * seq * seq * b)


def training_components(
    model_cfg: Mapping,
    batch: int,
    seq: int,
    precision: str = "fp32",
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    logit_positions: int | None = None,
    activation_precision: str | None = None,
    train_layers: int | None = None,
) -> dict[str, int]:
    """Bytes of one training step, by component: weights, grads, optimizer, activations, logits.

    optimizer: adamw (m and v in fp32: 8 bytes/param) or sgd (none). logit_positions: positions per sequence
    with LM-head logits (None: all `seq`; 0: a scalar head, e.g. a reward model); logits are fp32 and counted
    twice (the logits and their gradient / log-softmax). activation_precision: e.g. bf16 under autocast.
    train_layers: only the top N blocks train (rm.train_layers): grads and AdamW states cover their parameters
    only, and the frozen blocks below run without autograd, so only the top N store activations.
    """
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    n = param_count(model_cfg)
    d = _dims(model_cfg)
    frac = 1.0 if train_layers is None else min(1.0, train_layers / d["L"])
    trainable = n if train_layers is None else math.ceil(frac * (n - d["V"] * d["h"]))  # embeddings frozen
    positions = seq if logit_positions is None else logit_positions
    return {
        "weights": weights_bytes(n, precision),
        "grads": weights_bytes(trainable, precision),
        "optimizer": 8 * trainable if optimizer == "adamw" else 0,
        "activations": math.ceil(frac * activation_bytes(model_cfg, batch, seq, activation_precision or precision, gradient_checkpointing)),
        "logits": 2 * batch * positions * _dims(model_cfg)["V"] * 4,
    }


def training_bytes(model_cfg: Mapping, batch: int, seq: int, *args: Any, **kwargs: Any) -> int:
    """Weights + grads + AdamW states (2 x fp32) + activations + LM-head logits of one training step (bytes).

    Takes the arguments of training_components and sums its parts.
    """
    return sum(training_components(model_cfg, batch, seq, *args, **kwargs).values())


def embedding_store_bytes(n: int, dim: int, bytes_per: int = 4) -> int:
    """N x dim x bytes: pass dim=hidden_size for hidden/gram-factor embeddings, dim=vocab_size for true logits."""
    return n * dim * bytes_per


def default_nlist(n: int, nlist: int | None = None) -> int:
    """IVF lists used for n vectors: knn.nlist (null: ~4·sqrt(n)), capped so faiss k-means has >= 39 points a list."""
    nl = int(nlist) if nlist is not None else round(4 * math.sqrt(n))
    return max(1, min(nl, n // 39))


def ivf_train_size(n: int, nlist: int, index: str) -> int:
    """Vectors sampled to train an IVF (64 per list) or IVF-PQ index (also >= 39 per PQ centroid)."""
    return min(n, 64 * nlist) if index == "ivf" else min(n, max(64 * nlist, 39 * (1 << PQ_NBITS)))


def faiss_index_bytes(n: int, dim: int, index: str = "flat", nlist: int | None = None, pq_m: int = 16) -> int:
    """FAISS index size (density.knn_search reports it as metadata.json's index_bytes).

    flat: n·d·4. ivf: n·(d·4 + 8 id) + nlist·d·4 centroids. ivfpq: n·(m code bytes + 8 id) + nlist·d·4
    centroids + 256·d·4 PQ codebooks (8 bits per sub-quantizer).
    """
    nl = default_nlist(n) if nlist is None else int(nlist)
    if index == "flat":
        return n * dim * 4
    if index == "ivf":
        return n * (dim * 4 + 8) + nl * dim * 4
    if index == "ivfpq":
        return n * (pq_m + 8) + nl * dim * 4 + (1 << PQ_NBITS) * dim * 4
    raise ValueError(f"index must be flat, ivf or ivfpq, got {index!r}")


def choose_index(n: int, dim: int, knn_cfg: Mapping) -> str:
    """The index knn.index resolves to (used by density.knn_search; needs no faiss)."""
    index = knn_cfg.get("index", "auto")
    if index != "auto":
        return index
    if n <= knn_cfg.get("exact_max", 100_000):
        return "flat"
    return "ivf" if n * dim * 4 <= knn_cfg.get("max_index_gb", 8.0) * 1e9 else "ivfpq"


def knn_temp_bytes(chunk: int, k: int, dim: int = 0) -> int:
    """Search temporaries for one chunk of queries: (k+1) float32 scores + int64 ids, the self-dropped copy, and
    (dim > 0) the numpy rescoring of <= 1024 rows at a time (reconstructed neighbours and their product, float32)
    plus a FAISS BLAS score block."""
    found = chunk * (k + 1) * 12 + chunk * k * 12 + chunk * k * 8
    rescore = 2 * min(chunk, 1024) * k * dim * 4 if dim else 0
    return found + rescore + (FAISS_BLAS_BLOCK_BYTES if dim else 0)


def grpo_logits_bytes(batch: int, seq: int, vocab: int, chunk: int | None = None) -> int:
    """fp32 LM-head logits over completions: naive B·T·V·4; chunked (chunk = tokens of the flattened B·T
    sequence per LM-head call, as density_grpo.grpo.self_certainty) min(chunk, B·T)·V·4."""
    if chunk is None:
        return batch * seq * vocab * 4
    return min(chunk, batch * seq) * vocab * 4


def ppo_vs_intuitor(model_cfg: Mapping, batch: int, seq: int, precision: str = "bf16", token_chunk: int = 256) -> dict[str, Any]:
    """Model-state and logits bytes of PPO vs Intuitor (GRPO with self-certainty reward), same policy.

    PPO: trainable policy and value model (weights + grads + AdamW each), frozen reference and reward model.
    Intuitor: trainable policy, optional frozen reference, no reward or value model; its self-certainty
    (logsumexp(z) - mean(z) per token) needs the full-vocab logits again: naive B·T·V·4 extra, or chunked.
    Activations (equal for both policies) are left out. Returns bytes per component and totals.
    """
    n = param_count(model_cfg)
    w = weights_bytes(n, precision)
    trainable = 2 * w + 8 * n
    V = _dims(model_cfg)["V"]
    naive, chunked = grpo_logits_bytes(batch, seq, V), grpo_logits_bytes(batch, seq, V, token_chunk)
    ppo = {"policy (trainable)": trainable, "reference": w, "reward model": w, "value model (trainable)": trainable, "policy logits": naive}
    intuitor = {"policy (trainable)": trainable, "reference": w, "policy logits": naive}  # reference: only if beta > 0
    return {
        "batch": batch, "seq": seq, "vocab": V, "precision": precision_key(precision), "token_chunk": token_chunk,
        "ppo": ppo, "intuitor": intuitor,
        "self_certainty_naive": naive, "self_certainty_chunked": chunked,
        "ppo_total": sum(ppo.values()),
        "intuitor_total_naive": sum(intuitor.values()) + naive,
        "intuitor_total_chunked": sum(intuitor.values()) + chunked,
    }  # fmt: skip


def estimate_tokens(texts: list[str], chars_per_token: float = 3.5) -> list[int]:
    """Rough token counts without a tokenizer (~3.5 characters per token for English BPE; SmolLM2 on the sample: 3.54)."""
    return [max(1, math.ceil(len(t) / chars_per_token)) for t in texts]


def load_model_config(cfg: Mapping) -> tuple[dict, str]:
    """(config.json of the configured model when its folder exists, else the SmolLM2-135M defaults; where from).

    The folder is model.name_or_path when it is a directory, else resources/models/<slug> (relative to the workdir).
    """
    name = str(cfg.get("model", {}).get("name_or_path", "smollm2-135m-instruct"))
    folder = Path(name) if Path(name).is_dir() else Path("resources/models") / name.replace("/", "--")
    try:
        found = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        found = None
    if found and "hidden_size" in (found.get("text_config") or found):
        return found, str(folder / "config.json")
    return dict(SMOLLM2_135M), "SmolLM2-135M defaults (no config.json found)"


def prompt_stats(prompts_path: str | os.PathLike, rows: slice | None = None) -> tuple[int, int] | None:
    """(number of prompts, longest prompt in estimated tokens) of prompts.parquet, or of `rows` of it; None if absent.

    Reads only the text column, measured with pyarrow (no Python strings), so it is cheap for large runs.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not Path(prompts_path).exists():
        return None
    text = pq.read_table(prompts_path, columns=["text"])["text"]
    if rows is not None:
        start, stop, _ = rows.indices(len(text))
        text = text.slice(start, max(0, stop - start))
    if len(text) == 0:
        return 0, 0
    longest = pc.max(pc.utf8_length(text)).as_py() or 0
    return len(text), estimate_tokens(["x" * longest])[0]


# -----------------------------------------------------------------------------
# per-rule prediction


def _run_precision(cfg: Mapping, device: str) -> str:
    """model.dtype as device.resolve_dtype would resolve it (auto: bf16 on CUDA, fp32 on CPU; torch-free)."""
    spec = cfg.get("model", {}).get("dtype", "auto")
    if spec == "auto":
        return "bf16" if device == "cuda" else "fp32"
    return precision_key(spec)


def predict_rule(
    rule: str,
    cfg: Mapping,
    model_cfg: Mapping | None = None,
    n_prompts: int | None = None,
    prompt_tokens: int | None = None,
    device: str | None = None,
) -> dict[str, Any] | None:
    """Predicted peak memory of a heavy rule: {rule, device, precision, components, total_bytes, host_bytes, formula}.

    rule: embed_chunk | knn_weights | model | reward_model | grpo | evaluate_model (others: None).
    model_cfg: the model's config.json dict (None: SmolLM2-135M). n_prompts: prompts in the run (knn_weights), or
    in this chunk (embed_chunk: min(chunk_size, n - i * chunk_size); the total also works, as an upper bound).
    prompt_tokens: the longest prompt in tokens (None: embed.max_length, an upper bound; `estimate_tokens` on
    prompts.parquet gives a cheap estimate). device: 'cpu' | 'cuda' (None: from cfg['device']).
    total_bytes is the peak where the model runs: process RSS on CPU, GPU memory on CUDA (host_bytes: the RSS).
    """
    from density_grpo.device import wants_gpu

    model_cfg = model_cfg or SMOLLM2_135M
    device = device or ("cuda" if wants_gpu(str(cfg.get("device", "auto"))) else "cpu")
    d = _dims(model_cfg)
    n_params = param_count(model_cfg)
    prec = _run_precision(cfg, device)
    stored = precision_key((model_cfg.get("torch_dtype") or model_cfg.get("dtype") or "float32"))
    e, k = cfg.get("embed", {}), cfg.get("knn", {})
    max_len = int(e.get("max_length", 512))
    T = max(1, min(prompt_tokens or max_len, max_len))
    true_logits = e.get("source") == "logits" and model_cfg.get("final_logit_softcapping") is not None
    dim = d["V"] if true_logits else d["h"]
    c: dict[str, int]  # components on the device
    host: dict[str, int] = {}

    if rule == "embed_chunk":  # n_prompts: this chunk's prompts when known (the last chunk may be short)
        chunk = min(int(e.get("chunk_size", 128)), int(n_prompts or 1 << 62))
        tokens = max(T, min(int(e.get("batch_tokens", 8192)), chunk * T))
        B = max(1, tokens // T)
        c = {"weights": weights_bytes(n_params, prec), "activations": inference_activation_bytes(model_cfg, B, T, prec)}
        if true_logits:
            c["logits"] = B * T * d["V"] * 4
        c["output"] = chunk * dim * 4
        load = weights_bytes(n_params, stored) if stored != prec or device == "cuda" else 0
        formula = "baseline + weights + max(activations + logits + output, load copy in the stored dtype)"
        assumptions = {"batch": B, "seq": T, "load_copy_bytes": load}
        host = {"baseline": BASELINE_BYTES["torch"], "load_copy": load}
    elif rule == "knn_weights":
        n = int(n_prompts or e.get("chunk_size", 128))
        kind = choose_index(n, dim, k)
        nl = default_nlist(n, k.get("nlist")) if kind != "flat" else 0
        chunk = min(n, int(e.get("chunk_size", 128)))
        c = {"index": faiss_index_bytes(n, dim, kind, nl, int(k.get("pq_m", 16)))}
        if kind != "flat":
            n_train = ivf_train_size(n, nl, kind)
            rs = min(n, int(k.get("recall_sample", 1000)))
            c["direct_map"] = n * 8
            c["train_sample"] = n_train * dim * 4
            c["recall"] = rs * dim * 4 + 2 * rs * chunk * 4
        c["chunk"] = 2 * chunk * dim * 4  # read + normalised copy
        c["search_temps"] = knn_temp_bytes(chunk, int(k.get("k", 10)), dim)
        c["per_prompt"] = n * 200  # ids (unique check, strings), distances, density, weight, output frame
        host = {"baseline": BASELINE_BYTES["faiss"]}
        device = "cpu"  # faiss-cpu
        formula = "baseline + index + direct map + IVF training sample + chunk + search temps + recall + per-prompt arrays (an upper bound: the sample is freed before the search)"
        assumptions = {"n": n, "dim": dim, "index": kind, "nlist": nl}
    elif rule == "model":
        c = {"dequantised_weights": weights_bytes(n_params, "fp32"), "model_weights": weights_bytes(n_params, "fp32"), "gguf_file": math.ceil(n_params * 0.625)}
        host = {"baseline": BASELINE_BYTES["torch"]}
        device = "cpu"
        formula = "baseline + fp32 state dict + fp32 model + GGUF file (Q4_1: 5 bits/weight)"
        assumptions = {"params": n_params}
    elif rule == "reward_model":
        r = cfg.get("rm", {})
        S = min(int(r.get("max_length", 512)), 3 * prompt_tokens) if prompt_tokens else int(r.get("max_length", 512))
        B = 2 * int(r.get("batch_size", 8))  # chosen + rejected
        c = training_components(model_cfg, B, S, "fp32", "adamw", bool(r.get("gradient_checkpointing")), 0, prec, r.get("train_layers"))
        host = {"baseline": BASELINE_BYTES["trl"]}
        formula = "baseline + fp32 weights + grads + AdamW + activations (batch = 2 x rm.batch_size, chosen + rejected)"
        assumptions = {"batch": B, "seq": S, "note": "seq: rm.max_length, or 3 x the longest prompt when known"}
    elif rule == "grpo":
        g = cfg.get("grpo", {})
        B = int(g.get("prompts_per_step", 2)) * int(g.get("num_generations", 4))
        C = int(g.get("max_completion_length", 32))
        S = T + C
        train_prec = "fp32" if prec == "fp16" else prec  # fp16 trains as autocast over fp32 weights
        tc = training_components(model_cfg, B, S, train_prec, "adamw", bool(g.get("gradient_checkpointing")), C, prec)
        c = {k2: tc[k2] for k2 in ("weights", "grads", "optimizer")}
        gen = kv_cache_bytes(model_cfg, B, S, prec) + B * d["V"] * 4
        train = tc["activations"] + tc["logits"]
        c["max(train activations + logits, generation KV cache)"] = max(train, gen)
        if float(g.get("beta", 0.0)) > 0:
            c["reference"] = weights_bytes(n_params, prec)
        if g.get("reward", "rm") == "rm":
            c["reward_model"] = weights_bytes(n_params, prec) + inference_activation_bytes(model_cfg, min(B, 8), S, prec)
        else:
            c["self_certainty_logits"] = grpo_logits_bytes(B, C, d["V"], int(g.get("token_chunk", 256)))
        host = {"baseline": BASELINE_BYTES["trl"]}
        formula = "baseline + weights + grads + AdamW + max(train activations + logits, KV cache) + reward model or chunked self-certainty"
        assumptions = {"batch": B, "seq": S, "completion": C, "train_activations_and_logits": train, "generation": gen}
    elif rule == "evaluate_model":
        v = cfg.get("eval", {})
        B = 8 * int(v.get("samples", 4))  # generate(): 8 prompts x samples per call
        S = T + int(v.get("max_new_tokens", 48))
        emb_tokens = int(e.get("batch_tokens", 8192))
        c = {
            "weights": weights_bytes(n_params, prec),
            "max(generation KV cache, embedding, RM scoring)": max(
                kv_cache_bytes(model_cfg, B, S, prec) + B * d["V"] * 4,
                inference_activation_bytes(model_cfg, max(1, emb_tokens // S), S, prec),
                inference_activation_bytes(model_cfg, int(cfg.get("rm", {}).get("batch_size", 8)), S, prec),
            ),
        }
        host = {"baseline": BASELINE_BYTES["torch"]}
        formula = "baseline + one model's weights (policy, base, RM loaded in turn) + max(KV cache, embed, RM activations)"
        assumptions = {"generation_batch": B, "seq": S}
    else:
        return None

    work = sum(c.values())
    if rule == "embed_chunk":  # the load copy and the forward pass do not overlap
        work = c["weights"] + max(work - c["weights"], assumptions["load_copy_bytes"] if device == "cpu" else 0)
    if device == "cuda":
        host_bytes = host["baseline"] + CUDA_CONTEXT_BYTES + host.get("load_copy", weights_bytes(n_params, stored))
        total = work
    else:
        host_bytes = total = host["baseline"] + work
    components = {"baseline": host["baseline"], **c}
    return {
        "rule": rule, "device": device, "precision": prec, "components": components, "total_bytes": int(total),
        "host_bytes": int(host_bytes), "formula": formula, "assumptions": assumptions, "params": n_params,
    }  # fmt: skip


# -----------------------------------------------------------------------------
# device helpers


def free_memory_bytes(device: Any = "cpu") -> int:
    """Free memory on `device`: CUDA mem_get_info()[0]; otherwise (cpu, mps) psutil available RAM."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return int(psutil.virtual_memory().available)


def can_allocate(nbytes: int, device: Any = "cpu", fraction: float = 0.9) -> bool:
    """Whether `nbytes` fits in `fraction` of the free memory on `device`."""
    return nbytes <= fraction * free_memory_bytes(device)


def warn_if_too_big(predicted_bytes: int | Mapping, device: Any = "cpu", warn_fraction: float = 0.9, what: str = "") -> str | None:
    """Log and return a warning when `predicted_bytes` exceeds warn_fraction x free memory, else None.

    predicted_bytes: bytes or a predict_rule() dict. what: the rule name (names the config knob to turn, see
    KNOBS) or any description.
    """
    if isinstance(predicted_bytes, Mapping):
        what = what or predicted_bytes.get("rule", "")
        predicted_bytes = predicted_bytes["total_bytes"]
    free = free_memory_bytes(device)
    if predicted_bytes <= warn_fraction * free:
        return None
    knob = KNOBS.get(what, "embed.batch_tokens, grpo.prompts_per_step or model.dtype")
    msg = (
        f"{what or 'job'}: predicted peak {predicted_bytes / MiB:,.0f} MiB exceeds {warn_fraction:.0%} of free "
        f"{device} memory ({free / MiB:,.0f} MiB); if it runs out of memory, lower {knob}"
    )
    log.warning("%s", msg)
    return msg


# -----------------------------------------------------------------------------
# measurement


def _tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and all its children (shared pages are counted once per process)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a child exited between listing and reading
            pass
    return total


def _cuda():
    """torch.cuda when this process has already initialised CUDA (never initialises it), else None."""
    # the job may be importing torch on the main thread right now: a partially initialised module has no .cuda
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except Exception:
        return None


class MemoryMonitor:
    """Sample the RSS of this process and its children (and CUDA memory) on a daemon thread while a job runs.

        with MemoryMonitor("results/run/memory", "embed_chunk_3", rule="embed_chunk", wildcards={"i": "3"},
                           predicted_bytes=predict_rule("embed_chunk", cfg)) as mon:
            ...
            mon.extra["tokens_per_s"] = 812.0

    On exit (also on an exception, then status "failed") writes `{job}.tsv` (t_s, rss_mb[, cuda_alloc_mb,
    cuda_reserved_mb]) and `{job}.json` (peak_rss_mb, peak_cuda_mb, wall_s, rule, wildcards, predicted_mb, extra
    fields), atomically. predicted_bytes: bytes, or a predict_rule() dict (its components are kept too).
    CUDA peaks come from torch.cuda.max_memory_allocated/reserved (exact, not sampled) when CUDA was used.
    """

    MAX_SAMPLES = 50_000  # beyond this, every other sample is dropped and the interval doubled

    def __init__(
        self,
        out_dir: str | os.PathLike,
        job: str,
        rule: str | None = None,
        wildcards: Mapping | None = None,
        predicted_bytes: int | Mapping | None = None,
        interval: float = 0.1,
        extra: Mapping | None = None,
    ):
        self.out_dir, self.job, self.rule = Path(out_dir), job, rule or job
        # Snakemake's Wildcards is a list with .items(), not a dict
        items = wildcards.items() if hasattr(wildcards, "items") else (wildcards or {})
        self.wildcards = {str(key): str(v) for key, v in dict(items).items()}
        self.predicted = predicted_bytes
        self.interval = interval
        self.extra: dict[str, Any] = dict(extra or {})
        self.samples: list[tuple[float, float, float, float]] = []  # t_s, rss, cuda alloc, cuda reserved (bytes)
        self.peak_rss = 0
        self.tsv_path = self.out_dir / f"{job}.tsv"
        self.json_path = self.out_dir / f"{job}.json"
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cuda_seen = False

    def sample(self) -> None:
        """Take one sample now (the thread calls this every `interval` seconds)."""
        rss = _tree_rss(self._proc)
        alloc = reserved = 0.0
        cuda = _cuda()
        if cuda is not None:
            self._cuda_seen = True
            alloc, reserved = cuda.memory_allocated(), cuda.memory_reserved()
        with self._lock:
            self.peak_rss = max(self.peak_rss, rss)
            self.samples.append((time.perf_counter() - self._t0, rss, alloc, reserved))
            if len(self.samples) > self.MAX_SAMPLES:
                self.samples = self.samples[::2]
                self.interval *= 2

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as e:  # keep sampling: one failed read must not end the timeline
                log.debug("memory sample failed: %s", e)

    def __enter__(self) -> "MemoryMonitor":
        self._t0 = time.perf_counter()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self.sample()
        self.baseline_rss = self.samples[0][1]
        self._thread = threading.Thread(target=self._run, name=f"memory-monitor-{self.job}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        self.wall_s = time.perf_counter() - self._t0
        try:
            self._write("ok" if exc_type is None else "failed")
        except Exception:  # never mask the job's own error (or success) with a reporting failure
            log.exception("could not write memory log for %s", self.job)

    def record(self, status: str = "ok") -> dict[str, Any]:
        """The JSON record (MiB)."""
        peak_cuda = peak_cuda_reserved = None
        cuda = _cuda()
        if cuda is not None or self._cuda_seen:
            peak_cuda = cuda.max_memory_allocated() / MiB if cuda is not None else max(s[2] for s in self.samples) / MiB
            peak_cuda_reserved = cuda.max_memory_reserved() / MiB if cuda is not None else max(s[3] for s in self.samples) / MiB
        rec: dict[str, Any] = {
            "job": self.job,
            "rule": self.rule,
            "wildcards": self.wildcards,
            "status": status,
            "peak_rss_mb": round(self.peak_rss / MiB, 2),
            "baseline_rss_mb": round(self.baseline_rss / MiB, 2),
            "peak_cuda_mb": None if peak_cuda is None else round(peak_cuda, 2),
            "peak_cuda_reserved_mb": None if peak_cuda_reserved is None else round(peak_cuda_reserved, 2),
            "wall_s": round(self.wall_s, 3),
            "interval_s": self.interval,
            "n_samples": len(self.samples),
            "started_at": self.started_at,
            "host": platform.node(),
            "total_ram_mb": round(psutil.virtual_memory().total / MiB, 1),
            "predicted_mb": None,
        }
        p = self.predicted
        if isinstance(p, Mapping):
            rec["predicted_mb"] = round(p["total_bytes"] / MiB, 2)
            rec["predicted_device"] = p.get("device")
            rec["predicted_components_mb"] = {key: round(v / MiB, 2) for key, v in p.get("components", {}).items()}
        elif p is not None:
            rec["predicted_mb"] = round(float(p) / MiB, 2)
        if rec["predicted_mb"]:
            measured = peak_cuda if rec.get("predicted_device") == "cuda" and peak_cuda else rec["peak_rss_mb"]
            rec["measured_over_predicted"] = round(measured / rec["predicted_mb"], 3)
        for key, v in self.extra.items():
            rec.setdefault(key, v)
        return rec

    def _write(self, status: str) -> None:
        rec = self.record(status)
        cols = ["t_s", "rss_mb"] + (["cuda_alloc_mb", "cuda_reserved_mb"] if self._cuda_seen else [])
        lines = ["\t".join(cols)]
        for t, rss, alloc, reserved in self.samples:
            row = [f"{t:.3f}", f"{rss / MiB:.2f}"] + ([f"{alloc / MiB:.2f}", f"{reserved / MiB:.2f}"] if self._cuda_seen else [])
            lines.append("\t".join(row))
        with atomic_path(self.tsv_path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        write_json(rec, self.json_path)


def monitor_job(smk: Any, interval: float = 0.1) -> MemoryMonitor:
    """A MemoryMonitor for a Snakemake script job, with its prediction (and a warning if it may not fit).

    Writes results/{run}/memory/{rule}[_{wildcard values}].{json,tsv}; for embed_chunk the prediction uses the
    chunk's own prompts. Usage in run_step: `with monitor_job(smk) as mon: step()`.
    """
    cfg = smk.config
    wildcards = dict(smk.wildcards.items())
    job = "_".join([smk.rule, *map(str, wildcards.values())])
    run_dir = Path("results") / str(cfg.get("run", "default"))
    predicted = None
    if smk.rule in KNOBS:
        model_cfg, _ = load_model_config(cfg)
        rows = None
        if smk.rule == "embed_chunk" and str(wildcards.get("i", "")).isdigit():
            size = int(cfg.get("embed", {}).get("chunk_size", 128))
            rows = slice(int(wildcards["i"]) * size, (int(wildcards["i"]) + 1) * size)
        stats = prompt_stats(run_dir / "data/prompts.parquet", rows)
        n, tokens = stats if stats else (None, None)
        predicted = predict_rule(smk.rule, cfg, model_cfg, n or None, tokens or None)
        try:
            if predicted is not None:
                warn_if_too_big(predicted, predicted["device"], float(cfg.get("memory", {}).get("warn_fraction", 0.9)), smk.rule)
        except Exception as e:  # a failed free-memory query must not fail the job
            log.debug("free memory check failed: %s", e)
    return MemoryMonitor(run_dir / "memory", job, rule=smk.rule, wildcards=wildcards, predicted_bytes=predicted, interval=interval)

"""Memory formulas: how many bytes a model, a training step, a KV cache or a batch of logits takes.

Model-agnostic arithmetic only. Each stage module builds its own peak prediction from these formulas and the
batch shapes it really uses (`prediction`), records it with `monitor.expect`, and the monitor sets the measured
peak beside it. FAISS sizing lives in `index_plan`. Units: bytes everywhere in the API.

Analytic model (Llama-like decoder: GQA attention, SwiGLU MLP, RMSNorm):
- parameters: exact (see `param_count`);
- weights: params x bytes of the precision (int8/int4 without quantisation scales);
- training: weights + grads + AdamW m and v (2 x fp32) + stored activations + LM-head logits;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import psutil

from density_grpo.errors import UserError

log = logging.getLogger(__name__)

MiB = 2**20
PRECISION_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}

# RSS (MiB) of a bare process after its imports; measured on Linux x86-64, Python 3.11, torch 2.13 CPU,
# transformers 5.23, trl 1.16, faiss-cpu 1.15 (`python -c "import ...; print(psutil.Process().memory_info().rss)"`)
BASELINE_BYTES = {
    "python": 105 * MiB,  # numpy + pandas
    "faiss": 130 * MiB,  # numpy, pandas, faiss, zarr (density_grpo.density)
    "torch": 330 * MiB,  # torch, transformers, AutoModelForCausalLM/AutoTokenizer, density_grpo.embed
    "trl": 435 * MiB,  # torch, transformers, datasets, trl GRPOTrainer/RewardTrainer
}

TEXT_COPIES = 4  # measured (tests/test_long_prompts.py): 25-40 MB of ASCII prompts raise a job's peak by 100-190 MiB

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
CLASSIC_INTUITOR = {"batch": 64, "seq": 6144, "vocab": 151_936, "token_chunk": 256}  # "Intuitor logits" question
LOGIT_QUESTION = {"n": 28_000, "vocab": 50_304}  # "28,000 prompts x 50,304-dim logits" question


# -----------------------------------------------------------------------------
# formulas


def precision_key(precision: str) -> str:
    """'float32'/'fp32' -> 'fp32', etc.; ValueError for an unknown precision."""
    p = _ALIASES.get(str(precision).removeprefix("torch."), str(precision).removeprefix("torch."))
    if p not in PRECISION_BYTES:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISION_BYTES)})")
    return p


def dims(cfg: Mapping) -> dict[str, int]:
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
    d = dims(model_cfg)
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
    d = dims(model_cfg)
    return math.ceil(2 * d["L"] * batch * seq * d["kv_heads"] * d["hd"] * PRECISION_BYTES[precision_key(precision)])


def activation_bytes(model_cfg: Mapping, batch: int, seq: int, precision: str = "fp32", gradient_checkpointing: bool = False) -> int:
    """Activations stored for backward: per token per layer 8·h + 2·kv + 4·I elements (see module docstring).

    With checkpointing: one h-vector per token per layer, plus one layer's full set while it is recomputed.
    Attention probabilities of one layer (B·heads·T²) are added as a transient (SDPA does not store them).
    """
    d = dims(model_cfg)
    b = PRECISION_BYTES[precision_key(precision)]
    tokens = batch * seq
    per_layer = tokens * (8 * d["h"] + 2 * d["kv_heads"] * d["hd"] + 4 * d["I"]) * b
    probs = batch * d["heads"] * seq * seq * b
    if gradient_checkpointing:
        return math.ceil(d["L"] * tokens * d["h"] * b + per_layer + probs)
    return math.ceil(d["L"] * per_layer + probs)


def inference_activation_bytes(model_cfg: Mapping, batch: int, seq: int, precision: str = "fp32") -> int:
    """Peak live activations of a no-grad forward: tokens·(8·h + 6·I) + attention probs B·heads·T², in bytes."""
    d = dims(model_cfg)
    b = PRECISION_BYTES[precision_key(precision)]
    return math.ceil(batch * seq * (8 * d["h"] + 6 * d["I"]) * b + batch * d["heads"] * seq * seq * b)


@dataclass(frozen=True)
class Training:
    """How a training step holds its state (the options of `training_components`).

    precision: of the weights and grads; optimizer: adamw (m and v in fp32: 8 bytes/param) or sgd (none);
    checkpointing: activations recomputed in the backward pass; logit_positions: positions per sequence with LM-head
    logits (None: all; 0: a scalar head, e.g. a reward model), fp32 and counted twice (the logits and their gradient
    / log-softmax); activations: their precision (e.g. bf16 under autocast; None: `precision`); train_layers: only
    the top N blocks train (rm.train_layers): grads and AdamW states cover their parameters only, and the frozen
    blocks below run without autograd, so only the top N store activations.
    """

    precision: str = "fp32"
    optimizer: str = "adamw"
    checkpointing: bool = False
    logit_positions: int | None = None
    activations: str | None = None
    train_layers: int | None = None


def training_components(model_cfg: Mapping, batch: int, seq: int, how: Training = Training()) -> dict[str, int]:
    """Bytes of one training step, by component: weights, grads, optimizer, activations, logits."""
    if how.optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {how.optimizer!r}")
    n = param_count(model_cfg)
    d = dims(model_cfg)
    frac = 1.0 if how.train_layers is None else min(1.0, how.train_layers / d["L"])
    trainable = n if how.train_layers is None else math.ceil(frac * (n - d["V"] * d["h"]))  # embeddings frozen
    positions = seq if how.logit_positions is None else how.logit_positions
    acts = activation_bytes(model_cfg, batch, seq, how.activations or how.precision, how.checkpointing)
    return {
        "weights": weights_bytes(n, how.precision),
        "grads": weights_bytes(trainable, how.precision),
        "optimizer": 8 * trainable if how.optimizer == "adamw" else 0,
        "activations": math.ceil(frac * acts),
        "logits": 2 * batch * positions * d["V"] * 4,
    }


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
    V = dims(model_cfg)["V"]
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




def embedding_store_bytes(n: int, dim: int, bytes_per: int = 4) -> int:
    """N x dim x bytes: pass dim=hidden_size for hidden/gram-factor embeddings, dim=vocab_size for true logits."""
    return n * dim * bytes_per


def model_config(model_dir: str | os.PathLike) -> dict:
    """The text part of a model folder's config.json (what the formulas read)."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg.get("text_config") or cfg


@dataclass(frozen=True)
class Workload:
    """What a job's peak memory depends on besides its params (each stage's `predict(params, work)`): the model's
    config.json and the data shapes, known when the job runs and assumed by tools/predict_run.py before it.

    text_bytes: the size of the texts the job reads and holds (prompts, or the pairs for reward_model; characters
    or UTF-8 bytes), before any cut to the token limits: a 20 MB prompt is read whole, never tokenized whole.
    lengths: token counts of what the job runs: embed_chunk the chunk's prompts as embedded (after truncation),
    reward_model the tokenized pairs' sequences, grpo and evaluate_model the prompts. n_prompts, dim and chunk_rows:
    the weights job's prompts, embedding width and largest chunk. true_logits: the LM head is not linear, so
    `embed.source: logits` stores vocab-wide vectors.
    """

    model: Mapping[str, Any]
    lengths: tuple[int, ...] = ()
    n_prompts: int = 0
    dim: int = 0
    chunk_rows: int = 0
    true_logits: bool = False
    text_bytes: int = 0


# -----------------------------------------------------------------------------
# predictions (built by the stages) and the free-memory check


def baseline(kind: str, device: str) -> dict[str, int]:
    """The process's own RSS after its imports, as a component: only where the prediction is host memory."""
    return {"baseline": BASELINE_BYTES[kind]} if device == "cpu" else {}


def texts(work: Workload, device: str) -> dict[str, int]:
    """The texts the job holds (work.text_bytes), as a component: TEXT_COPIES x their size for the parquet pages,
    the Arrow column and the Python strings they become (host memory only)."""
    return {"texts read": TEXT_COPIES * work.text_bytes} if device == "cpu" and work.text_bytes else {}


def prediction(device: str, components: Mapping[str, int], formula: str, knob: str, **assumptions: Any) -> dict:
    """A stage's predicted peak: bytes per component where the work runs (host RSS on CPU, device memory on GPUs).

    knob: the config key to turn when it does not fit. assumptions: the shapes it was computed from.
    """
    components = {k: int(v) for k, v in components.items()}
    return {
        "device": "cpu" if device == "cpu" else device.split(":")[0],
        "components": components,
        "total_bytes": sum(components.values()),
        "formula": formula,
        "knob": knob,
        "assumptions": assumptions,
    }


def free_memory_bytes(device: str = "cpu") -> int:
    """Free memory on `device`: CUDA mem_get_info()[0]; otherwise (cpu, mps) psutil available RAM."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return int(psutil.virtual_memory().available)


def warn_if_too_big(pred: Mapping[str, Any], warn_fraction: float = 0.9) -> str | None:
    """Log and return a warning when a prediction exceeds warn_fraction x free memory of its device, else None."""
    free = free_memory_bytes(pred["device"])
    if pred["total_bytes"] <= warn_fraction * free:
        return None
    msg = (
        f"predicted peak {pred['total_bytes'] / MiB:,.0f} MiB exceeds {warn_fraction:.0%} of free {pred['device']} "
        f"memory ({free / MiB:,.0f} MiB); if it runs out of memory, lower {pred['knob']}"
    )
    log.warning("%s", msg)
    return msg


# -----------------------------------------------------------------------------
# reference tables of the memory report


def precision_table(model_cfg: Mapping, model_name: str) -> list[dict]:
    """Weights by precision, full fine-tune state and KV cache for the configured model and Llama-like references."""
    rows = []
    for name, c in [(model_name, model_cfg), *REFERENCE_MODELS.items()]:
        n = param_count(c)
        d = dims(c)
        row = {"model": name, "params": n, **{p: weights_bytes(n, p) for p in ("fp32", "bf16", "int8", "int4")}}
        row["finetune_adamw_fp32"] = 16 * n  # fp32 weights + grads + AdamW m, v (activations not included)
        row["kv_per_1k_tokens_bf16"] = kv_cache_bytes(c, 1, 1000, "bf16")
        row["config"] = {k: d[k] for k in ("L", "h", "I", "heads", "kv_heads", "V")}
        row["config"]["tied"] = bool(c.get("tie_word_embeddings", True))
        rows.append(row)
    return rows


def logits_questions(model_cfg: Mapping, batch: int, completion: int, token_chunk: int, precision: str) -> dict:
    """GRPO logits naive vs chunked (configured shape and the classic B=64, T=6144, V=151,936), PPO vs Intuitor,
    and 28,000 prompts x 50,304-dim logit embeddings vs the d_model transform."""
    V, h = dims(model_cfg)["V"], dims(model_cfg)["h"]
    c, q = CLASSIC_INTUITOR, LOGIT_QUESTION
    return {
        "configured": {
            "batch": batch, "seq": completion, "vocab": V, "token_chunk": token_chunk,
            "naive": grpo_logits_bytes(batch, completion, V), "chunked": grpo_logits_bytes(batch, completion, V, token_chunk),
        },
        "classic": {
            **c, "naive": grpo_logits_bytes(c["batch"], c["seq"], c["vocab"]),
            "chunked": grpo_logits_bytes(c["batch"], c["seq"], c["vocab"], c["token_chunk"]),
        },
        "ppo_vs_intuitor": ppo_vs_intuitor(model_cfg, batch, completion, precision, token_chunk),
        "logit_embeddings": {
            **q, "dim": h, "logits_bytes": embedding_store_bytes(q["n"], q["vocab"]),
            "dim_bytes": embedding_store_bytes(q["n"], h), "ratio": q["vocab"] / h,
        },
    }  # fmt: skip


def scaling_table(n0: int, dim: int, vocab: int, chunk_size: int, knn: Mapping, prompts_per_s: float | None) -> list[dict]:
    """Bytes and times at N x 1, 10, 100, 1000 prompts: embeddings (d-dim vs vocab logits), indexes, the k-NN
    job's peak for the index `knn.index` would pick, and the serial embedding time at the measured throughput."""
    from density_grpo import index_plan as ip

    rows = []
    for scale in (1, 10, 100, 1000):
        n = n0 * scale
        kind = ip.choose_index(knn["index"], n, dim, knn["exact_max"], knn["max_index_gb"])
        nl = ip.default_nlist(n, knn["nlist"], kind)
        knobs = {key: knn[key] for key in ("k", "recall_sample", "pq_m", "nprobe", "fix_fraction", "fix_nprobe")}
        parts = ip.components(n, dim, min(n, chunk_size), {**knobs, "index": kind}, nl if kind != "flat" else 0)
        peak = BASELINE_BYTES["faiss"] + sum(parts.values())
        rows.append({
            "scale": scale, "n": n, "chunks": math.ceil(n / chunk_size),
            "emb_hidden_bytes": embedding_store_bytes(n, dim), "emb_logits_bytes": embedding_store_bytes(n, vocab),
            "flat_bytes": ip.index_bytes(n, dim, "flat"), "ivf_bytes": ip.index_bytes(n, dim, "ivf", nl),
            "ivfpq_bytes": ip.index_bytes(n, dim, "ivfpq", nl, knn["pq_m"]),
            "auto_index": kind, "knn_peak_bytes": peak,
            "embed_cpu_s": n / prompts_per_s if prompts_per_s else None,
        })  # fmt: skip
    return rows


def recommendations(model_cfg: Mapping, dim: int, scaling: list[dict], prompts_per_s: float | None, params: Mapping, ram: float) -> list[str]:
    """Index type, chunk size, dtype and batch budget implied by the scaling table and the RAM of the machine the
    jobs ran on (`ram` bytes). params: the report's (device, dtype, warn_fraction, embed.chunk_size and
    embed.batch_tokens, knn.pq_m)."""
    device, dtype, warn_fraction = params["device"], params["dtype"], params["warn_fraction"]
    chunk_size, batch_tokens, pq_m = params["embed"]["chunk_size"], params["embed"]["batch_tokens"], params["knn"]["pq_m"]
    budget = warn_fraction * ram
    free_for_index = budget - BASELINE_BYTES["faiss"]
    n_flat = int(free_for_index // (dim * 4))
    n_pq = int(free_for_index // (pq_m + 8 + 2 * dim))  # codes + id + float16 copy for re-ranking
    out = [f"Machine RAM {ram / 2**30:.1f} GiB (where the jobs ran); budget {warn_fraction:.0%} of it = {budget / 2**30:.1f} GiB."]
    out.append(
        f"Index: a flat (exact) index or ivfjoin's matrix of {dim}-dim fp32 vectors fits up to ~{n_flat:,} prompts here; "
        f"IVF-PQ (m={pq_m}, float16 re-ranking copies) up to ~{n_pq:,}. knn.index: auto picks "
        + ", ".join(f"{r['auto_index']} at N={r['n']:,}" for r in scaling)
        + ". Flat search is all-pairs (time ~N^2): beyond ~1e5 prompts prefer ivfjoin for speed, ivfpq only beyond memory."
    )
    for r in scaling:
        if r["knn_peak_bytes"] > budget:
            out.append(
                f"At N={r['n']:,} the k-NN job needs ~{human_bytes(r['knn_peak_bytes'])}: over budget, set knn.index: ivfpq "
                "(or raise knn.max_index_gb only on a larger node)."
            )
            break
    n_params = param_count(model_cfg)
    prec = precision_key(dtype)
    if device != "cpu":
        out.append(f"dtype: on {device} keep model.dtype auto (= {dtype}): half the weights and activations of fp32.")
    else:
        fp32, bf16 = weights_bytes(n_params, "fp32"), weights_bytes(n_params, "bf16")
        out.append(
            f"dtype: on this CPU keep model.dtype auto (= float32, {human_bytes(fp32)} of weights): "
            f"bfloat16 would save {human_bytes(fp32 - bf16)} but CPU bf16 matmuls are usually slower."
        )
    per_token = inference_activation_bytes(model_cfg, 1, 1, prec)
    spare = budget - BASELINE_BYTES["torch"] - weights_bytes(n_params, prec)
    out.append(
        f"embed.batch_tokens: ~{per_token / 1024:.0f} KiB of activations per token (+ attention probabilities); "
        f"memory would allow ~{max(0, int(spare // per_token)):,} tokens per batch, so the current {batch_tokens} is "
        "set by speed, not memory."
    )
    if prompts_per_s:
        target = 2 ** max(5, round(math.log2(max(1.0, 300 * prompts_per_s))))
        out.append(
            f"embed.chunk_size: a chunk holds only {human_bytes(chunk_size * dim * 4)} of vectors; size it by time: "
            f"at ~{prompts_per_s:.2f} prompts/s, ~5 minutes per job is chunk_size ~{target} (now {chunk_size})."
        )
    return out


def human_bytes(b: float | None) -> str:
    """Bytes, human-readable in binary units."""
    if b is None:
        return "n/a"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"

"""Embedding throughput: the project's Embedder (logits source, Gram transform) vs the seeds' loop, real prompts.

    python benchmarks/embed_throughput.py [--repeats 2] [--threads N] [--quick]

Prompts: the shipped sample data's unique prompts. Model: the real default (SmolLM2-135M-Instruct, float32, what
model.dtype auto means on CPU), the same torch threads for both sides.
- seed loop (the documents' method): batches of 8 in data order, right-padded to the batch's longest prompt, the
  full (B, T, V) logits materialised by the model, then the attention-masked mean over positions (vocab-dim).
- project: `Embedder(source="logits")` through its public API with config.yaml's embed settings: tokenized once,
  sorted token-budget batches, no LM head: the pooled hidden state times R (R^T R = W^T W), d_model dims.
Repeats alternate the two; medians. tokens/s counts real (unpadded) tokens. gemm_fraction: the project's model
FLOP/s (2 x non-embedding parameters per token + attention scores, on real tokens) over a float32 GEMM ceiling
measured in the same run (2048^3 torch matmul, same threads). logit_bytes_ratio: V x 4 bytes per prompt for
the pooled logits vs the bytes per prompt the project stores. neighbour_agreement: fraction of prompts whose
k-NN sets (cosine, k = knn.k) are identical from the true pooled logits and from the stored transform.
The last line is machine-readable:
RESULT embed speedup=<x> gemm_fraction=<f> logit_bytes_ratio=<r> neighbour_agreement=<a>
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import yaml

from common import ROOT, default_model, gemm_gflops, machine, result, set_threads, table

SEED_BATCH = 8


def sample_prompts() -> list[str]:
    from density_grpo.pairs import load_pairs, unique_prompts

    path = os.path.join(ROOT, "density_grpo", "data", "sample_pairs.jsonl")
    return unique_prompts(load_pairs("sample", [path], None))["text"].tolist()


@torch.inference_mode()
def seed_loop(model, tok, texts: list[str], max_length: int) -> tuple[np.ndarray, int, float]:
    """(pooled vocab-dim logits (n, V), real tokens, seconds): batches of 8, padded to the longest, full logits."""
    from density_grpo.embed import mean_pool

    tok.padding_side = "right"  # positions stay intact; the mean is masked
    t = time.perf_counter()
    out, n_tokens = [], 0
    for i in range(0, len(texts), SEED_BATCH):
        enc = tok(texts[i : i + SEED_BATCH], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**enc, use_cache=False).logits
        out.append(mean_pool(logits, enc["attention_mask"]).numpy())
        n_tokens += int(enc["attention_mask"].sum())
    return np.concatenate(out), n_tokens, time.perf_counter() - t


def project(model, tok, texts: list[str], embed_cfg: dict) -> tuple[np.ndarray, int, float]:
    from density_grpo.embed import Embedder

    e = Embedder(model, tok, source="logits", layer=-1, max_length=embed_cfg["max_length"], batch_tokens=embed_cfg["batch_tokens"])
    emb = e.embed(texts, progress=False)
    return emb, e.n_tokens, e.time_s


def model_flops(model, lengths: list[int]) -> float:
    """Forward FLOPs on real tokens: 2 x non-embedding parameters per token + 4 x layers x d x length (QK^T, AV)."""
    cfg = model.config
    n_params = sum(p.numel() for p in model.model.parameters()) - model.get_input_embeddings().weight.numel()
    attn = sum(4 * cfg.num_hidden_layers * cfg.hidden_size * n * n / 2 for n in lengths)  # causal: half the scores
    return 2.0 * n_params * sum(lengths) + attn


def knn_sets(x: np.ndarray, k: int) -> np.ndarray:
    import faiss

    from density_grpo.knn import exact_knn

    u = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(u)
    return np.sort(exact_knn(u, np.arange(len(u)), k)[1], axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="first 48 prompts, 1 repeat")
    args = ap.parse_args()
    from density_grpo.models import load_causal_lm

    with open(os.path.join(ROOT, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    set_threads(args.threads)
    texts = sample_prompts()
    if args.quick:
        texts, args.repeats = texts[:48], 1
    model, tok = load_causal_lm(default_model(), dtype=torch.float32, device=torch.device("cpu"))
    model.eval()
    print(machine())
    print(f"{len(texts)} sample prompts, SmolLM2-135M-Instruct float32, {args.threads} threads, median of {args.repeats}", flush=True)

    ceiling = gemm_gflops(args.threads)
    runs = {"seed loop": [], "project": []}
    for _ in range(args.repeats):
        seed_emb, seed_tokens, seed_s = seed_loop(model, tok, texts, cfg["embed"]["max_length"])
        runs["seed loop"].append(seed_tokens / seed_s)
        proj_emb, proj_tokens, proj_s = project(model, tok, texts, cfg["embed"])
        runs["project"].append(proj_tokens / proj_s)
    ceiling = max(ceiling, gemm_gflops(args.threads))  # best of before and after: the machine is shared
    tps = {key: statistics.median(v) for key, v in runs.items()}
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=cfg["embed"]["max_length"])["input_ids"]]
    gflops = model_flops(model, lengths) / (sum(lengths) / tps["project"]) / 1e9
    k = cfg["knn"]["k"]
    agree = float(np.mean((knn_sets(seed_emb, k) == knn_sets(proj_emb, k)).all(axis=1)))
    bytes_ratio = seed_emb.shape[1] * 4 / (proj_emb.shape[1] * proj_emb.dtype.itemsize)
    rows = [
        {"method": "seed loop (batch 8, full logits)", "tokens/s": tps["seed loop"], "dim stored": seed_emb.shape[1], "model GFLOP/s": np.nan},
        {"method": "project (token budget, R p)", "tokens/s": tps["project"], "dim stored": proj_emb.shape[1], "model GFLOP/s": gflops},
    ]  # fmt: skip
    print(table(rows, ".1f"))
    print(f"float32 GEMM ceiling {ceiling:.1f} GFLOP/s; {sum(lengths):,} real tokens; k-NN sets identical for "
          f"{agree:.4f} of prompts (k={k})")  # fmt: skip
    print(result(
        "embed", speedup=tps["project"] / tps["seed loop"], gemm_fraction=gflops / ceiling,
        logit_bytes_ratio=bytes_ratio, neighbour_agreement=agree,
    ))  # fmt: skip


if __name__ == "__main__":
    main()

"""The weights stage vs sklearn NearestNeighbors, and vs the seeds' literal stage on vocab-dim pooled logits.

    python benchmarks/knn_weights.py [--n 28000] [--seed-n 8000] [--repeats 3] [--quick]

A. N=28,000 x 576 (the default model's width; synthetic LM-like embeddings, `common.synthetic`), k=10, in chunk
   stores of 128 rows (embed.chunk_size's default; a second row with 1,024-row stores shows the share of reading
   and verifying 219 small stores; RESULT uses the default). Project: `density.compute_weights` with index flat (what
   `auto` picks at this N): reads the stores, normalises, exact search, weights. sklearn:
   `NearestNeighbors(n_neighbors=k+1).fit(x).kneighbors(x)` on the same (unit) vectors held in memory, then the
   same weight formula. Interleaved repeats, medians. Agreement: fraction of prompts whose k-NN id sets are
   identical (project ids from the exact search the flat stage runs), and the largest relative weight difference.
B. The seeds' literal stage at N=8,000: sklearn `NearestNeighbors(n_neighbors=k+1)` (its default metric,
   Euclidean) on the vocab-dim float32 mean-pooled logits `W p` (W: the real default model's LM head,
   49,152 x 576; p: synthetic pooled states), vs the project's weights stage on the exact Gram transform `R p` it
   stores instead (embed.gram_factor: <W a, W b> = <R a, R b>, V/d = 85x less data). The project's metric is
   cosine, so agreement is checked against sklearn with metric="cosine" on the same logits (timed too).
The last line is machine-readable: RESULT knn speedup_vs_sklearn=<x> neighbour_agreement=<a> speedup_vs_seed=<y>
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from common import PeakRSS, default_model, machine, result, set_threads, synthetic, table, write_stores

K = 10
DENSITY = {"alpha": 1.0, "eps": 1e-6, "max_ratio": None, "postprocess": "none", "length_residual": "none"}


def sklearn_weights(x: np.ndarray, metric: str = "minkowski") -> tuple[np.ndarray, np.ndarray]:
    """(weights, neighbour ids) by sklearn NearestNeighbors(n_neighbors=k+1), self dropped, cosine distances."""
    from sklearn.neighbors import NearestNeighbors

    from density_grpo.density import density_weights

    dist, ids = NearestNeighbors(n_neighbors=K + 1, metric=metric).fit(x).kneighbors(x)
    keep = ids != np.arange(len(x))[:, None]
    keep[keep.all(axis=1), -1] = False  # self not returned (exact duplicates): drop the farthest
    dist, ids = dist[keep].reshape(len(x), K), ids[keep].reshape(len(x), K)
    cos_dist = dist if metric == "cosine" else dist.astype(np.float64) ** 2 / 2  # unit vectors: |a-b|^2 / 2
    mean_dist = np.clip(cos_dist, 0, None).mean(axis=1)
    return density_weights(mean_dist, DENSITY["alpha"], DENSITY["eps"], DENSITY["max_ratio"])[1], ids


def project_weights(paths: list[str]) -> np.ndarray:
    from density_grpo.config import DensityConfig, KNNConfig
    from density_grpo.density import compute_weights

    knn, dens = KNNConfig.from_params({"k": K, "index": "flat"}), DensityConfig.from_params(DENSITY)
    return compute_weights(paths, knn, dens, progress=False)[0]["weight"].to_numpy()


def project_ids(x: np.ndarray) -> np.ndarray:
    """Neighbour ids of the exact search the flat stage runs (on the normalised vectors)."""
    import faiss

    from density_grpo.knn import exact_knn

    u = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(u)
    return exact_knn(u, np.arange(len(u)), K)[1]


def same_sets(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.sort(a, axis=1) == np.sort(b, axis=1)).all(axis=1)))


def part_a(n: int, repeats: int, tmp: str, chunk: int = 128) -> dict:
    x = synthetic(n, 576, "lm", seed=1)
    paths = write_stores(os.path.join(tmp, f"a{chunk}"), x, chunk)
    times = {"project": [], "sklearn": []}
    for _ in range(repeats):
        t = time.perf_counter()
        w_project = project_weights(paths)
        times["project"].append(time.perf_counter() - t)
        t = time.perf_counter()
        w_sklearn, ids_sklearn = sklearn_weights(x)
        times["sklearn"].append(time.perf_counter() - t)
    med = {key: statistics.median(v) for key, v in times.items()}
    return {
        "n": n, "dim": x.shape[1], "store_rows": chunk, "project_s": med["project"], "sklearn_s": med["sklearn"],
        "speedup": med["sklearn"] / med["project"], "same_sets": same_sets(project_ids(x), ids_sklearn),
        "max_rel_weight_diff": float(np.max(np.abs(w_project / w_sklearn - 1))),
    }  # fmt: skip


def part_b(n: int, tmp: str) -> dict:
    import torch
    from safetensors import safe_open

    from density_grpo.embed import gram_factor

    with safe_open(os.path.join(default_model(), "model.safetensors"), "pt") as f:
        key = "lm_head.weight" if "lm_head.weight" in f.keys() else "model.embed_tokens.weight"
        w = f.get_tensor(key).float()
    p = torch.from_numpy(synthetic(n, w.shape[1], "lm", seed=2)) * 10.0  # pooled states: any scale
    t = time.perf_counter()
    r = gram_factor(w)
    gram_s = time.perf_counter() - t
    paths = write_stores(os.path.join(tmp, "b"), (p @ r.T).numpy(), 128, {"model": "smollm2", "source": "logits", "layer": -1})
    t = time.perf_counter()
    w_project = project_weights(paths)
    project_s = time.perf_counter() - t
    logits = (p @ w.T).numpy()  # what the seeds stored: (n, V) float32
    with PeakRSS() as rss:
        t = time.perf_counter()
        sklearn_weights(logits)  # the literal stage: default metric
        seed_s = time.perf_counter() - t
    t = time.perf_counter()
    w_seed, ids_seed = sklearn_weights(logits, metric="cosine")
    cosine_s = time.perf_counter() - t
    return {
        "n": n, "vocab": logits.shape[1], "dim": w.shape[1], "seed_s": seed_s, "seed_peak_gb": rss.peak / 1e9,
        "seed_cosine_s": cosine_s, "project_s": project_s, "gram_factor_s": gram_s, "speedup": seed_s / project_s,
        "same_sets": same_sets(project_ids((p @ r.T).numpy()), ids_seed),
        "max_rel_weight_diff": float(np.max(np.abs(w_project / w_seed - 1))),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=28_000)
    ap.add_argument("--seed-n", type=int, default=8_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="N=5,000, seed N=1,000, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.n, args.seed_n, args.repeats = 5_000, 1_000, 1
    set_threads(args.threads)
    print(machine())
    print(f"{args.threads} threads for both sides; k={K}; A: median of {args.repeats} interleaved repeats", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        a = part_a(args.n, args.repeats, tmp)
        a_big = part_a(args.n, args.repeats, tmp, chunk=1024)
        print("\nA. weights stage (flat) vs sklearn NearestNeighbors, same embeddings, incl. weights")
        print(table([a, a_big]), flush=True)
        b = part_b(args.seed_n, tmp)
        print("\nB. seeds' literal stage (sklearn on vocab-dim pooled logits) vs the stage on R p; same_sets vs cosine")
        print(table([b]))
    print(result("knn", speedup_vs_sklearn=a["speedup"], neighbour_agreement=a["same_sets"], speedup_vs_seed=b["speedup"]))


if __name__ == "__main__":
    main()

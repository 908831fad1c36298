"""Flat vs IVF kNN search on synthetic clustered embeddings: wall time, recall@10, index size.

    python benchmarks/knn_scaling.py [--sizes 5000 10000 20000] [--dim 576] [--repeats 3]

Each size is written as chunk stores to a temp dir, then knn_search runs with index=flat and index=ivf
(default nlist/nprobe, as the pipeline would) alternately, `repeats` times; the table shows medians.
ivf time is the whole knn_search call, including its recall estimate against exact search.
The last line is machine-readable: RESULT knn_scaling n=... flat_s=... ivf_s=... speedup=... recall=...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

try:
    import density_grpo  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from density_grpo.density import knn_search
from density_grpo.store import write_chunk


def write_clustered(root: str, n: int, dim: int, chunk: int, seed: int, latent: int = 32) -> list[str]:
    """n points from a Gaussian mixture in a `latent`-dim space (n/100 centres, varied spread: dense and
    diffuse clusters that overlap), linearly embedded in `dim` dims plus small noise, in chunk stores.
    Overlapping clusters on a low-dim subspace look more like real embeddings than well-separated blobs."""
    rng = np.random.default_rng(seed)
    n_centres = max(1, n // 100)
    centres = rng.standard_normal((n_centres, latent)).astype(np.float32)
    spread = rng.uniform(0.3, 1.5, n_centres).astype(np.float32)
    proj = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    paths = []
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        c = rng.integers(0, n_centres, m)
        z = centres[c] + spread[c, None] * rng.standard_normal((m, latent), dtype=np.float32)
        x = z @ proj + 0.1 * rng.standard_normal((m, dim), dtype=np.float32)
        path = os.path.join(root, f"chunk_{i}.zarr")
        write_chunk(path, [f"{j:016x}" for j in range(start, start + m)], x, {"model": "synthetic", "dim": dim})
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    ap.add_argument("--dim", type=int, default=576)  # SmolLM2-135M hidden size
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=1024, help="rows per chunk store")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss

    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim={args.dim}, k={args.k}, "
        f"median of {args.repeats}",
        flush=True,
    )
    head = (
        f"{'n':>7} {'flat_s':>8} {'ivf_s':>8} {'(train':>7} {'add':>6} {'search':>7} {'recall_est)':>11} "
        f"{'speedup':>7} {'recall@k':>8} {'nlist':>5} {'nprobe':>6} {'flat_MB':>8} {'ivf_MB':>7}"
    )
    print(head)
    print("-" * len(head))
    row = {}
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_clustered(tmp, n, args.dim, args.chunk, args.seed)
            flat_t, ivf_t, ivf_meta = [], [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                _, flat_meta = knn_search(paths, args.k, index="flat", seed=args.seed, progress=False)
                flat_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _, meta = knn_search(paths, args.k, index="ivf", seed=args.seed, progress=False)
                ivf_t.append(time.perf_counter() - t0)
                ivf_meta.append(meta)
        med = lambda key: statistics.median(m[key] for m in ivf_meta)
        row = dict(
            n=n, flat_s=statistics.median(flat_t), ivf_s=statistics.median(ivf_t), recall=ivf_meta[0]["recall_at_k"]
        )
        row["speedup"] = row["flat_s"] / row["ivf_s"]
        print(
            f"{n:>7} {row['flat_s']:>8.2f} {row['ivf_s']:>8.2f} {med('time_train_s'):>7.2f} {med('time_add_s'):>6.2f} "
            f"{med('time_search_s'):>7.2f} {med('time_recall_s'):>11.2f} {row['speedup']:>7.2f} {row['recall']:>8.3f} "
            f"{ivf_meta[0]['nlist']:>5} {ivf_meta[0]['nprobe']:>6} {flat_meta['index_bytes'] / 1e6:>8.1f} "
            f"{ivf_meta[0]['index_bytes'] / 1e6:>7.1f}",
            flush=True,
        )
    print(
        f"RESULT knn_scaling n={row['n']} flat_s={row['flat_s']:.3f} ivf_s={row['ivf_s']:.3f} "
        f"speedup={row['speedup']:.2f} recall={row['recall']:.4f}"
    )


if __name__ == "__main__":
    main()

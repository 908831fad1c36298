"""FAISS sizing without FAISS: which index `knn.index: auto` picks, its lists, training sample and bytes.

The weights stage (density.py) builds exactly what this plans; the rules use `choose_index` to put the resolved
index into the weights job's params, and the memory report uses the byte counts. Importing this is cheap.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

INDEXES = ("flat", "ivf", "ivfpq", "ivfjoin")
PQ_NBITS = 8  # bits per PQ sub-quantizer code
FAISS_BLAS_BLOCK_BYTES = 4096 * 4096 * 4  # brute-force search: query block x database block of float32 scores


def choose_index(requested: str, n: int, dim: int, exact_max: int, max_index_gb: float) -> str:
    """The index `knn.index` resolves to: auto = flat up to exact_max prompts, the IVF self-join beyond while its
    float32 vectors fit max_index_gb, IVF-PQ (codes + float16 vectors for re-ranking) beyond that.
    benchmarks/knn_scale.py measures the choice at 1M prompts; plain ivf is never faster than ivfjoin."""
    if requested != "auto":
        return requested
    if n <= exact_max:
        return "flat"
    return "ivfjoin" if n * dim * 4 <= max_index_gb * 1e9 else "ivfpq"


def default_nlist(n: int, nlist: int | None = None, index: str = "ivf") -> int:
    """IVF lists used for n vectors: knn.nlist (null: ~4·sqrt(n), ivfjoin ~2·sqrt(n): its cost per list is one GEMM,
    so fewer, larger lists cost little), capped so faiss k-means has >= 39 points a list."""
    nl = int(nlist) if nlist is not None else round((2 if index == "ivfjoin" else 4) * math.sqrt(n))
    return max(1, min(nl, n // 39))


def ivf_train_size(n: int, nlist: int, index: str) -> int:
    """Vectors sampled to train IVF lists (64 per list; ivfjoin's 10-iteration spherical k-means: 40) or an IVF-PQ
    index (also >= 39 per PQ centroid)."""
    if index == "ivfjoin":
        return min(n, 40 * nlist)
    return min(n, 64 * nlist) if index == "ivf" else min(n, max(64 * nlist, 39 * (1 << PQ_NBITS)))


def index_bytes(n: int, dim: int, index: str, nlist: int = 0, pq_m: int = 16) -> int:
    """Index size. flat: n·d·4. ivf: n·(d·4 + 8 id) + nlist·d·4 centroids. ivfjoin: the n·d·4 matrix + centroids.
    ivfpq: n·(m code bytes + 8 id + d·2 float16 re-ranking copy) + nlist·d·4 centroids + 256·d·4 PQ codebooks
    (8 bits per sub-quantizer)."""
    if index == "flat":
        return n * dim * 4
    if index == "ivf":
        return n * (dim * 4 + 8) + nlist * dim * 4
    if index == "ivfjoin":
        return n * dim * 4 + nlist * dim * 4
    if index == "ivfpq":
        return n * (pq_m + 8 + 2 * dim) + nlist * dim * 4 + (1 << PQ_NBITS) * dim * 4
    raise ValueError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")


def search_temp_bytes(chunk: int, k: int, dim: int) -> int:
    """Search temporaries for one chunk of queries: (k+1) float32 scores + int64 ids, the self-dropped copy, the
    numpy rescoring of <= 1024 rows at a time (reconstructed neighbours and their product) and a BLAS score block."""
    found = chunk * (k + 1) * 12 + chunk * k * 12 + chunk * k * 8
    return found + 2 * min(chunk, 1024) * k * dim * 4 + FAISS_BLAS_BLOCK_BYTES


def join_temp_bytes(n: int, k: int, nprobe: int, fix_fraction: float, fix_nprobe: int, workers: int = 2) -> int:
    """ivfjoin beside its matrix: the probe map (int32 probes, int64 sort order and probing rows), a running top-(k+1)
    (float32 + int64) per worker, and the reverse-edge pass (2·n·k edges: ids, keys, sort orders)."""
    probe_map = n * max(nprobe, fix_fraction * fix_nprobe) * (4 + 8 + 8)
    return int(probe_map + workers * n * (k + 1) * 12 + 2 * n * k * 40)


def components(n: int, dim: int, chunk: int, knn: Mapping[str, Any], nlist: int) -> dict:
    """Bytes of the weights stage by component (an upper bound: the IVF training sample is freed before the search).

    knn: k and index, and the knobs of that index (the weights job's knn params): recall_sample for approximate
    kinds, pq_m for ivfpq, nprobe, fix_fraction and fix_nprobe for ivfjoin."""
    index, k = knn["index"], knn["k"]
    c = {"index": index_bytes(n, dim, index, nlist, knn["pq_m"] if index == "ivfpq" else 0)}
    if index == "ivfjoin":
        c["join"] = join_temp_bytes(n, k, knn["nprobe"], knn["fix_fraction"], knn["fix_nprobe"])
    if index != "flat":
        rs = min(n, knn["recall_sample"])
        if index == "ivf":
            c["direct_map"] = n * 8
        c["train_sample"] = ivf_train_size(n, nlist, index) * dim * 4
        c["recall"] = rs * dim * 4 + 2 * rs * chunk * 4
    c["chunk"] = 2 * chunk * dim * 4  # read + normalised copy
    c["search_temps"] = search_temp_bytes(chunk, k, dim)
    c["per_prompt"] = n * 200  # ids (unique check, strings), distances, density, weight, output frame
    return c

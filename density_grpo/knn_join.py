"""IVF self-join: every row's k nearest other rows of one in-memory matrix, list by list at GEMM speed.

An IVF search visits, for each query, the `nprobe` lists whose centroids are nearest. In a k-NN graph the queries
are the database rows, so the same (query, list) pairs can be visited list by list: assign every row to its
`nprobe` nearest centroids once, invert that map (for each list: the rows that probe it), and score each list
against all the rows probing it with one BLAS call (faiss.knn), merging into a running top-(k+1) per row. Same
neighbours as faiss IndexIVFFlat at the same centroids and nprobe, but at GEMM speed instead of per-query list
scans, and with no second copy of the vectors (lists are gathered from the one matrix).

IVF misses only ever make a row's mean distance larger, and they concentrate on sparse rows: the high-weight
ones. Two passes repair them:
- reverse edges: if row i found j, offer i to j (similarity is symmetric, so no new dot products);
- fix: search the `fix_fraction` rows with the largest mean distance again over `fix_nprobe` lists
  (their probe sets contain the old ones, so a row's result can only improve).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

log = logging.getLogger(__name__)
IP = faiss.METRIC_INNER_PRODUCT
KMEANS_ITER = 10


def train_centroids(x: np.ndarray, nlist: int, n_train: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (nlist, d) on a seeded uniform sample of n_train rows."""
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=min(n_train, len(x)), replace=False))
    km = faiss.Kmeans(x.shape[1], nlist, niter=KMEANS_ITER, spherical=True, seed=seed, max_points_per_centroid=1 << 20)
    km.train(np.ascontiguousarray(x[rows]))
    return km.centroids


def assign(x: np.ndarray, rows: np.ndarray, centroids: np.ndarray, nprobe: int, block: int = 16384) -> np.ndarray:
    """The `nprobe` nearest centroids of each x[rows], nearest first: (len(rows), nprobe) int32 (exact, by GEMM)."""
    out = np.empty((len(rows), nprobe), dtype=np.int32)
    for s in range(0, len(rows), block):
        _, lab = faiss.knn(np.ascontiguousarray(x[rows[s : s + block]]), centroids, nprobe, metric=IP)
        out[s : s + block] = lab
    return out


def _merge(d: np.ndarray, i: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Best kk columns (largest similarity) of each row, unordered."""
    o = np.argpartition(-d, kk - 1, axis=1)[:, :kk]
    return np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)


def join(
    x: np.ndarray, rows: np.ndarray, probes: np.ndarray, order: np.ndarray, offsets: np.ndarray, k1: int, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k1 (similarity, id) of each x[rows] over the lists it probes (self included), unordered.

    order/offsets: database rows grouped by list (list l is order[offsets[l]:offsets[l + 1]]).
    `workers` Python threads each take an interleaved share of the lists (heaviest first, so shares balance)
    with their own running top-k1 and a single-threaded faiss; faiss.knn and numpy release the GIL.
    """
    nlist, m = len(offsets) - 1, len(rows)
    flat = probes.ravel()
    by_list = np.argsort(flat, kind="stable")
    prober = by_list // probes.shape[1]  # positions in `rows` of the rows probing each list, list by list
    poffs = np.searchsorted(flat[by_list], np.arange(nlist + 1))
    del by_list
    work = np.diff(poffs) * np.diff(offsets)
    shares = [np.argsort(-work, kind="stable")[w::workers] for w in range(workers)]

    def run(share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(1)  # per OS thread: the workers are the parallelism
        best_d = np.full((m, k1), -np.inf, dtype=np.float32)
        best_i = np.full((m, k1), -1, dtype=np.int64)
        for lst in share:
            qi = prober[poffs[lst] : poffs[lst + 1]]
            ids = order[offsets[lst] : offsets[lst + 1]]
            if not len(qi) or not len(ids):
                continue
            d, i = faiss.knn(x[rows[qi]], x[ids], min(k1, len(ids)), metric=IP)
            best_d[qi], best_i[qi] = _merge(np.hstack([best_d[qi], d]), np.hstack([best_i[qi], ids[i]]), k1)
        return best_d, best_i

    if workers == 1:
        threads = faiss.omp_get_max_threads()
        try:
            return run(shares[0])
        finally:
            faiss.omp_set_num_threads(threads)
    with ThreadPoolExecutor(workers) as ex:
        parts = list(ex.map(run, shares))
    return _merge(np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts]), k1)


def drop_self(sim: np.ndarray, lab: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k of k+1 unordered results: each row's own id removed, or where absent its least similar result."""
    o = np.argsort(-sim, axis=1, kind="stable")
    sim, lab = np.take_along_axis(sim, o, 1), np.take_along_axis(lab, o, 1)
    drop = lab == rows[:, None]
    drop[~drop.any(axis=1), -1] = True
    m, k1 = lab.shape
    return sim[~drop].reshape(m, k1 - 1), lab[~drop].reshape(m, k1 - 1)


def best_distinct(sim: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k distinct ids of each row among candidate columns (ids -1: no candidate), unordered."""
    o = np.argsort(lab, axis=1, kind="stable")
    lab, sim = np.take_along_axis(lab, o, 1), np.take_along_axis(sim, o, 1).copy()
    repeat = np.zeros(lab.shape, dtype=bool)
    repeat[:, 1:] = lab[:, 1:] == lab[:, :-1]
    sim[repeat | (lab < 0)] = -np.inf
    return _merge(sim, lab, k)


def reverse_edges(sim: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """If row i found j, offer i to j; each row keeps its best k distinct neighbours (sorted, most similar first).

    Repairs IVF's asymmetric misses (i probed j's list, j did not probe i's) at the cost of a few sorts.
    """
    n = len(lab)
    src = np.repeat(np.arange(n, dtype=np.int64), k)
    dst = lab.ravel().astype(np.int64)
    s = np.concatenate([sim.ravel(), sim.ravel()])
    row, col = np.concatenate([src, dst]), np.concatenate([dst, src])
    del src, dst
    _, first = np.unique(row * n + col, return_index=True)  # each (row, col) edge once
    row, col, s = row[first], col[first], s[first]
    o = np.lexsort((-s, row))
    row, col, s = row[o], col[o], s[o]
    rank = np.arange(len(row)) - np.searchsorted(row, np.arange(n))[row]
    keep = rank < k  # every row has >= k distinct edges: its own k
    return s[keep].reshape(n, k), col[keep].reshape(n, k)


def rescore(x: np.ndarray, rows: np.ndarray, lab: np.ndarray, block: int = 2048) -> np.ndarray:
    """Similarity of each x[rows] to its neighbours, row by row in float32 (BLAS results depend on how rows were
    batched; numpy's row-wise sum does not)."""
    out = np.empty(lab.shape, dtype=np.float64)
    for s in range(0, len(rows), block):
        out[s : s + block] = np.einsum("ikd,id->ik", x[lab[s : s + block]], x[rows[s : s + block]])
    return out


def ivf_join(
    x: np.ndarray, k: int, nlist: int, nprobe: int, n_train: int, fix_fraction: float, fix_nprobe: int, seed: int,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, dict]:  # fmt: skip
    """k nearest other rows of every row of unit-norm x: (similarity (n, k) float64, ids (n, k) int64, info).

    info: the phase times (train, assign, search, reverse, fix, in s), the lists and the rows fixed.
    """
    n = len(x)
    times, all_rows = {}, np.arange(n, dtype=np.int64)
    t = time.perf_counter()
    centroids = train_centroids(x, min(nlist, n), n_train, seed)
    nlist = len(centroids)
    nprobe, fix_nprobe = min(nprobe, nlist), min(max(fix_nprobe, nprobe), nlist)
    times["train"], t = time.perf_counter() - t, time.perf_counter()
    probes = assign(x, all_rows, centroids, nprobe)
    order = np.argsort(probes[:, 0], kind="stable")  # lists: every row in its nearest centroid's list
    offsets = np.searchsorted(probes[order, 0], np.arange(nlist + 1))
    times["assign"], t = time.perf_counter() - t, time.perf_counter()
    sim, lab = drop_self(*join(x, all_rows, probes, order, offsets, k + 1, workers), all_rows)
    del probes
    short = np.nonzero((lab < 0).any(axis=1))[0]  # probed lists held < k+1 rows: search those rows exactly
    if len(short):
        sim[short], lab[short] = exact_knn(x, short, k)
    times["search"], t = time.perf_counter() - t, time.perf_counter()
    sim, lab = reverse_edges(sim, lab, k)
    times["reverse"], t = time.perf_counter() - t, time.perf_counter()
    n_fix = int(round(fix_fraction * n)) if fix_nprobe > nprobe else 0
    if n_fix:
        mean_dist = np.clip(1.0 - sim, 0.0, None).mean(axis=1)
        fix = np.sort(np.argpartition(-mean_dist, n_fix - 1)[:n_fix])
        probes = assign(x, fix, centroids, fix_nprobe)
        s2, l2 = drop_self(*join(x, fix, probes, order, offsets, k + 1, workers), fix)
        sim[fix], lab[fix] = best_distinct(np.hstack([sim[fix], s2]), np.hstack([lab[fix], l2]), k)
        sim, lab = reverse_edges(sim, lab, k)
    times["fix"] = time.perf_counter() - t
    sizes = np.diff(offsets)
    info = {
        "times": times, "n_fixed": n_fix, "n_exact": len(short), "nlist": nlist, "nprobe": nprobe, "fix_nprobe": fix_nprobe,
        "list_imbalance": float(nlist * np.sum((sizes / n) ** 2)),  # 1 = equal lists; join work grows with it
    }  # fmt: skip
    return rescore(x, all_rows, lab), lab, info


def exact_knn(
    x: np.ndarray, rows: np.ndarray, k: int, q_block: int = 8192, block: int = 1 << 17
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest other rows of x[rows] by BLAS over blocks of queries and of x: (similarity, ids), most similar
    first (a zero vector, similarity 0 to all, keeps its k first ties)."""
    sim = np.empty((len(rows), k), dtype=np.float32)
    lab = np.empty((len(rows), k), dtype=np.int64)
    for qs in range(0, len(rows), q_block):
        r = rows[qs : qs + q_block]
        q = np.ascontiguousarray(x[r])
        best_d = np.full((len(r), k + 1), -np.inf, dtype=np.float32)
        best_i = np.full((len(r), k + 1), -1, dtype=np.int64)
        for s in range(0, len(x), block):
            d, i = faiss.knn(q, x[s : s + block], min(k + 1, len(x) - s), metric=IP)
            best_d, best_i = _merge(np.hstack([best_d, d]), np.hstack([best_i, i + s]), k + 1)
        sim[qs : qs + q_block], lab[qs : qs + q_block] = drop_self(best_d, best_i, r)
    return sim, lab

"""k-nearest-neighbour search over the prompt embeddings: one entry (`search`), one function per index kind.

The vectors come from the chunk stores (`Chunks`), read in order, post-processed and L2-normalised, so the inner
product is cosine similarity and the k-NN distance is `1 - ip` (clipped at 0; in [0, 2]; a zero vector stays zero
and sits at distance 1 from everything). Every kind searches for k+1 neighbours, removes self by id (`drop_self`)
and rescores the k neighbours row by row (`rescore`), so results do not depend on the chunking or batching. Ids are
global row numbers in chunk order.

- flat: all vectors in one matrix (the size of a flat index), searched exactly by BLAS in blocks (`exact_knn`).
- ivf, ivfpq: a FAISS index, streamed: pass 1 adds each chunk, pass 2 searches each chunk against it; ivfpq
  re-ranks rerank·(k+1) PQ candidates per row by float16 copies of the vectors (IndexRefine).
- ivfjoin: the IVF self-join (`ivf_join`) over the one matrix.

The approximate kinds measure recall@k and the error of the mean distance against exact search on a seeded
sample of rows (`sample_check`). Memory: at most the index plus one chunk of vectors (plus a training sample for
IVF and the recall queries); flat and ivfjoin hold all normalised vectors in one float32 matrix and no index.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import faiss
import numpy as np
import pandas as pd

from density_grpo.config import KNNConfig
from density_grpo.errors import UserError
from density_grpo.index_plan import PQ_NBITS, default_nlist, index_bytes, ivf_train_size
from density_grpo.monitor import bar
from density_grpo.stats import spearman
from density_grpo.store import read_chunk, read_shape

log = logging.getLogger(__name__)
IP = faiss.METRIC_INNER_PRODUCT
DUP_DIST = 1e-6  # nearest other neighbour this close counts as an exact duplicate
RESCORE_BLOCK = 2048  # rows rescored at a time: a (block, k, d) float32 gather of neighbour vectors
EXACT_QUERY_BLOCK, EXACT_BASE_BLOCK = 8192, 1 << 17  # exact_knn: queries x database rows per BLAS call
ASSIGN_BLOCK = 16384  # rows assigned to their nearest centroids per BLAS call
KMEANS_ITER = 10
# faiss (1.15) uses BLAS for brute-force scores only when a search has more queries than this threshold (default
# 128,000); below it a SIMD kernel runs ~14x slower here (128-row chunks: 6.9 vs 100 GFLOP/s). Same results.
faiss.cvar.distance_compute_blas_threshold = 20
faiss.cvar.distance_compute_blas_database_bs = 4096  # 4096 x 4096 score tiles (64 MB), not 4096 x 1024: fewer passes


# -----------------------------------------------------------------------------
# the vectors: chunk stores, streamed


def chunk_shapes(paths: list[str]) -> list[tuple[int, int]]:
    """(n, dim) of every chunk from the Zarr metadata alone; all chunks must share one dim."""
    if not paths:
        raise UserError("no embedding chunks to index (the embed step produced no chunk_*.zarr stores)")
    shapes: list[tuple[int, int]] = []
    for p in paths:
        shape = read_shape(p)
        if len(shape) != 2:
            raise UserError(f"{p}: embeddings must be 2-D (n, dim), got shape {shape}")
        if shapes and shape[1] != shapes[0][1]:
            raise UserError(f"{p}: embedding dim {shape[1]} differs from dim {shapes[0][1]} of {paths[0]}")
        shapes.append((int(shape[0]), int(shape[1])))
    return shapes


def read_vectors(path: str) -> tuple[list[str], np.ndarray]:
    """One chunk's prompt ids and raw embeddings, which must be finite."""
    ids, emb, _ = read_chunk(path)
    if not np.isfinite(emb).all():
        raise UserError(f"{path}: embeddings contain NaN or inf")
    return ids, emb


@dataclass(frozen=True)
class Chunks:
    """The vectors source: chunk stores in order, each transformed by `post` (raw embeddings -> float64, or None)
    and L2-normalised into a float32 copy (zero vectors stay zero)."""

    paths: list[str]
    shapes: list[tuple[int, int]]
    post: Callable[[np.ndarray], np.ndarray] | None
    progress: bool

    @classmethod
    def open(cls, paths: Iterable[Any], progress: bool = True) -> Chunks:
        """The stores at `paths`, shapes checked (UserError naming the odd chunk), no post-processing yet."""
        paths = [str(p) for p in paths]
        return cls(paths, chunk_shapes(paths), None, progress)

    @property
    def n(self) -> int:
        return sum(s[0] for s in self.shapes)

    @property
    def dim(self) -> int:
        return self.shapes[0][1]

    def raw(self, desc: str) -> Iterator[np.ndarray]:
        """Each chunk's raw embeddings as float64, in order (for fitting the post-processing)."""
        for p in bar(self.paths, desc=desc, unit="chunk", disable=not self.progress, leave=False):
            yield read_vectors(p)[1].astype(np.float64)

    def stream(self, desc: str) -> Iterator[tuple[int, list[str], np.ndarray]]:
        """(global row offset, prompt ids, normalised vectors) of each chunk, in order."""
        start = 0
        for p in bar(self.paths, desc=desc, unit="chunk", disable=not self.progress, leave=False):
            ids, emb = read_vectors(p)
            x = np.array(emb if self.post is None else self.post(emb), dtype=np.float32, order="C", copy=True)
            faiss.normalize_L2(x)
            yield start, ids, x
            start += len(ids)

    def matrix(self) -> tuple[list[str], np.ndarray]:
        """All prompt ids and normalised vectors in one (n, dim) float32 matrix, read once."""
        x = np.empty((self.n, self.dim), dtype=np.float32)
        prompt_ids: list[str] = []
        for start, ids, xc in self.stream("knn load"):
            x[start : start + len(xc)] = xc
            prompt_ids.extend(ids)
        return prompt_ids, x

    def slices(self, x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(row offset, rows) of the in-memory matrix `x`, chunk by chunk: what `stream` would read."""
        start = 0
        for rows, _ in self.shapes:
            yield start, x[start : start + rows]
            start += rows

    def sample(self, n_train: int, seed: int) -> np.ndarray:
        """A seeded uniform sample of n_train normalised rows, gathered chunk by chunk."""
        rows = np.sort(np.random.default_rng(seed).choice(self.n, size=n_train, replace=False))
        parts = []
        for start, _, x in self.stream("knn train sample"):
            sel = rows[(rows >= start) & (rows < start + len(x))] - start
            parts.append(x[sel])
        return np.ascontiguousarray(np.concatenate(parts))


# -----------------------------------------------------------------------------
# exact search, self removal, rescoring


def _merge(d: np.ndarray, i: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Best kk columns (largest similarity) of each row, unordered."""
    o = np.argpartition(-d, kk - 1, axis=1)[:, :kk]
    return np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)


def drop_self(sim: np.ndarray, lab: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k of k+1 unordered results, most similar first: each row's own id removed, or where absent its least
    similar result."""
    o = np.argsort(-sim, axis=1, kind="stable")
    sim, lab = np.take_along_axis(sim, o, 1), np.take_along_axis(lab, o, 1)
    drop = lab == rows[:, None]
    drop[~drop.any(axis=1), -1] = True
    m, k1 = lab.shape
    return sim[~drop].reshape(m, k1 - 1), lab[~drop].reshape(m, k1 - 1)


def exact_knn(x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest other rows of x[rows] by BLAS over blocks of queries and of x: (similarity, ids), most similar
    first (a zero vector, similarity 0 to all, keeps its k first ties)."""
    sim = np.empty((len(rows), k), dtype=np.float32)
    lab = np.empty((len(rows), k), dtype=np.int64)
    for qs in range(0, len(rows), EXACT_QUERY_BLOCK):
        r = rows[qs : qs + EXACT_QUERY_BLOCK]
        q = np.ascontiguousarray(x[r])
        best_d = np.full((len(r), k + 1), -np.inf, dtype=np.float32)
        best_i = np.full((len(r), k + 1), -1, dtype=np.int64)
        for s in range(0, len(x), EXACT_BASE_BLOCK):
            d, i = faiss.knn(q, x[s : s + EXACT_BASE_BLOCK], min(k + 1, len(x) - s), metric=IP)
            best_d, best_i = _merge(np.hstack([best_d, d]), np.hstack([best_i, i + s]), k + 1)
        sim[qs : qs + EXACT_QUERY_BLOCK], lab[qs : qs + EXACT_QUERY_BLOCK] = drop_self(best_d, best_i, r)
    return sim, lab


Vectors = np.ndarray | Callable[[np.ndarray], np.ndarray]  # a matrix the ids index, or ids -> their vectors


def rescore(queries: np.ndarray, lab: np.ndarray, vectors: Vectors) -> np.ndarray:
    """Similarity of each query row to its neighbours `lab` (m, k), row by row in float32, as float64.

    vectors: the matrix the ids index, or a function from an id array to those vectors (an index's stored copies).
    BLAS and faiss scores depend on how rows were batched; numpy's row-wise products do not, which makes the
    reported distances independent of the chunk size.
    """
    gather = vectors.__getitem__ if isinstance(vectors, np.ndarray) else vectors
    out = np.empty(lab.shape, dtype=np.float64)
    for s in range(0, len(lab), RESCORE_BLOCK):
        block = slice(s, s + RESCORE_BLOCK)
        out[block] = np.einsum("ikd,id->ik", gather(lab[block]), queries[block])
    return out


def stored_vectors(index: faiss.Index) -> Callable[[np.ndarray], np.ndarray]:
    """ids -> the vectors `index` stores for them (float32; ivfpq: its float16 copies), shaped (*ids.shape, d)."""
    return lambda ids: index.reconstruct_batch(ids.ravel()).reshape(*ids.shape, -1)


# -----------------------------------------------------------------------------
# accuracy of an approximate search on a sample of rows


def recall_rows(n: int, knn: KNNConfig) -> np.ndarray:
    """The seeded sample of knn.recall_sample rows whose neighbours are checked against exact search."""
    return np.sort(np.random.default_rng(knn.seed + 1).choice(n, size=min(knn.recall_sample, n), replace=False))


def sample_check(
    blocks: Iterable[tuple[int, np.ndarray]], q_rows: np.ndarray, q_vecs: np.ndarray, found: np.ndarray,
    reported: np.ndarray | None,
) -> dict[str, float]:  # fmt: skip
    """The accuracy of a search on the rows q_rows (vectors q_vecs, found neighbour ids `found`), by streamed brute
    force over `blocks` ((row offset, normalised rows) in order): see sample_accuracy. reported: the mean distances
    the search reports, where they are not the exact similarities of the found neighbours (ivfpq)."""
    m, k = found.shape
    top = np.full((m, k), -np.inf, dtype=np.float32)  # running exact top-k similarities (self excluded)
    found_sim = np.full((m, k), -np.inf, dtype=np.float32)  # exact similarity of each found neighbour
    for start, x in blocks:
        end = start + len(x)
        sim = q_vecs @ x.T
        r, c = np.nonzero((found >= start) & (found < end))
        found_sim[r, c] = sim[r, found[r, c] - start]
        own = np.nonzero((q_rows >= start) & (q_rows < end))[0]
        sim[own, q_rows[own] - start] = -np.inf
        both = np.concatenate([top, sim], axis=1)
        top = np.partition(both, both.shape[1] - k, axis=1)[:, -k:]
    return sample_accuracy(found_sim, top, reported)


def sample_accuracy(approx_sim: np.ndarray, exact_sim: np.ndarray, approx_dist: np.ndarray | None = None) -> dict[str, float]:
    """recall@k and the relative error of each row's mean k-NN distance against exact search, on a sample of rows.

    approx_sim: exact similarities of the k neighbours the search found (m, k); exact_sim: the true top-k;
    approx_dist: the mean distances the search reports, where they are not those of approx_sim (ivfpq).
    Recall is tie-aware: a found neighbour counts when its similarity reaches the exact k-th best (with exact
    duplicates any of the tied ids is right); without ties it is id-set recall@k. A miss can only make a row's
    mean distance larger, and misses concentrate on sparse rows, which the average hides: so the error is also
    reported for the top decile of exact distance (the top weight decile for alpha > 0).
    """
    kth = exact_sim.min(axis=1, keepdims=True)
    approx_d = np.clip(1.0 - approx_sim.astype(np.float64), 0.0, None).mean(axis=1) if approx_dist is None else approx_dist
    exact_d = np.clip(1.0 - exact_sim.astype(np.float64), 0.0, None).mean(axis=1)
    rel = (approx_d - exact_d) / np.maximum(exact_d, DUP_DIST)
    top = exact_d >= np.quantile(exact_d, 0.9)
    rho = spearman(approx_d, exact_d) if len(rel) > 1 else None
    return {
        "recall_at_k": float(np.mean(approx_sim >= kth - 1e-6)),
        "dist_rel_err_mean": float(np.mean(np.abs(rel))),
        "dist_rel_err_median": float(np.median(np.abs(rel))),
        "dist_rel_err_p99": float(np.quantile(np.abs(rel), 0.99)),
        "dist_rel_err_max": float(np.abs(rel).max()),
        "top_decile_dist_rel_err_mean": float(np.mean(np.abs(rel[top]))),
        "top_decile_dist_rel_err_median": float(np.median(np.abs(rel[top]))),
        "top_decile_dist_rel_err_max": float(np.abs(rel[top]).max()),
        "sample_dist_spearman": 1.0 if rho is None else rho,
    }


EXACT_ACCURACY = {
    "recall_at_k": 1.0, "dist_rel_err_mean": 0.0, "dist_rel_err_median": 0.0, "dist_rel_err_p99": 0.0,
    "dist_rel_err_max": 0.0, "top_decile_dist_rel_err_mean": 0.0, "top_decile_dist_rel_err_median": 0.0,
    "top_decile_dist_rel_err_max": 0.0, "sample_dist_spearman": 1.0,
}  # fmt: skip


# -----------------------------------------------------------------------------
# the search: one entry, one function per index kind


def _summary(sim: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's mean distance to its k neighbours (similarities sim (m, k)) and the rows with an exact duplicate."""
    dist = np.clip(1.0 - sim, 0.0, None)
    return dist.mean(axis=1), int((dist.min(axis=1) <= DUP_DIST).sum())


@dataclass
class Found:
    """What one index kind found: prompt ids and mean k-NN distances in row order, the rows with an exact duplicate,
    its metadata (settings, accuracy) and phase times (s)."""

    prompt_ids: list[str]
    mean_dist: np.ndarray
    n_dup: int
    meta: dict[str, Any]
    times: dict[str, float]

    @classmethod
    def of(cls, prompt_ids: list[str], sim: np.ndarray, meta: dict[str, Any], times: dict[str, float]) -> Found:
        return cls(prompt_ids, *_summary(sim), meta, times)


def flat(chunks: Chunks, knn: KNNConfig) -> Found:
    """Exact search of all vectors in one matrix by BLAS in blocks of rows."""
    t0 = time.perf_counter()
    prompt_ids, x = chunks.matrix()
    t_load, t0 = time.perf_counter() - t0, time.perf_counter()
    sim = rescore(x, exact_knn(x, np.arange(len(x), dtype=np.int64), knn.k)[1], x)
    times = {"time_add_s": t_load, "time_search_s": time.perf_counter() - t0}
    return Found.of(prompt_ids, sim, {**EXACT_ACCURACY, "recall_estimated": False}, times)


def ivf(chunks: Chunks, knn: KNNConfig) -> Found:
    """IVF-Flat: the vectors in inverted lists, streamed (see _index_search)."""
    nl = default_nlist(chunks.n, knn.nlist, "ivf")
    quantizer = faiss.IndexFlatIP(chunks.dim)
    index = faiss.IndexIVFFlat(quantizer, chunks.dim, nl, IP)
    return _index_search(chunks, knn, index, index, {})


def ivfpq(chunks: Chunks, knn: KNNConfig) -> Found:
    """IVF-PQ: PQ codes in inverted lists, rerank·(k+1) candidates per row re-ranked by float16 copies of the
    vectors (raw PQ scores bias distances), streamed (see _index_search)."""
    n, dim, pq_m = chunks.n, chunks.dim, knn.pq_m
    if dim % pq_m:
        raise UserError(f"knn.pq_m={pq_m} must divide the embedding dim {dim}")
    if n < (1 << PQ_NBITS):
        raise UserError(f"knn.index=ivfpq needs at least {1 << PQ_NBITS} prompts to train its codebooks, got {n}")
    quantizer = faiss.IndexFlatIP(dim)
    codes = faiss.IndexIVFPQ(quantizer, dim, default_nlist(n, knn.nlist, "ivfpq"), pq_m, PQ_NBITS, IP)
    codes.pq.cp.seed = knn.seed
    vectors = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, IP)
    index = faiss.IndexRefine(codes, vectors)
    index.k_factor = float(knn.rerank)
    return _index_search(chunks, knn, index, codes, {"pq_m": int(pq_m), "rerank": int(knn.rerank)})


def _index_search(chunks: Chunks, knn: KNNConfig, index: faiss.Index, lists: faiss.IndexIVF, meta: dict) -> Found:
    """ivf/ivfpq with a FAISS `index` whose inverted lists are `lists`: train on a seeded sample, pass 1 adds every
    chunk, pass 2 searches every chunk for k+1 neighbours (rows whose probes found fewer: again over every list),
    drops self and rescores by the stored vectors; then the sample check. meta: the kind's own settings."""
    n, k, kind = chunks.n, knn.k, knn.index
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    n_train = ivf_train_size(n, lists.nlist, kind)
    lists.cp.seed = knn.seed
    index.train(chunks.sample(n_train, knn.seed))
    lists.nprobe = min(int(knn.nprobe), lists.nlist)
    nprobe = int(lists.nprobe)
    meta = {"nlist": int(lists.nlist), "nprobe": nprobe, "n_train": n_train, **meta}
    times["time_train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _, _, x in chunks.stream("knn add"):
        if len(x):
            index.add(x)
    if kind == "ivf":
        lists.make_direct_map()  # lets rescore reconstruct stored vectors by id
    times["time_add_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()  # keep the recall queries' vectors and results on the way
    q_rows = recall_rows(n, knn)
    q_vecs = np.zeros((len(q_rows), chunks.dim), dtype=np.float32)
    q_found = np.zeros((len(q_rows), k), dtype=np.int64)
    prompt_ids: list[str] = []
    mean_dist = np.empty(n, dtype=np.float64)
    n_dup = n_refined = 0
    for start, ids, x in chunks.stream("knn search"):
        if not len(x):
            continue
        sim, lab = index.search(x, k + 1)
        missing = (lab < 0).any(axis=1)
        if missing.any():  # an IVF probe found < k+1 candidates: search those rows over every list
            lists.nprobe = lists.nlist
            sim[missing], lab[missing] = index.search(np.ascontiguousarray(x[missing]), k + 1)
            lists.nprobe = nprobe
            n_refined += int(missing.sum())
        _, lab = drop_self(sim, lab, np.arange(start, start + len(x), dtype=np.int64))
        mean_dist[start : start + len(x)], dup = _summary(rescore(x, lab, stored_vectors(index)))
        n_dup += dup
        prompt_ids.extend(ids)
        sel = np.nonzero((q_rows >= start) & (q_rows < start + len(x)))[0]
        q_vecs[sel] = x[q_rows[sel] - start]
        q_found[sel] = lab[q_rows[sel] - start]
    times["time_search_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    blocks = ((start, x) for start, _, x in chunks.stream("knn recall"))
    reported = mean_dist[q_rows] if kind == "ivfpq" else None  # ivfpq: scored by the float16 copies
    acc = sample_check(blocks, q_rows, q_vecs, q_found, reported)
    times["time_recall_s"] = time.perf_counter() - t0
    meta.update(acc, recall_estimated=True, recall_sample=len(q_rows), n_refined=n_refined)
    return Found(prompt_ids, mean_dist, n_dup, meta, times)


def ivfjoin(chunks: Chunks, knn: KNNConfig) -> Found:
    """The IVF self-join (ivf_join) over all vectors in one matrix, then the sample check on that matrix."""
    t0 = time.perf_counter()
    prompt_ids, x = chunks.matrix()
    t_load = time.perf_counter() - t0
    n = len(x)
    nl = default_nlist(n, knn.nlist, "ivfjoin")
    n_train = ivf_train_size(n, nl, "ivfjoin")
    workers = max(1, faiss.omp_get_max_threads())
    sim, lab, info = ivf_join(x, knn, nl, n_train, workers)
    t = info["times"]
    log.info("ivfjoin: " + ", ".join(f"{key} {v:.1f}s" for key, v in t.items()))
    t0 = time.perf_counter()
    q_rows = recall_rows(n, knn)
    acc = sample_check(chunks.slices(x), q_rows, x[q_rows], lab[q_rows], None)
    meta = {
        "nlist": info["nlist"], "nprobe": info["nprobe"], "n_train": n_train, "fix_fraction": knn.fix_fraction,
        "fix_nprobe": info["fix_nprobe"], "n_fixed": info["n_fixed"], "n_refined": info["n_exact"],
        "list_imbalance": round(info["list_imbalance"], 4), "workers": workers, **acc, "recall_estimated": True,
        "recall_sample": len(q_rows),
    }  # fmt: skip
    times = {
        "time_train_s": t["train"], "time_add_s": t_load + t["assign"], "time_search_s": t["search"],
        "time_reverse_s": t["reverse"], "time_fix_s": t["fix"], "time_recall_s": time.perf_counter() - t0,
    }  # fmt: skip
    return Found.of(prompt_ids, sim, meta, times)


KINDS: dict[str, Callable[[Chunks, KNNConfig], Found]] = {"flat": flat, "ivf": ivf, "ivfpq": ivfpq, "ivfjoin": ivfjoin}


def search(chunks: Chunks, knn: KNNConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Mean cosine distance of every prompt to its k nearest other prompts, by the index kind knn.index.

    Returns a frame (prompt_id, knn_mean_dist) in chunk/row order, and metadata: n, k, dim, the index and its
    settings, its accuracy against exact search (exact for flat), exact duplicates, index bytes, phase times.
    """
    n, dim, k, kind = chunks.n, chunks.dim, knn.k, knn.index
    if kind not in KINDS:
        raise ValueError(f"knn.index must be resolved (index_plan.choose_index): one of {', '.join(KINDS)}, not {kind!r}")
    if k >= n:  # the pipeline checks this at the prompts checkpoint (config.check_prompt_counts)
        raise ValueError(f"k={k} neighbours need at least {k + 1} vectors, got {n}")
    found = KINDS[kind](chunks, knn)
    meta = {
        "n": n, "k": int(k), "dim": dim, "index": kind, **found.meta, "n_exact_duplicates": found.n_dup,
        "index_bytes": index_bytes(n, dim, kind, found.meta.get("nlist", 0), found.meta.get("pq_m", 0)),
        **{key: round(v, 6) for key, v in found.times.items()},
    }  # fmt: skip
    df = pd.DataFrame({"prompt_id": pd.Series(found.prompt_ids, dtype=str), "knn_mean_dist": found.mean_dist})
    return df, meta


# -----------------------------------------------------------------------------
# the IVF self-join
#
# An IVF search visits, for each query, the `nprobe` lists whose centroids are nearest. In a k-NN graph the queries
# are the database rows, so the same (query, list) pairs can be visited list by list: assign every row to its
# `nprobe` nearest centroids once, invert that map (for each list: the rows that probe it), and score each list
# against all the rows probing it with one BLAS call (faiss.knn), merging into a running top-(k+1) per row. Same
# neighbours as faiss IndexIVFFlat at the same centroids and nprobe, but at GEMM speed instead of per-query list
# scans, and with no second copy of the vectors (lists are gathered from the one matrix).
#
# IVF misses only ever make a row's mean distance larger, and they concentrate on sparse rows: the high-weight
# ones. Two passes repair them:
# - reverse edges: if row i found j, offer i to j (similarity is symmetric, so no new dot products);
# - fix: search the `fix_fraction` rows with the largest mean distance again over `fix_nprobe` lists
#   (their probe sets contain the old ones, so a row's result can only improve).


def train_centroids(x: np.ndarray, nlist: int, n_train: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (nlist, d) on a seeded uniform sample of n_train rows."""
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=min(n_train, len(x)), replace=False))
    km = faiss.Kmeans(x.shape[1], nlist, niter=KMEANS_ITER, spherical=True, seed=seed, max_points_per_centroid=1 << 20)
    km.train(np.ascontiguousarray(x[rows]))
    return km.centroids


def assign(x: np.ndarray, rows: np.ndarray, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """The `nprobe` nearest centroids of each x[rows], nearest first: (len(rows), nprobe) int32 (exact, by GEMM)."""
    out = np.empty((len(rows), nprobe), dtype=np.int32)
    for s in range(0, len(rows), ASSIGN_BLOCK):
        _, lab = faiss.knn(np.ascontiguousarray(x[rows[s : s + ASSIGN_BLOCK]]), centroids, nprobe, metric=IP)
        out[s : s + ASSIGN_BLOCK] = lab
    return out


def join(
    x: np.ndarray, rows: np.ndarray, probes: np.ndarray, lists: tuple[np.ndarray, np.ndarray], k1: int, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k1 (similarity, id) of each x[rows] over the lists it probes (self included), unordered.

    lists: (order, offsets), the database rows grouped by list (list l is order[offsets[l]:offsets[l + 1]]).
    `workers` Python threads each take an interleaved share of the lists (heaviest first, so shares balance)
    with their own running top-k1 and a single-threaded faiss; faiss.knn and numpy release the GIL.
    """
    order, offsets = lists
    nlist, m = len(offsets) - 1, len(rows)
    flat_probes = probes.ravel()
    by_list = np.argsort(flat_probes, kind="stable")
    prober = by_list // probes.shape[1]  # positions in `rows` of the rows probing each list, list by list
    poffs = np.searchsorted(flat_probes[by_list], np.arange(nlist + 1))
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


def ivf_join(
    x: np.ndarray, knn: KNNConfig, nlist: int, n_train: int, workers: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """k nearest other rows of every row of unit-norm x: (similarity (n, k) float64, ids (n, k) int64, info).

    knn: k, nprobe, fix_fraction, fix_nprobe and the seed of the k-means sample; nlist lists trained on n_train
    rows. info: the phase times (train, assign, search, reverse, fix, in s), the lists and the rows fixed.
    """
    n, k = len(x), knn.k
    times, all_rows = {}, np.arange(n, dtype=np.int64)
    t = time.perf_counter()
    centroids = train_centroids(x, min(nlist, n), n_train, knn.seed)
    nlist = len(centroids)
    nprobe, fix_nprobe = min(knn.nprobe, nlist), min(max(knn.fix_nprobe, knn.nprobe), nlist)
    times["train"], t = time.perf_counter() - t, time.perf_counter()
    probes = assign(x, all_rows, centroids, nprobe)
    order = np.argsort(probes[:, 0], kind="stable")  # lists: every row in its nearest centroid's list
    lists = order, np.searchsorted(probes[order, 0], np.arange(nlist + 1))
    times["assign"], t = time.perf_counter() - t, time.perf_counter()
    sim, lab = drop_self(*join(x, all_rows, probes, lists, k + 1, workers), all_rows)
    del probes
    short = np.nonzero((lab < 0).any(axis=1))[0]  # probed lists held < k+1 rows: search those rows exactly
    if len(short):
        sim[short], lab[short] = exact_knn(x, short, k)
    times["search"], t = time.perf_counter() - t, time.perf_counter()
    sim, lab = reverse_edges(sim, lab, k)
    times["reverse"], t = time.perf_counter() - t, time.perf_counter()
    n_fix = int(round(knn.fix_fraction * n)) if fix_nprobe > nprobe else 0
    if n_fix:
        mean_dist = np.clip(1.0 - sim, 0.0, None).mean(axis=1)
        fix = np.sort(np.argpartition(-mean_dist, n_fix - 1)[:n_fix])
        s2, l2 = drop_self(*join(x, fix, assign(x, fix, centroids, fix_nprobe), lists, k + 1, workers), fix)
        sim[fix], lab[fix] = best_distinct(np.hstack([sim[fix], s2]), np.hstack([lab[fix], l2]), k)
        sim, lab = reverse_edges(sim, lab, k)
    times["fix"] = time.perf_counter() - t
    sizes = np.diff(lists[1])
    info = {
        "times": times, "n_fixed": n_fix, "n_exact": len(short), "nlist": nlist, "nprobe": nprobe, "fix_nprobe": fix_nprobe,
        "list_imbalance": float(nlist * np.sum((sizes / n) ** 2)),  # 1 = equal lists; join work grows with it
    }  # fmt: skip
    return rescore(x, lab, x), lab, info

"""Stage 5: kNN density over prompt embeddings, streamed chunk by chunk, and the sampling weights it implies.

Vectors are L2-normalised, so the index's inner product is cosine similarity and the kNN distance is the
cosine distance `1 - ip` (clipped at 0; in [0, 2]; a zero vector is left at zero and sits at distance 1 from
everything). A prompt's density is `1 / (mean distance to its k nearest other prompts + eps)` and its sampling
weight is `∝ density^-alpha`: prompts in sparse regions are sampled more often.

Memory: at most the index plus one chunk of vectors (plus a training sample for IVF and the recall queries);
flat and ivfjoin hold all normalised vectors in one float32 matrix (the size of a flat index) and no index.

Recipes against length leaking into the weights (see README, "Density recipes"): density.postprocess transforms
the raw embeddings before normalisation (`center`, `abtt`: centre and remove the top principal directions,
`whiten`), fitted from the mean and d x d covariance accumulated in a first streamed pass and applied chunk by
chunk; density.length_residual removes from log k-NN distance its linear trend in log prompt tokens (and log
turns), read from the chunk stores' per-prompt columns.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import faiss
import numpy as np
import pandas as pd
from tqdm import tqdm

from density_grpo import knn_join, memory
from density_grpo.errors import UserError
from density_grpo.index_plan import INDEXES, PQ_NBITS, components, default_nlist, index_bytes, ivf_train_size
from density_grpo.io import provenance, write_json, write_parquet
from density_grpo.stats import spearman
from density_grpo.store import read_attrs, read_chunk, read_column, read_ids, read_shape

log = logging.getLogger(__name__)
DUP_DIST = 1e-6  # nearest other neighbour this close counts as an exact duplicate
POSTPROCESS = ("none", "center", "abtt", "whiten")
LENGTH_RESIDUAL = {"none": (), "tokens": ("n_tokens",), "tokens_turns": ("n_tokens", "turns")}
MAX_COV_DIM = 8192  # abtt/whiten hold a few d x d float64 matrices: 1.5 GiB at d = 8192
# faiss (1.15) uses BLAS for brute-force scores only when a search has more queries than this threshold (default
# 128,000); below it a SIMD kernel runs ~14x slower here (128-row chunks: 6.9 vs 100 GFLOP/s). Same results.
faiss.cvar.distance_compute_blas_threshold = 20
faiss.cvar.distance_compute_blas_database_bs = 4096  # 4096 x 4096 score tiles (64 MB), not 4096 x 1024: fewer passes


# -----------------------------------------------------------------------------
# chunk streaming


def _shapes(chunk_paths: list[str]) -> list[tuple[int, int]]:
    """(n, dim) of every chunk from the Zarr metadata alone; all chunks must share one dim."""
    if not chunk_paths:
        raise UserError("no embedding chunks to index (the embed step produced no chunk_*.zarr stores)")
    shapes = []
    for p in chunk_paths:
        shape = read_shape(p)
        if len(shape) != 2:
            raise UserError(f"{p}: embeddings must be 2-D (n, dim), got shape {shape}")
        if shapes and shape[1] != shapes[0][1]:
            raise UserError(f"{p}: embedding dim {shape[1]} differs from dim {shapes[0][1]} of {chunk_paths[0]}")
        shapes.append((int(shape[0]), int(shape[1])))
    return shapes


@dataclass(frozen=True)
class Postprocess:
    """x -> (x - mean) @ matrix (matrix None: centring only), applied to raw embeddings before L2 normalisation."""

    how: str
    mean: np.ndarray
    matrix: np.ndarray | None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x.astype(np.float64) - self.mean
        return y @ self.matrix if self.matrix is not None else y


def _read(path: str) -> tuple[list[str], np.ndarray]:
    ids, emb, _ = read_chunk(path)
    if not np.isfinite(emb).all():
        raise UserError(f"{path}: embeddings contain NaN or inf")
    return ids, emb


def _load(path: str, post: Postprocess | None = None) -> tuple[list[str], np.ndarray]:
    """Read one chunk, post-process it, and L2-normalise a float32 copy of its vectors (zero vectors stay zero)."""
    ids, emb = _read(path)
    x = np.array(emb if post is None else post(emb), dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(x)
    return ids, x


def _stream(
    chunk_paths: list[str], desc: str, progress: bool, post: Postprocess | None = None
) -> Iterator[tuple[int, list[str], np.ndarray]]:
    """Yield (global row offset, prompt ids, normalised vectors) for each chunk, in order."""
    start = 0
    for p in tqdm(chunk_paths, desc=desc, unit="chunk", disable=not progress, leave=False):
        ids, x = _load(p, post)
        yield start, ids, x
        start += len(ids)


def fit_postprocess(
    chunk_paths: list[str], how: str, components: int | None = None, progress: bool = True
) -> Postprocess | None:
    """First streamed pass: the raw embeddings' mean (and d x d covariance) -> the density.postprocess transform.

    center: x - mean. abtt ("all but the top"): centre, then remove the top `components` principal directions
    (default 1). whiten: centre, project on the top `components` principal directions (default all) and scale
    each to unit variance (a ridge of 1e-6 x the top eigenvalue keeps tiny ones finite); mapped back to d dims,
    which keeps distances and the index width. None for "none".
    """
    if how not in POSTPROCESS:
        raise UserError(f"config key density.postprocess: {how!r} is not one of {', '.join(POSTPROCESS)}")
    if how == "none":
        return None
    dim = _shapes(chunk_paths)[0][1]
    if how != "center" and dim > MAX_COV_DIM:
        raise UserError(
            f"density.postprocess={how} needs a {dim} x {dim} covariance: use center or none for dim > {MAX_COV_DIM}"
        )
    n, s1, s2 = 0, np.zeros(dim), np.zeros((dim, dim)) if how != "center" else None
    for p in tqdm(chunk_paths, desc="postprocess fit", unit="chunk", disable=not progress, leave=False):
        x = _read(p)[1].astype(np.float64)
        n += len(x)
        s1 += x.sum(axis=0)
        if s2 is not None:
            s2 += x.T @ x
    mean = s1 / n
    if how == "center":
        return Postprocess(how, mean, None)
    lam, vec = np.linalg.eigh(s2 / n - np.outer(mean, mean))
    lam, vec = np.clip(lam[::-1], 0.0, None), vec[:, ::-1]  # largest first
    r = components if components is not None else (1 if how == "abtt" else dim)
    if not 1 <= r <= dim:
        raise UserError(f"config key density.components: {r} must be between 1 and the embedding dim {dim}")
    u = vec[:, :r]
    if how == "abtt":
        return Postprocess(how, mean, np.eye(dim) - u @ u.T)
    scale = np.sqrt(lam[:r] + 1e-6 * max(lam[0], 1e-12))
    return Postprocess(how, mean, (u / scale) @ u.T)


# -----------------------------------------------------------------------------
# index construction


def _train_sample(
    chunk_paths: list[str], n: int, n_train: int, seed: int, progress: bool, post: Postprocess | None = None
) -> np.ndarray:
    """A seeded uniform sample of n_train normalised rows, gathered chunk by chunk."""
    rows = np.sort(np.random.default_rng(seed).choice(n, size=n_train, replace=False))
    parts = []
    for start, _, x in _stream(chunk_paths, "knn train sample", progress, post):
        sel = rows[(rows >= start) & (rows < start + len(x))] - start
        parts.append(x[sel])
    return np.ascontiguousarray(np.concatenate(parts))


def _rescore(idx: faiss.Index, x: np.ndarray, lab: np.ndarray, block: int = 1024) -> np.ndarray:
    """Similarity of each query row to its found neighbours' stored vectors, as float64.

    faiss picks BLAS or SIMD kernels by batch size, so its scores depend on how rows are chunked; numpy's
    row-wise sum does not, which makes knn_mean_dist independent of the chunk size.
    """
    out = np.empty(lab.shape, dtype=np.float64)
    for i in range(0, len(x), block):
        lb = lab[i : i + block]
        nb = idx.reconstruct_batch(lb.ravel()).reshape(*lb.shape, -1)
        out[i : i + block] = (nb * x[i : i + block, None, :]).sum(axis=2)
    return out


# -----------------------------------------------------------------------------
# accuracy of an approximate search on a sample of rows


def _exact_sample(
    chunk_paths: list[str], q_rows: np.ndarray, q_vecs: np.ndarray, approx: np.ndarray, k: int, progress: bool,
    post: Postprocess | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """By streamed brute force: (exact similarity of each approximate neighbour, exact top-k similarities)."""
    m = len(q_rows)
    top = np.full((m, k), -np.inf, dtype=np.float32)  # running exact top-k similarities (self excluded)
    approx_sim = np.full((m, k), -np.inf, dtype=np.float32)  # exact similarity of each approximate neighbour
    for start, _, x in _stream(chunk_paths, "knn recall", progress, post):
        end = start + len(x)
        sim = q_vecs @ x.T
        r, c = np.nonzero((approx >= start) & (approx < end))
        approx_sim[r, c] = sim[r, approx[r, c] - start]
        own = np.nonzero((q_rows >= start) & (q_rows < end))[0]
        sim[own, q_rows[own] - start] = -np.inf
        both = np.concatenate([top, sim], axis=1)
        top = np.partition(both, both.shape[1] - k, axis=1)[:, -k:]
    return approx_sim, top


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
# kNN search


def _matrix_search(
    chunk_paths: list[str], n: int, dim: int, k: int, kind: str, nlist: int | None, nprobe: int, fix_fraction: float,
    fix_nprobe: int, q_rows: np.ndarray, seed: int, progress: bool, post: Postprocess | None = None,
) -> tuple[list[str], np.ndarray, dict, dict]:  # fmt: skip
    """flat and ivfjoin: all normalised vectors in one matrix (the size of a flat index), read once.

    flat: exact search by BLAS in blocks of rows. ivfjoin: the IVF self-join (knn_join), then the sample check.
    Returns prompt ids, each row's k neighbour similarities (rescored row by row), metadata and phase times.
    """
    t0 = time.perf_counter()
    x = np.empty((n, dim), dtype=np.float32)
    prompt_ids: list[str] = []
    for start, ids, xc in _stream(chunk_paths, "knn load", progress, post):
        x[start : start + len(xc)] = xc
        prompt_ids.extend(ids)
    t_load = time.perf_counter() - t0
    if kind == "flat":
        t0 = time.perf_counter()
        rows = np.arange(n, dtype=np.int64)
        sim = knn_join.rescore(x, rows, knn_join.exact_knn(x, rows, k)[1])
        return prompt_ids, sim, {}, {"time_add_s": t_load, "time_search_s": time.perf_counter() - t0}
    nl = default_nlist(n, nlist, "ivfjoin")
    n_train = ivf_train_size(n, nl, "ivfjoin")
    workers = max(1, faiss.omp_get_max_threads())
    sim, lab, info = knn_join.ivf_join(x, k, nl, nprobe, n_train, fix_fraction, fix_nprobe, seed, workers)
    t = info["times"]
    log.info("ivfjoin: " + ", ".join(f"{key} {v:.1f}s" for key, v in t.items()))
    t0 = time.perf_counter()
    exact = knn_join.rescore(x, q_rows, knn_join.exact_knn(x, q_rows, k)[1])
    acc = sample_accuracy(sim[q_rows], exact)
    meta = {
        "nlist": info["nlist"], "nprobe": info["nprobe"], "n_train": n_train, "fix_fraction": fix_fraction,
        "fix_nprobe": info["fix_nprobe"], "n_fixed": info["n_fixed"], "n_refined": info["n_exact"],
        "list_imbalance": round(info["list_imbalance"], 4), "workers": workers, **acc,
    }  # fmt: skip
    times = {
        "time_train_s": t["train"], "time_add_s": t_load + t["assign"], "time_search_s": t["search"],
        "time_reverse_s": t["reverse"], "time_fix_s": t["fix"], "time_recall_s": time.perf_counter() - t0,
    }  # fmt: skip
    return prompt_ids, sim, meta, times


def knn_search(
    chunk_paths: list[str],
    k: int,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int = 32,
    pq_m: int = 16,
    rerank: int = 16,
    fix_fraction: float = 0.1,
    fix_nprobe: int = 128,
    recall_sample: int = 1000,
    seed: int = 0,
    progress: bool = True,
    post: Postprocess | None = None,
    shapes: list[tuple[int, int]] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Mean cosine distance of every prompt to its k nearest other prompts, over chunk stores.

    flat and ivfjoin read the normalised vectors once into one matrix (the size of a flat index): flat searches it
    exactly by BLAS in large blocks of rows, ivfjoin by the IVF self-join (knn_join). ivf/ivfpq stream: pass 1 adds
    each chunk to a FAISS index, pass 2 searches each chunk against it; ivfpq re-ranks rerank·(k+1) PQ candidates
    per row by float16 copies of the vectors (IndexRefine). All search for k+1 neighbours, remove self by id and
    rescore the k neighbours row by row with numpy, so results do not depend on the chunking or batching.
    Ids are global row numbers in chunk order. For approximate indexes, recall@k and the relative error of the
    mean distance are measured against exact search on a seeded sample of rows (see sample_accuracy).
    post: a fit_postprocess transform applied to every chunk before normalisation; shapes: the chunks' (n, dim)
    when the caller has read them already.
    Returns a frame (prompt_id, knn_mean_dist) in chunk/row order, and metadata.
    """
    chunk_paths = [str(p) for p in chunk_paths]
    shapes = shapes or _shapes(chunk_paths)
    n, dim = sum(s[0] for s in shapes), shapes[0][1]
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"knn.k={k!r} must be a positive integer")
    if k >= n:
        raise UserError(f"knn.k={k} needs at least {k + 1} prompts, got {n}")
    if index not in INDEXES:
        raise UserError(f"config key knn.index: {index!r} is not one of auto, {', '.join(INDEXES)}")
    kind = index
    meta: dict[str, Any] = {"n": n, "k": int(k), "dim": dim, "index": kind}
    q_rows = np.array([], dtype=np.int64)
    if kind != "flat":
        q_rows = np.sort(np.random.default_rng(seed + 1).choice(n, size=min(recall_sample, n), replace=False))

    if kind in ("flat", "ivfjoin"):
        prompt_ids, sim, extra, times = _matrix_search(
            chunk_paths, n, dim, k, kind, nlist, nprobe, fix_fraction, fix_nprobe, q_rows, seed, progress, post
        )
        dist = np.clip(1.0 - sim, 0.0, None)
        mean_dist = dist.mean(axis=1)
        n_dup = int((dist.min(axis=1) <= DUP_DIST).sum())
        if kind == "flat":
            meta.update(EXACT_ACCURACY, recall_estimated=False)
        else:
            meta.update(extra, recall_estimated=True, recall_sample=len(q_rows))
    else:
        prompt_ids, mean_dist, n_dup, times = _index_search(
            chunk_paths, n, dim, k, kind, nlist, nprobe, pq_m, rerank, q_rows, seed, progress, meta, post
        )
    meta.update(
        n_exact_duplicates=n_dup,
        index_bytes=index_bytes(n, dim, kind, meta.get("nlist", 0), pq_m),
        **{key: round(v, 6) for key, v in times.items()},
    )
    df = pd.DataFrame({"prompt_id": pd.Series(prompt_ids, dtype=str), "knn_mean_dist": mean_dist})
    return df, meta


def _index_search(
    chunk_paths: list[str], n: int, dim: int, k: int, kind: str, nlist: int | None, nprobe: int, pq_m: int,
    rerank: int, q_rows: np.ndarray, seed: int, progress: bool, meta: dict, post: Postprocess | None = None,
) -> tuple[list[str], np.ndarray, int, dict]:  # fmt: skip
    """ivf/ivfpq with a FAISS index, streamed: prompt ids, mean distances, exact duplicates and phase times.
    Adds the index settings and the sample accuracy to `meta`."""
    times = dict(time_train_s=0.0, time_add_s=0.0, time_search_s=0.0, time_recall_s=0.0)

    # build and train the index
    t0 = time.perf_counter()
    nl = default_nlist(n, nlist, kind)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        idx = ivf = faiss.IndexIVFFlat(quantizer, dim, nl, faiss.METRIC_INNER_PRODUCT)
    else:
        if dim % pq_m:
            raise UserError(f"knn.pq_m={pq_m} must divide the embedding dim {dim}")
        if n < (1 << PQ_NBITS):
            raise UserError(f"knn.index=ivfpq needs at least {1 << PQ_NBITS} prompts to train its codebooks, got {n}")
        ivf = faiss.IndexIVFPQ(quantizer, dim, nl, pq_m, PQ_NBITS, faiss.METRIC_INNER_PRODUCT)
        ivf.pq.cp.seed = seed
        # re-rank rerank·(k+1) PQ candidates with float16 copies of the vectors: raw PQ scores bias distances
        vectors = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        idx = faiss.IndexRefine(ivf, vectors)
        idx.k_factor = float(rerank)
    n_train = ivf_train_size(n, nl, kind)
    ivf.cp.seed = seed
    idx.train(_train_sample(chunk_paths, n, n_train, seed, progress, post))
    ivf.nprobe = min(int(nprobe), nl)
    meta.update(nlist=nl, nprobe=int(ivf.nprobe), n_train=n_train)
    if kind == "ivfpq":
        meta.update(pq_m=int(pq_m), rerank=int(rerank))
    times["time_train_s"] = time.perf_counter() - t0

    # pass 1: add
    t0 = time.perf_counter()
    for _, _, x in _stream(chunk_paths, "knn add", progress, post):
        if len(x):
            idx.add(x)
    if kind == "ivf":
        ivf.make_direct_map()  # lets _rescore reconstruct stored vectors by id
    times["time_add_s"] = time.perf_counter() - t0

    # pass 2: search; keep the recall queries' vectors and results on the way
    t0 = time.perf_counter()
    q_vecs = np.zeros((len(q_rows), dim), dtype=np.float32)
    q_found = np.zeros((len(q_rows), k), dtype=np.int64)
    prompt_ids: list[str] = []
    mean_dist = np.empty(n, dtype=np.float64)
    n_dup = n_refined = 0
    for start, ids, x in _stream(chunk_paths, "knn search", progress, post):
        if not len(x):
            continue
        self_ids = np.arange(start, start + len(x), dtype=np.int64)
        sim, lab = idx.search(x, k + 1)
        missing = (lab < 0).any(axis=1)
        if missing.any():  # an IVF probe found < k+1 candidates: search those rows over every list
            ivf.nprobe = ivf.nlist
            sim[missing], lab[missing] = idx.search(np.ascontiguousarray(x[missing]), k + 1)
            ivf.nprobe = meta["nprobe"]
            n_refined += int(missing.sum())
        _, lab = knn_join.drop_self(sim, lab, self_ids)
        dist = np.clip(1.0 - _rescore(idx, x, lab), 0.0, None)
        mean_dist[start : start + len(x)] = dist.mean(axis=1)
        n_dup += int((dist.min(axis=1) <= DUP_DIST).sum())
        prompt_ids.extend(ids)
        sel = np.nonzero((q_rows >= start) & (q_rows < start + len(x)))[0]
        q_vecs[sel] = x[q_rows[sel] - start]
        q_found[sel] = lab[q_rows[sel] - start]
    times["time_search_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    approx_sim, exact_sim = _exact_sample(chunk_paths, q_rows, q_vecs, q_found, k, progress, post)
    reported = mean_dist[q_rows] if kind == "ivfpq" else None  # ivfpq: scored by the float16 copies
    times["time_recall_s"] = time.perf_counter() - t0
    meta.update(
        sample_accuracy(approx_sim, exact_sim, reported), recall_estimated=True, recall_sample=len(q_rows),
        n_refined=n_refined,
    )  # fmt: skip
    return prompt_ids, mean_dist, n_dup, times


# -----------------------------------------------------------------------------
# weights


def density_weights(
    knn_mean_dist: np.ndarray, alpha: float = 1.0, eps: float = 1e-6, max_ratio: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """density = 1 / (knn_mean_dist + eps); weight ∝ density^-alpha, clipped to max_ratio x median, sums to 1."""
    d = np.asarray(knn_mean_dist, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("knn_mean_dist must be a non-empty 1-D array of finite distances >= 0")
    if alpha < 0:
        raise UserError(f"density.alpha={alpha} must be >= 0")
    if not eps > 0:
        raise UserError(f"density.eps={eps} must be > 0")
    if max_ratio is not None and max_ratio < 1:
        raise UserError(f"density.max_ratio={max_ratio} must be >= 1 (or null)")
    density = 1.0 / (d + eps)
    logw = alpha * np.log(d + eps)  # log space: large alpha must not under/overflow before normalising
    w = np.exp(logw - logw.max())
    if max_ratio is not None:
        w = np.minimum(w, max_ratio * np.median(w))
    return density, w / w.sum()


def prompt_lengths(chunk_paths: list[str]) -> pd.DataFrame | None:
    """Per prompt, in chunk/row order: n_tokens and turns from the chunk stores; None when a store lacks them."""
    cols: dict[str, list[np.ndarray]] = {"n_tokens": [], "turns": []}
    for p in chunk_paths:
        for name, parts in cols.items():
            v = read_column(p, name)
            if v is None:
                return None
            parts.append(v)
    return pd.DataFrame({name: np.concatenate(parts).astype(np.int64) for name, parts in cols.items()})


def length_residual(
    dist: np.ndarray, lengths: pd.DataFrame | None, how: str, eps: float = 1e-6
) -> tuple[np.ndarray, dict[str, float]]:
    """k-NN distances with their linear trend in log length removed (density.length_residual).

    OLS of log(dist + eps) on [1, log n_tokens] (tokens) or [1, log n_tokens, log turns] (tokens_turns) over all
    prompts; returns exp(residual + mean log distance), so the typical distance stays and only the part that
    length predicts goes, and the fitted coefficients. n scalars: nothing to stream.
    """
    if how not in LENGTH_RESIDUAL:
        raise UserError(f"config key density.length_residual: {how!r} is not one of {', '.join(LENGTH_RESIDUAL)}")
    names = LENGTH_RESIDUAL[how]
    if not names:
        return np.asarray(dist, dtype=np.float64), {}
    y = np.log(np.asarray(dist, dtype=np.float64) + eps)
    a = np.column_stack([np.ones(len(y)), *[np.log(np.maximum(lengths[c].to_numpy(np.float64), 1.0)) for c in names]])
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    fit = {"intercept": float(coef[0]), **{f"log_{c}": float(b) for c, b in zip(names, coef[1:])}}
    return np.exp(y - a @ coef + y.mean()), fit


def weight_stats(weight: np.ndarray) -> dict[str, float]:
    """Summary of a weight vector: spread, effective sample size 1/sum(w^2) (on w/sum w), entropy / log n."""
    w = np.asarray(weight, dtype=np.float64)
    n = w.size
    p = w / w.sum()
    nz = p[p > 0]
    ess = 1.0 / float(np.sum(p**2))
    return {
        "min": float(w.min()),
        "max": float(w.max()),
        "median": float(np.median(w)),
        "mean": float(w.mean()),
        "max_min_ratio": float(w.max() / w.min()) if w.min() > 0 else float("inf"),
        "ess": ess,
        "ess_fraction": ess / n,
        "entropy_ratio": float(-np.sum(nz * np.log(nz)) / math.log(n)) if n > 1 else 1.0,
    }


def _check_unique_ids(chunk_paths: list[str]) -> None:
    """No prompt_id may appear twice across (or within) chunks; reads only the small id arrays."""
    ids = [read_ids(p) for p in chunk_paths]
    allids = np.concatenate(ids) if ids else np.array([], dtype=np.uint64)
    uniq, counts = np.unique(allids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        where = [str(p) for p, a in zip(chunk_paths, ids) if (a == dup).any()]
        raise UserError(
            f"prompt_id {int(dup):016x} appears {int(counts[counts > 1][0])} times "
            f"({int((counts > 1).sum())} repeated ids in all), in {', '.join(where)}"
        )


SAME_EMBEDDING = ("model_fingerprint", "source", "layer", "pooling", "dtype", "transform", "max_length")


def _check_same_embedding(chunk_paths: list[str]) -> list[dict[str, Any]]:
    """All chunks come from one model (content fingerprint) and one embedding recipe; returns every chunk's attrs."""
    all_attrs = [read_attrs(p) for p in chunk_paths]
    first = all_attrs[0]
    for p, attrs in zip(chunk_paths[1:], all_attrs[1:]):
        for key in SAME_EMBEDDING:
            if attrs.get(key) != first.get(key):
                raise UserError(
                    f"{p}: embedded with {key}={attrs.get(key)!r} but {chunk_paths[0]} with {first.get(key)!r}: "
                    "delete the chunks that differ and rerun snakemake"
                )
    return all_attrs


def predict(n: int, dim: int, chunk: int, knn: dict, postprocess: str = "none") -> dict:
    """Peak memory of the weights stage for n prompts of `dim` dims in chunks of `chunk` rows (faiss-cpu: host RAM)."""
    nl = default_nlist(n, knn["nlist"], knn["index"]) if knn["index"] != "flat" else 0
    join = {key: knn[key] for key in ("nprobe", "fix_fraction", "fix_nprobe") if key in knn}
    c = components(n, dim, chunk, knn["k"], knn["index"], nl, knn.get("pq_m", 16), knn.get("recall_sample", 0), **join)
    if postprocess in ("abtt", "whiten"):  # moments, eigenvectors and the transform, float64, plus a float64 chunk
        c["postprocess (d x d float64)"] = 4 * dim * dim * 8 + 2 * chunk * dim * 8
    return memory.prediction(
        "cpu", {**memory.baseline("faiss", "cpu"), **c},
        "baseline + index (ivfjoin: the vectors) + direct map + IVF training sample + join temps + chunk + search temps"
        " + recall + per-prompt arrays",
        "knn.index (ivfjoin/ivfpq) or knn.max_index_gb", n=n, dim=dim, index=knn["index"], nlist=nl,
    )  # fmt: skip


def compute_weights(chunk_paths: list[str], knn: dict, dens: dict, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """kNN search + density weights: a frame (prompt_id, knn_mean_dist, density, weight) in chunk/row order, and metadata.

    knn: k, the resolved index and, for IVF indexes, nlist, nprobe, recall_sample and the seed of their training
    and recall samples; ivfpq also pq_m and rerank, ivfjoin fix_fraction and fix_nprobe. dens: alpha, eps,
    max_ratio, postprocess, length_residual and, for abtt/whiten, components. When the chunk stores carry
    per-prompt n_tokens and turns, the frame gets them too and the metadata the Spearman correlation of the weight
    with each (the length diagnostics).
    """
    from density_grpo.monitor import expect

    chunk_paths = [str(p) for p in chunk_paths]
    shapes = _shapes(chunk_paths)  # dims agree (UserError naming the odd chunk) before any heavy work
    n, dim = sum(s[0] for s in shapes), shapes[0][1]
    post_how, resid_how = dens["postprocess"], dens["length_residual"]
    expect(predict(n, dim, max(s[0] for s in shapes), knn, post_how))
    _check_unique_ids(chunk_paths)  # reads (and verifies) the id arrays first
    attrs = _check_same_embedding(chunk_paths)
    first = attrs[0]
    lengths = prompt_lengths(chunk_paths)
    if resid_how != "none" and lengths is None:
        missing = next(p for p in chunk_paths if read_column(p, "n_tokens") is None or read_column(p, "turns") is None)
        raise UserError(
            f"density.length_residual={resid_how} needs per-prompt n_tokens and turns, which {missing} lacks: re-embed"
        )
    t0 = time.perf_counter()
    components = dens["components"] if post_how in ("abtt", "whiten") else None
    post = fit_postprocess(chunk_paths, post_how, components, progress)
    time_post = time.perf_counter() - t0
    keys = ("nlist", "nprobe", "pq_m", "rerank", "fix_fraction", "fix_nprobe", "recall_sample", "seed")
    approx = {key: knn[key] for key in keys if key in knn}
    df, meta = knn_search(chunk_paths, knn["k"], knn["index"], progress=progress, post=post, shapes=shapes, **approx)
    dist, resid_fit = length_residual(df["knn_mean_dist"].to_numpy(), lengths, resid_how, dens["eps"])
    density, weight = density_weights(dist, dens["alpha"], dens["eps"], dens["max_ratio"])
    df["density"] = density
    df["weight"] = weight
    columns = ["prompt_id", "knn_mean_dist", "density", "weight"]
    meta.update(
        alpha=dens["alpha"], eps=dens["eps"], max_ratio=dens["max_ratio"], weight_stats=weight_stats(weight),
        model=first["model"], source=first["source"], layer=first["layer"], pooling=first.get("pooling"),
        n_truncated=sum(a.get("n_truncated", 0) for a in attrs),  # prompts cut to embed.max_length
        pooling_fallbacks=sum(a.get("pooling_fallbacks", 0) for a in attrs), postprocess=post_how,
        time_postprocess_s=round(time_post, 6), length_residual=resid_how, spearman_weight_tokens=None,
        spearman_weight_turns=None,
    )  # fmt: skip
    if post_how in ("abtt", "whiten"):
        meta["components"] = components
    if lengths is not None:
        columns += ["n_tokens", "turns"]
        df["n_tokens"], df["turns"] = lengths["n_tokens"].to_numpy(), lengths["turns"].to_numpy()
        meta["spearman_weight_tokens"] = spearman(weight, df["n_tokens"].to_numpy())
        meta["spearman_weight_turns"] = spearman(weight, df["turns"].to_numpy())
        if resid_how != "none":  # how much length the raw distances carried before the residual removed it
            before = spearman(df["knn_mean_dist"].to_numpy(), df["n_tokens"].to_numpy())
            meta["length_residual_fit"] = {**resid_fit, "spearman_dist_tokens_before": before}
    return df[columns], meta


def run(input: dict, output: dict, params: dict) -> None:
    """Rule knn_weights: streamed FAISS k-NN over all chunks -> weights.parquet + metadata.json."""
    t = time.perf_counter()
    df, meta = compute_weights(input["chunks"], params["knn"], params["density"])
    meta.update(chunks=[str(p) for p in input["chunks"]], time_total_s=time.perf_counter() - t, provenance=provenance(params))
    write_parquet(df, output["weights"])
    write_json(meta, output["meta"])
    stats, rho = meta["weight_stats"], meta["spearman_weight_tokens"]
    log.info(
        "weights for %d prompts: max/min %.2f, ESS/n %.2f, Spearman(weight, prompt tokens) %s",
        len(df), stats["max_min_ratio"], stats["ess_fraction"], "n/a" if rho is None else f"{rho:.2f}",
    )  # fmt: skip

"""Stage 5: kNN density over prompt embeddings, streamed chunk by chunk, and the sampling weights it implies.

A prompt's density is `1 / (mean cosine distance to its k nearest other prompts + eps)` (the search: knn.py) and
its sampling weight is `∝ density^-alpha`: prompts in sparse regions are sampled more often.

Recipes against length leaking into the weights (see README, "Density recipes"): density.postprocess transforms
the raw embeddings before normalisation (`center`, `abtt`: centre and remove the top principal directions,
`whiten`), fitted from the mean and d x d covariance accumulated in a first streamed pass and applied chunk by
chunk; density.length_residual removes from log k-NN distance its linear trend in log prompt tokens (and log
turns), read from the chunk stores' per-prompt columns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from density_grpo import memory
from density_grpo.config import DensityConfig, KNNConfig, allowed
from density_grpo.errors import UserError
from density_grpo.index_plan import components, default_nlist
from density_grpo.io import provenance, write_json, write_parquet
from density_grpo.knn import Chunks, search
from density_grpo.stats import spearman
from density_grpo.store import read_attrs, read_column, read_ids, rebuild_hint, uint64_to_ids

log = logging.getLogger(__name__)
COVARIANCE = ("abtt", "whiten")  # the density.postprocess recipes that fit a d x d covariance and read components
REGRESSORS = {"none": (), "tokens": ("n_tokens",), "tokens_turns": ("n_tokens", "turns")}  # density.length_residual
MAX_COV_DIM = 8192  # abtt/whiten hold a few d x d float64 matrices: 1.5 GiB at d = 8192


# -----------------------------------------------------------------------------
# post-processing of the raw embeddings


@dataclass(frozen=True)
class Postprocess:
    """x -> (x - mean) @ matrix (matrix None: centring only), applied to raw embeddings before L2 normalisation."""

    how: str
    mean: np.ndarray
    matrix: np.ndarray | None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x.astype(np.float64) - self.mean
        return y @ self.matrix if self.matrix is not None else y


def fit_postprocess(chunks: Chunks, how: str, components: int | None) -> Postprocess | None:
    """First streamed pass: the raw embeddings' mean (and d x d covariance) -> the density.postprocess transform.

    center: x - mean. abtt ("all but the top"): centre, then remove the top `components` principal directions
    (None: 1). whiten: centre, project on the top `components` principal directions (None: all) and scale each to
    unit variance (a ridge of 1e-6 x the top eigenvalue keeps tiny ones finite); mapped back to d dims, which keeps
    distances and the index width. None for "none".
    """
    if how not in allowed("density.postprocess"):
        raise ValueError(f"density.postprocess must be one of {', '.join(allowed('density.postprocess'))}, got {how!r}")
    if how == "none":
        return None
    dim = chunks.dim
    if how in COVARIANCE and dim > MAX_COV_DIM:
        raise UserError(
            f"density.postprocess={how} needs a {dim} x {dim} covariance: use center or none for dim > {MAX_COV_DIM}"
        )
    n, s1, s2 = 0, np.zeros(dim), np.zeros((dim, dim)) if how in COVARIANCE else None
    for x in chunks.raw("postprocess fit"):
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
# weights


def density_weights(
    knn_mean_dist: np.ndarray, alpha: float, eps: float, max_ratio: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """density = 1 / (knn_mean_dist + eps); weight ∝ density^-alpha, clipped to max_ratio x median, sums to 1."""
    d = np.asarray(knn_mean_dist, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("knn_mean_dist must be a non-empty 1-D array of finite distances >= 0")
    if alpha < 0 or not eps > 0 or (max_ratio is not None and max_ratio < 1):  # the schema's ranges, for direct calls
        raise ValueError(f"need alpha >= 0, eps > 0 and max_ratio >= 1 or None, got {alpha}, {eps}, {max_ratio}")
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
    dist: np.ndarray, lengths: pd.DataFrame | None, how: str, eps: float
) -> tuple[np.ndarray, dict[str, float]]:
    """k-NN distances with their linear trend in log length removed (density.length_residual).

    OLS of log(dist + eps) on [1, log n_tokens] (tokens) or [1, log n_tokens, log turns] (tokens_turns) over all
    prompts; returns exp(residual + mean log distance), so the typical distance stays and only the part that
    length predicts goes, and the fitted coefficients. n scalars: nothing to stream.
    """
    names = REGRESSORS[how]
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


# -----------------------------------------------------------------------------
# the chunks: one prompt set, one embedding


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


# -----------------------------------------------------------------------------
# the stage


def predict(params: Mapping[str, Any], work: memory.Workload) -> dict:
    """Peak memory of the weights stage for work.n_prompts prompts of work.dim dims in chunks of at most
    work.chunk_rows rows (faiss-cpu: host RAM)."""
    knn, dens = KNNConfig.from_params(params["knn"]), DensityConfig.from_params(params["density"])
    return _predict(work.n_prompts, work.dim, work.chunk_rows, knn, dens.postprocess)


def _predict(n: int, dim: int, chunk: int, knn: KNNConfig, postprocess: str) -> dict:
    kind = knn.index
    nl = default_nlist(n, knn.nlist, kind) if kind != "flat" else 0
    c = components(n, dim, chunk, knn.values(), nl)
    if postprocess in COVARIANCE:  # moments, eigenvectors and the transform, float64, plus a float64 chunk
        c["postprocess (d x d float64)"] = 4 * dim * dim * 8 + 2 * chunk * dim * 8
    return memory.prediction(
        "cpu", {**memory.baseline("faiss", "cpu"), **c},
        "baseline + index (ivfjoin: the vectors) + direct map + IVF training sample + join temps + chunk + search temps"
        " + recall + per-prompt arrays",
        "knn.index (ivfjoin/ivfpq) or knn.max_index_gb", n=n, dim=dim, index=kind, nlist=nl,
    )  # fmt: skip


def _length_diagnostics(df: pd.DataFrame, lengths: pd.DataFrame, how: str, fit: dict[str, float]) -> dict[str, Any]:
    """Spearman of the weight with prompt tokens and turns; with a length residual, its fit and the raw distances'
    Spearman with tokens (how much length they carried before the residual removed it). Adds the length columns."""
    df["n_tokens"], df["turns"] = lengths["n_tokens"].to_numpy(), lengths["turns"].to_numpy()
    weight, tokens, turns = df["weight"].to_numpy(), df["n_tokens"].to_numpy(), df["turns"].to_numpy()
    meta: dict[str, Any] = {"spearman_weight_tokens": spearman(weight, tokens)}
    meta["spearman_weight_turns"] = spearman(weight, turns)
    if how != "none":
        before = spearman(df["knn_mean_dist"].to_numpy(), tokens)
        meta["length_residual_fit"] = {**fit, "spearman_dist_tokens_before": before}
    return meta


def compute_weights(
    chunk_paths: list[str], knn: KNNConfig, dens: DensityConfig, progress: bool = True
) -> tuple[pd.DataFrame, dict]:
    """kNN search + density weights: a frame (prompt_id, knn_mean_dist, density, weight) in chunk/row order, and metadata.

    When the chunk stores carry per-prompt n_tokens and turns, the frame gets them too and the metadata the
    Spearman correlation of the weight with each (the length diagnostics).
    """
    from density_grpo.monitor import expect

    chunks = Chunks.open(chunk_paths, progress)  # dims agree (UserError naming the odd chunk) before any heavy work
    paths, post_how, resid_how = chunks.paths, dens.postprocess, dens.length_residual
    expect(_predict(chunks.n, chunks.dim, max(s[0] for s in chunks.shapes), knn, post_how))
    _check_unique_ids(paths)  # reads (and verifies) the id arrays first
    attrs = _check_same_embedding(paths)
    first = attrs[0]
    lengths = prompt_lengths(paths)
    if resid_how != "none" and lengths is None:
        missing = next(p for p in paths if read_column(p, "n_tokens") is None or read_column(p, "turns") is None)
        raise UserError(
            f"density.length_residual={resid_how} needs per-prompt n_tokens and turns, which {missing} lacks: re-embed"
        )
    t0 = time.perf_counter()
    r = dens.components if post_how in COVARIANCE else None
    post = fit_postprocess(chunks, post_how, r)
    time_post = time.perf_counter() - t0
    df, meta = search(dataclasses.replace(chunks, post=post), knn)
    dist, resid_fit = length_residual(df["knn_mean_dist"].to_numpy(), lengths, resid_how, dens.eps)
    df["density"], df["weight"] = density_weights(dist, dens.alpha, dens.eps, dens.max_ratio)
    meta.update(
        alpha=dens.alpha, eps=dens.eps, max_ratio=dens.max_ratio, weight_stats=weight_stats(df["weight"].to_numpy()),
        model=first["model"], source=first["source"], layer=first["layer"], pooling=first.get("pooling"),
        n_truncated=sum(a.get("n_truncated", 0) for a in attrs),  # prompts cut to embed.max_length
        pooling_fallbacks=sum(a.get("pooling_fallbacks", 0) for a in attrs), postprocess=post_how,
        time_postprocess_s=round(time_post, 6), length_residual=resid_how, spearman_weight_tokens=None,
        spearman_weight_turns=None,
    )  # fmt: skip
    if post_how in COVARIANCE:
        meta["components"] = r
    columns = ["prompt_id", "knn_mean_dist", "density", "weight"]
    if lengths is not None:
        meta.update(_length_diagnostics(df, lengths, resid_how, resid_fit))
        columns += ["n_tokens", "turns"]
    return df[columns], meta


def check_prompt_order(chunk_paths: list[str], prompts: pd.DataFrame, prompts_path: str) -> None:
    """The chunk stores hold exactly the prompts of prompts.parquet, in order (chunk i: the rows after chunk i-1's):
    a foreign or stale chunk would publish weights for other prompts. Reads only the (verified) id arrays.

    The advice works: a deleted chunk is rebuilt by its embed_chunk job from the rows of prompts.parquet it owns.
    """
    ids, start, bad = prompts["prompt_id"].astype(str).tolist(), 0, []
    for path in chunk_paths:
        chunk_ids = uint64_to_ids(read_ids(path))
        if chunk_ids != ids[start : start + len(chunk_ids)]:
            bad.append((path, start, len(chunk_ids)))
        start += len(chunk_ids)
    if start != len(ids) and not bad:
        raise UserError(
            f"{chunk_paths[-1]}: the chunk stores hold {start} prompts but {prompts_path} has {len(ids)} (stale): "
            f"{rebuild_hint(chunk_paths[-1])}"
        )
    if bad:
        path, row, n = bad[0]
        more = f" ({len(bad) - 1} more chunks differ too)" if len(bad) > 1 else ""
        raise UserError(
            f"{path}: its {n} prompt ids are not rows {row}..{row + n - 1} of {prompts_path} (the chunk stores hold "
            f"{start} prompts, the table {len(ids)}): stale or from other data{more}; delete them "
            f"(rm -r {' '.join(p for p, _, _ in bad)}) and rerun snakemake to rebuild them"
        )


def check_weights(weights: np.ndarray, where: str, advice: str) -> None:
    """Sampling weights are finite, positive and sum to 1 (checked before they are written and when GRPO reads
    them: a NaN or a negative weight would make the sampler draw nothing or garbage); UserError '{where}: ...;
    {advice}'."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        raise UserError(f"{where}: no weights")
    bad = ~np.isfinite(w) | (w <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = f"{int(bad.sum())} weights are not finite and positive (row {i}: {float(w[i])!r})"
        raise UserError(f"{where}: {what}; {advice}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise UserError(f"{where}: the weights sum to {w.sum():.9g}, not 1; {advice}")


def read_weights(path: str, prompt_ids: pd.Series) -> pd.Series:
    """weights.parquet as a weight per prompt_id, verified: check_weights, unique ids, and a weight for every id of
    `prompt_ids` (later stages trust the table; a hand-edited, damaged or stale one fails naming the file)."""
    w = pd.read_parquet(path, columns=["prompt_id", "weight"]).set_index("prompt_id")["weight"]
    check_weights(w.to_numpy(), path, rebuild_hint(path))
    if not w.index.is_unique:
        dup = w.index[w.index.duplicated()][0]
        raise UserError(f"{path}: prompt_id {dup} appears more than once; {rebuild_hint(path)}")
    missing = ~prompt_ids.isin(w.index)
    if missing.any():
        raise UserError(f"{path}: no weight for {int(missing.sum())} prompts: {rebuild_hint(path)}")
    return w


def topic_summary(df: pd.DataFrame, topics: pd.Series) -> dict[str, Any] | None:
    """With topic labels (the sample data), each prompt's topic and its dense/rare group as columns of `df`, and the
    check the weights exist for: the mean weight of rare-topic prompts over that of dense-topic ones (> 1: rare
    prompts get more weight). None without topics."""
    from density_grpo.pairs import topic_groups

    groups = topic_groups(topics)
    if groups is None:
        return None
    df["topic"], df["group"] = topics.to_numpy(), topics.map(groups).fillna("").to_numpy()
    rel = df["weight"] * len(df) / df["weight"].sum()
    means = rel.groupby(df["group"]).mean()
    if not ("dense" in means and "rare" in means):
        return None
    out = {
        "rare_dense_ratio": float(means["rare"] / means["dense"]), "n_dense": int((df["group"] == "dense").sum()),
        "n_rare": int((df["group"] == "rare").sum()), "n_rare_topics": int(df.loc[df["group"] == "rare", "topic"].nunique()),
    }  # fmt: skip
    if "n_tokens" in df:  # when rare topics differ in length, a length correlation is partly signal
        both = df["group"].isin(["rare", "dense"])
        out["spearman_rare_tokens"] = spearman((df.loc[both, "group"] == "rare").to_numpy(), df.loc[both, "n_tokens"].to_numpy())
    return out


def run(input: dict, output: dict, params: dict) -> None:
    """Rule knn_weights: streamed FAISS k-NN over all chunks -> weights.parquet (with each prompt's topic and group
    where the data has topics) + metadata.json (the weights' statistics the report shows)."""
    t = time.perf_counter()
    knn, dens = KNNConfig.from_params(params["knn"]), DensityConfig.from_params(params["density"])
    prompts = pd.read_parquet(input["prompts"], columns=["prompt_id", "topic"])
    check_prompt_order(input["chunks"], prompts, input["prompts"])  # before any search
    df, meta = compute_weights(input["chunks"], knn, dens)
    check_weights(df["weight"].to_numpy(), output["weights"], "not written (check density.alpha and density.eps)")
    meta["topics"] = topic_summary(df, prompts["topic"].astype(str))
    meta.update(chunks=[str(p) for p in input["chunks"]], time_total_s=time.perf_counter() - t, provenance=provenance(params))
    write_parquet(df, output["weights"])
    write_json(meta, output["meta"])
    stats, rho = meta["weight_stats"], meta["spearman_weight_tokens"]
    log.info(
        "weights for %d prompts: max/min %.2f, ESS/n %.2f, Spearman(weight, prompt tokens) %s",
        len(df), stats["max_min_ratio"], stats["ess_fraction"], "n/a" if rho is None else f"{rho:.2f}",
    )  # fmt: skip

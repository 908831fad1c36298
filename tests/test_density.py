"""Tests for density_grpo.density: kNN search over chunk stores and density weights."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest

from density_grpo.config import DensityConfig, KNNConfig
from density_grpo.density import (
    compute_weights, density_weights, fit_postprocess, length_residual, _predict, weight_stats,
)  # fmt: skip
from density_grpo.errors import UserError
from density_grpo.knn import Chunks, drop_self, search
from density_grpo.stats import spearman
from density_grpo.store import write_chunk

ATTRS = {"model": "test-model", "source": "hidden", "layer": -1}
DENSITY = {"alpha": 1.0, "eps": 1e-6, "max_ratio": None, "postprocess": "none", "length_residual": "none"}


def weights(paths: list[str], knn: dict, dens: dict = DENSITY):
    """compute_weights with the typed configs built as from a rule's params (keys left out are undeclared)."""
    return compute_weights(paths, KNNConfig.from_params(knn), DensityConfig.from_params(dens), progress=False)


def search_chunks(paths: list[str], **knn):
    """The k-NN search alone, on the chunk stores at `paths`, with the knn params given."""
    return search(Chunks.open(paths, progress=False), KNNConfig.from_params(knn))


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """Tiny problems: OpenMP thread start-up and spin-waits cost more than they save, worse on a busy machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def write_chunks(root, x: np.ndarray, sizes: list[int], id_offset: int = 0, columns: dict | None = None) -> list[str]:
    """Split rows of x into chunk stores of the given sizes; prompt ids are the global row numbers in hex.
    columns: per-row arrays (n_tokens, turns) split the same way."""
    assert sum(sizes) == len(x)
    paths, start = [], 0
    for i, s in enumerate(sizes):
        path = str(root / f"chunk_{i}.zarr")
        ids = [f"{id_offset + j:016x}" for j in range(start, start + s)]
        cols = {name: v[start : start + s] for name, v in (columns or {}).items()}
        write_chunk(path, ids, x[start : start + s], ATTRS, columns=cols)
        paths.append(path)
        start += s
    return paths


def brute_force_mean_dist(x: np.ndarray, k: int) -> np.ndarray:
    """numpy reference: mean cosine distance to the k nearest other rows."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / np.where(norm > 0, norm, 1.0)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    top = -np.sort(-sim, axis=1)[:, :k]
    return np.clip(1.0 - top, 0.0, None).mean(axis=1)


def clustered(rng: np.random.Generator, n_clusters: int, per: int, n_rare: int, dim: int, spread: float = 0.01):
    centers = rng.standard_normal((n_clusters, dim))
    dense = np.concatenate([c + spread * rng.standard_normal((per, dim)) for c in centers])
    rare = rng.standard_normal((n_rare, dim))
    return np.concatenate([dense, rare]).astype(np.float32)


def test_rare_points_get_more_weight(tmp_path):
    x = clustered(np.random.default_rng(0), 3, 60, 20, 32)
    paths = write_chunks(tmp_path, x, [50, 50, 50, 50])
    df, meta = weights(paths, {"k": 5, "index": "flat"}, DENSITY)
    w = df["weight"].to_numpy()
    rare = np.arange(len(x)) >= 180
    assert w[rare].mean() / w[~rare].mean() > 2
    assert rare[np.argsort(-w)[:20]].mean() >= 0.9
    assert list(df.columns) == ["prompt_id", "knn_mean_dist", "density", "weight"]
    assert df["prompt_id"].tolist() == [f"{i:016x}" for i in range(len(x))]
    assert meta["model"] == "test-model" and meta["dim"] == 32 and meta["index"] == "flat"
    assert meta["recall_at_k"] == 1.0 and meta["recall_estimated"] is False
    assert meta["weight_stats"]["ess_fraction"] <= 1.0


def test_drop_self_by_id_not_position():
    # row 0: a duplicate (id 5) comes before self (id 2); row 1: self absent -> drop the last result
    lab = np.array([[5, 2, 7], [1, 3, 4]])
    sim = np.array([[1.0, 1.0, 0.5], [0.9, 0.8, 0.7]], dtype=np.float32)
    s, l = drop_self(sim, lab, np.array([2, 9]))
    assert l.tolist() == [[5, 7], [1, 3]]
    np.testing.assert_allclose(s, [[1.0, 0.5], [0.9, 0.8]])


def test_duplicates_match_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    x[25] = x[3]  # exact duplicates spread over different chunks
    x[47] = x[3]
    x[55] = 2.5 * x[10]  # same direction: cosine distance 0
    x[30] = 0.0  # a zero vector stays zero: distance 1 to everything, no NaN
    paths = write_chunks(tmp_path, x, [20, 20, 20])
    for k in (1, 4):
        df, meta = search_chunks(paths, k=k, index="flat")
        got = df["knn_mean_dist"].to_numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, brute_force_mean_dist(x.astype(np.float64), k), atol=1e-5)
        assert meta["n_exact_duplicates"] == 5  # rows 3, 25, 47, 10, 55
    assert got[30] == pytest.approx(1.0)
    df1, _ = search_chunks(paths, k=1, index="flat")
    assert df1["knn_mean_dist"].to_numpy()[[3, 25, 47, 10, 55]] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dim", [16, 576])
def test_result_independent_of_chunking(tmp_path, dim):
    x = clustered(np.random.default_rng(2), 4, 50, 40, dim, spread=0.1)
    one = write_chunks(tmp_path / "one", x, [240])
    five = write_chunks(tmp_path / "five", x, [7, 100, 33, 61, 39])  # 7 rows: faiss's non-BLAS kernel
    d1 = search_chunks(one, k=6, index="flat")[0]["knn_mean_dist"].to_numpy()
    d5 = search_chunks(five, k=6, index="flat")[0]["knn_mean_dist"].to_numpy()
    np.testing.assert_array_equal(d1, d5)


@pytest.fixture(scope="module")
def approx_chunks(tmp_path_factory):
    x = clustered(np.random.default_rng(3), 10, 150, 500, 32, spread=0.3)
    return x, write_chunks(tmp_path_factory.mktemp("approx"), x, [700, 700, 600])


def test_ivf_exhaustive_probe_is_exact(approx_chunks):
    x, paths = approx_chunks
    df, meta = search_chunks(paths, k=10, index="ivf", nlist=16, nprobe=16, recall_sample=300, seed=0)
    assert meta["index"] == "ivf" and meta["nlist"] == 16 and meta["recall_estimated"] is True
    assert meta["recall_at_k"] >= 0.99
    np.testing.assert_allclose(
        df["knn_mean_dist"].to_numpy(), brute_force_mean_dist(x.astype(np.float64), 10), atol=1e-5
    )


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory):
    x = clustered(np.random.default_rng(5), 3, 100, 20, 16, spread=0.3)  # 320 rows: enough to train 8-bit PQ
    return x, write_chunks(tmp_path_factory.mktemp("small"), x, [160, 160])


@pytest.mark.parametrize(
    "index, extra", [("ivf", {"nlist": 32, "nprobe": 2}), ("ivfpq", {"nlist": 4, "nprobe": 2, "pq_m": 4, "rerank": 16})]
)
def test_approximate_indexes_report_recall(approx_chunks, small_chunks, index, extra):
    x, paths = approx_chunks if index == "ivf" else small_chunks  # PQ training is the slow part: keep it small
    df, meta = search_chunks(paths, k=10, index=index, recall_sample=200, seed=0, **extra)
    assert meta["index"] == index and meta["recall_estimated"] is True
    assert 0.0 <= meta["recall_at_k"] <= 1.0
    assert len(df) == len(x) and np.isfinite(df["knn_mean_dist"]).all()
    assert meta["index_bytes"] > 0 and meta["time_recall_s"] >= 0
    if index == "ivfpq":
        assert meta["pq_m"] == 4


def test_auto_index_choice():
    from density_grpo.index_plan import choose_index

    assert choose_index("auto", 320, 16, exact_max=320, max_index_gb=8.0) == "flat"
    assert choose_index("auto", 320, 16, exact_max=319, max_index_gb=8.0) == "ivfjoin"
    assert choose_index("auto", 320, 16, exact_max=100, max_index_gb=1e-6) == "ivfpq"  # 320*16*4 bytes > 1 kB
    assert choose_index("ivfpq", 10, 16, exact_max=100, max_index_gb=8.0) == "ivfpq"


def test_density_weights():
    d = np.array([0.0, 0.1, 0.2, 0.4, 0.8, 1.6])
    density, w = density_weights(d, 1.0, 1e-6, None)
    assert w.dtype == np.float64 and density.dtype == np.float64
    assert w.sum() == pytest.approx(1.0)
    assert np.all(np.diff(w) > 0) and np.all(np.diff(density) < 0)  # farther -> more weight, less density
    assert np.isfinite(density).all() and np.isfinite(w).all() and w[0] > 0  # eps handles distance 0
    _, w0 = density_weights(d, 0.0, 1e-6, None)
    np.testing.assert_allclose(w0, np.full(len(d), 1 / len(d)))
    _, w2 = density_weights(d, 2.0, 1e-6, None)
    assert w2[-1] / w2[1] > w[-1] / w[1]  # larger alpha sharpens
    _, wc = density_weights(d, 1.0, 1e-6, 2.0)
    assert wc.sum() == pytest.approx(1.0)
    assert wc.max() <= 2.0 * np.median(wc) + 1e-12
    stats = weight_stats(w0)
    assert stats["ess"] == pytest.approx(len(d)) and stats["entropy_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="alpha >= 0"):
        density_weights(d, -1.0, 1e-6, None)


def test_errors(tmp_path):
    rng = np.random.default_rng(4)
    paths = write_chunks(tmp_path / "small", rng.standard_normal((7, 8)).astype(np.float32), [3, 4])
    with pytest.raises(ValueError, match=r"k=10 neighbours need at least 11 vectors, got 7"):
        search_chunks(paths, k=10, index="flat")

    odd = str(tmp_path / "small" / "chunk_odd.zarr")
    write_chunk(odd, [f"{100 + i:016x}" for i in range(3)], rng.standard_normal((3, 6)), ATTRS)
    with pytest.raises(UserError, match="chunk_odd.zarr"):
        weights(paths + [odd], {"k": 2, "index": "flat"}, DENSITY)

    x = rng.standard_normal((400, 30)).astype(np.float32)
    big = write_chunks(tmp_path / "big", x, [200, 200])
    with pytest.raises(UserError, match=r"knn\.pq_m"):
        search_chunks(big, k=5, index="ivfpq", nlist=None, nprobe=2, pq_m=7, rerank=2, recall_sample=10, seed=0)

    dup = write_chunks(tmp_path / "dup", x[:10], [10])
    with pytest.raises(UserError, match="prompt_id"):
        weights(big + dup, {"k": 2, "index": "flat"}, DENSITY)


def test_deterministic(approx_chunks):
    _, paths = approx_chunks
    cfg = {"k": 10, "index": "ivf", "nlist": 16, "nprobe": 2, "recall_sample": 100, "seed": 7}
    runs = [weights(paths, cfg, {**DENSITY, "max_ratio": 5.0}) for _ in range(2)]
    assert runs[0][0]["weight"].to_numpy().tobytes() == runs[1][0]["weight"].to_numpy().tobytes()
    assert runs[0][1]["recall_at_k"] == runs[1][1]["recall_at_k"]
    flat = [
        weights(paths, {"k": 10, "index": "flat"}, DENSITY)[0]["weight"].to_numpy() for _ in range(2)
    ]
    assert flat[0].tobytes() == flat[1].tobytes()


def relative_errors(df, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative error of the reported mean k-NN distance vs brute force, and the top-decile mask of exact distance."""
    exact = brute_force_mean_dist(x.astype(np.float64), k)
    rel = (df["knn_mean_dist"].to_numpy() - exact) / np.maximum(exact, 1e-6)
    return rel, exact >= np.quantile(exact, 0.9)


def test_sample_accuracy_fields():
    from density_grpo.knn import sample_accuracy

    exact = np.array([[0.9, 0.8], [0.9, 0.8], [0.5, 0.4], [0.95, 0.9]] * 5)
    approx = exact.copy()
    approx[2] = [0.5, 0.2]  # a sparse row lost its 2nd neighbour: mean distance 0.55 -> 0.65
    acc = sample_accuracy(approx, exact)
    assert acc["recall_at_k"] == pytest.approx(1 - 1 / 40)
    assert acc["dist_rel_err_max"] == pytest.approx(0.1 / 0.55)
    assert acc["top_decile_dist_rel_err_max"] == pytest.approx(0.1 / 0.55)  # row 2 is in the top distance decile
    assert acc["dist_rel_err_median"] == 0.0 and acc["dist_rel_err_mean"] == pytest.approx(0.1 / 0.55 / 20)
    assert acc["sample_dist_spearman"] > 0.9


def test_ivfjoin_reports_its_error_against_exact(approx_chunks):
    """With every row in the sample, the reported recall and distance errors are those of brute force."""
    x, paths = approx_chunks
    args = dict(k=10, index="ivfjoin", nlist=16, nprobe=1, recall_sample=len(x), seed=0)
    df, meta = search_chunks(paths, fix_fraction=0.0, fix_nprobe=128, **args)
    rel, top = relative_errors(df, x, 10)
    assert (rel >= -1e-4).all()  # misses only make a distance larger (float32 vs float64 rounding aside)
    assert meta["recall_estimated"] and 0.5 < meta["recall_at_k"] < 1.0
    assert meta["dist_rel_err_max"] == pytest.approx(np.abs(rel).max(), rel=1e-4, abs=1e-6)
    assert meta["dist_rel_err_mean"] == pytest.approx(np.abs(rel).mean(), rel=1e-3, abs=1e-6)
    assert meta["top_decile_dist_rel_err_mean"] == pytest.approx(np.abs(rel[top]).mean(), rel=1e-3, abs=1e-6)
    assert meta["top_decile_dist_rel_err_mean"] > 0 and meta["n_fixed"] == 0
    # the fix pass (here: the top half re-searched over every list) only improves, most where misses land
    fixed, fmeta = search_chunks(paths, fix_fraction=0.5, fix_nprobe=16, **args)
    rel_fixed, _ = relative_errors(fixed, x, 10)
    assert (rel_fixed <= rel + 1e-9).all() and fmeta["n_fixed"] == len(x) // 2
    assert fmeta["top_decile_dist_rel_err_mean"] < meta["top_decile_dist_rel_err_mean"]


def test_ivfjoin_every_list_is_exact(approx_chunks):
    x, paths = approx_chunks
    join = dict(nlist=16, nprobe=16, fix_fraction=0.1, fix_nprobe=128)
    df, meta = search_chunks(paths, k=10, index="ivfjoin", recall_sample=300, seed=0, **join)
    np.testing.assert_allclose(df["knn_mean_dist"].to_numpy(), brute_force_mean_dist(x.astype(np.float64), 10), atol=1e-5)
    assert meta["recall_at_k"] == 1.0 and meta["dist_rel_err_max"] < 1e-5 and meta["nlist"] == 16


def test_reverse_edges_and_best_distinct():
    from density_grpo.knn import best_distinct, reverse_edges

    # row 0 found 1 and 2; row 1 missed 0 (found 2, 3); row 2 found 0, 1; row 3 found 1, 2
    lab = np.array([[1, 2], [2, 3], [0, 1], [1, 2]])
    sim = np.array([[0.9, 0.8], [0.7, 0.1], [0.8, 0.7], [0.1, 0.05]])
    s, l = reverse_edges(sim, lab, 2)
    assert l[1].tolist() == [0, 2] and s[1].tolist() == [0.9, 0.7]  # 0 offered itself to 1
    assert l[0].tolist() == [1, 2] and l[3].tolist() == [1, 2]
    s, l = best_distinct(np.array([[0.9, 0.5, 0.9, 0.3]]), np.array([[4, 7, 4, -1]]), 2)
    assert sorted(l[0].tolist()) == [4, 7]


@pytest.mark.parametrize("rerank", [1, 32])
def test_ivfpq_reranks_and_reports_its_error(small_chunks, rerank):
    """IVF-PQ re-ranks PQ candidates with the stored vectors: with enough candidates its weights match exact search
    within the error it reports; rerank=1 (no re-ranking) is measurably worse and says so."""
    x, paths = small_chunks
    cfg = {"k": 10, "index": "ivfpq", "nlist": 4, "nprobe": 4, "pq_m": 4, "rerank": rerank, "recall_sample": len(x)}
    cfg["seed"] = 0
    df, meta = weights(paths, cfg, DENSITY)
    rel, top = relative_errors(df, x, 10)
    assert meta["dist_rel_err_max"] == pytest.approx(np.abs(rel).max(), rel=1e-3, abs=1e-5)
    assert meta["top_decile_dist_rel_err_median"] == pytest.approx(np.median(np.abs(rel[top])), rel=1e-3, abs=1e-5)
    exact = weights(paths, {"k": 10, "index": "flat"}, DENSITY)[0]["weight"].to_numpy()
    w = df["weight"].to_numpy()
    # weight ∝ distance (alpha 1): each weight is off by its distance error, up to the common normalisation
    bound = meta["dist_rel_err_max"]
    assert np.abs(w / exact - 1).max() <= (1 + bound) / (1 - bound) - 1 + 1e-4
    if rerank == 32:
        assert meta["recall_at_k"] >= 0.99 and meta["dist_rel_err_max"] < 0.005 and meta["rerank"] == 32
    else:
        assert meta["recall_at_k"] < 0.9 and meta["dist_rel_err_max"] > 0.01


# -----------------------------------------------------------------------------
# recipes: post-processing, length residual, length diagnostics


def reference_postprocess(x: np.ndarray, how: str, r: int | None) -> np.ndarray:
    """Whole-matrix numpy reference of density.postprocess (np.cov over all rows at once)."""
    x = x.astype(np.float64)
    y = x - x.mean(axis=0)
    if how == "center":
        return y
    lam, vec = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    lam, vec = lam[::-1], vec[:, ::-1]
    u = vec[:, : (r or (1 if how == "abtt" else x.shape[1]))]
    if how == "abtt":
        return y - (y @ u) @ u.T
    return (y @ u) / np.sqrt(np.clip(lam[: u.shape[1]], 0, None) + 1e-6 * lam[0])  # same distances as mapped back


def length_data(seed: int = 5, n: int = 150, dim: int = 12):
    """Embeddings whose spread grows with prompt length (long prompts look isolated), plus their lengths."""
    rng = np.random.default_rng(seed)
    n_tokens = rng.integers(5, 400, n)
    turns = 1 + n_tokens // 120
    centre = rng.standard_normal(dim)
    x = centre + (n_tokens[:, None] / 800) * rng.standard_normal((n, dim))
    return x.astype(np.float32), {"n_tokens": n_tokens, "turns": turns}


@pytest.mark.parametrize("how, r", [("center", None), ("abtt", None), ("abtt", 3), ("whiten", None), ("whiten", 4)])
def test_postprocess_streamed_equals_whole(tmp_path, how, r):
    x = clustered(np.random.default_rng(6), 3, 30, 15, 10, spread=0.3) + 2.0  # off-centre, as LM states are
    chunked = write_chunks(tmp_path / "five", x, [7, 30, 23, 20, 25])
    whole = write_chunks(tmp_path / "one", x, [105])
    post = fit_postprocess(Chunks.open(chunked, progress=False), how, r)
    y, ref = post(x), reference_postprocess(x, how, r)
    np.testing.assert_allclose(y @ y.T, ref @ ref.T, atol=1e-6)  # same inner products (whiten maps back to d dims)
    assert np.abs(y.mean(axis=0)).max() < 1e-9  # every recipe centres
    if how == "abtt":  # the top principal directions are gone
        top = np.linalg.eigh(np.cov(x, rowvar=False))[1][:, ::-1][:, : r or 1]
        assert np.abs(y @ top).max() < 1e-8
    if how == "whiten":  # unit variance on the kept directions, nothing on the others
        lam = np.sort(np.linalg.eigvalsh(np.cov(y, rowvar=False, bias=True)))[::-1]
        np.testing.assert_allclose(lam[: r or 10], 1.0, atol=1e-4)
        assert np.abs(lam[(r or 10) :]).max(initial=0) < 1e-9
    expected = brute_force_mean_dist(reference_postprocess(x, how, r), 4)
    for paths in (chunked, whole):
        dens = {**DENSITY, "postprocess": how, "components": r}
        df, meta = weights(paths, {"k": 4, "index": "flat"}, dens)
        np.testing.assert_allclose(df["knn_mean_dist"].to_numpy(), expected, atol=1e-5)
        assert meta["postprocess"] == how and meta["dim"] == 10
    raw = weights(chunked, {"k": 4, "index": "flat"}, DENSITY)[0]["knn_mean_dist"].to_numpy()
    assert not np.allclose(raw, expected, atol=1e-3)  # the recipe changes the distances
    with pytest.raises(UserError, match="density.components"):
        fit_postprocess(Chunks.open(chunked, progress=False), how if how != "center" else "abtt", 11)


def test_length_residual_removes_the_length_trend():
    rng = np.random.default_rng(7)
    tokens = rng.integers(5, 500, 300)
    turns = 1 + rng.integers(0, 4, 300)
    dist = np.exp(0.4 * np.log(tokens) - 0.2 * np.log(turns) + 0.1 * rng.standard_normal(300)) / 20
    lengths = pd.DataFrame({"n_tokens": tokens, "turns": turns})
    same, fit = length_residual(dist, lengths, "none", 1e-6)
    assert fit == {} and np.array_equal(same, dist)
    for how, names in (("tokens", ["n_tokens"]), ("tokens_turns", ["n_tokens", "turns"])):
        adj, fit = length_residual(dist, lengths, how, 1e-6)
        assert adj.shape == dist.shape and (adj > 0).all()
        resid = np.log(adj)
        for c in names:  # OLS: the residual carries no linear trend in any regressor
            assert abs(np.corrcoef(resid, np.log(lengths[c]))[0, 1]) < 1e-9
        assert np.mean(np.log(adj)) == pytest.approx(np.mean(np.log(dist + 1e-6)))  # typical distance kept
        assert fit["log_n_tokens"] == pytest.approx(0.4, abs=0.03)
    assert fit["log_turns"] == pytest.approx(-0.2, abs=0.05)
    with pytest.raises(UserError, match="density.length_residual"):  # the schema's allowed values, checked once
        DensityConfig.from_params({**DENSITY, "length_residual": "chars"})


def test_spearman():
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert spearman(np.arange(5), -np.arange(5.0) ** 3) == pytest.approx(-1.0)
    assert spearman(np.array([1, 1, 2, 2]), np.array([1, 2, 3, 4])) == pytest.approx(2 / np.sqrt(5))  # ties: average rank
    assert spearman(np.ones(4), np.arange(4)) is None


def test_length_diagnostics_and_residual(tmp_path):
    x, cols = length_data()
    chunked = write_chunks(tmp_path / "three", x, [40, 60, 50], columns=cols)
    whole = write_chunks(tmp_path / "one", x, [150], columns=cols)
    knn = {"k": 5, "index": "flat"}
    df, meta = weights(chunked, knn, DENSITY)
    assert list(df.columns) == ["prompt_id", "knn_mean_dist", "density", "weight", "n_tokens", "turns"]
    assert df["n_tokens"].tolist() == cols["n_tokens"].tolist() and df["turns"].tolist() == cols["turns"].tolist()
    assert meta["spearman_weight_tokens"] == pytest.approx(spearman(df["weight"].to_numpy(), cols["n_tokens"]))
    assert meta["spearman_weight_tokens"] > 0.5 and meta["spearman_weight_turns"] > 0.3  # the leak, measured
    assert meta["length_residual"] == "none" and "length_residual_fit" not in meta
    for how in ("tokens", "tokens_turns"):
        dens = {**DENSITY, "length_residual": how, "postprocess": "center"}
        dc, mc = weights(chunked, knn, dens)
        dw, _ = weights(whole, knn, dens)
        np.testing.assert_allclose(dc["weight"], dw["weight"], rtol=1e-9)  # chunked == whole
        assert abs(mc["spearman_weight_tokens"]) < 0.2 < meta["spearman_weight_tokens"]
        before = spearman(dc["knn_mean_dist"].to_numpy(), cols["n_tokens"])  # knn_mean_dist stays the raw distance
        assert mc["length_residual_fit"]["spearman_dist_tokens_before"] == pytest.approx(before) and before > 0.2
        assert mc["length_residual_fit"]["log_n_tokens"] > 0
    bare = write_chunks(tmp_path / "bare", x, [150])  # chunk stores without per-prompt lengths
    df, meta = weights(bare, knn, DENSITY)
    assert "n_tokens" not in df and meta["spearman_weight_tokens"] is None and meta["spearman_weight_turns"] is None
    with pytest.raises(UserError, match=r"density.length_residual=tokens needs .*bare/chunk_0.zarr"):
        weights(bare, knn, {**DENSITY, "length_residual": "tokens"})


def test_postprocess_memory_is_predicted():
    knn = KNNConfig.from_params({"k": 10, "index": "flat"})
    plain = _predict(1000, 576, 128, knn, "none")["total_bytes"]
    assert _predict(1000, 576, 128, knn, "center")["total_bytes"] == plain
    assert _predict(1000, 576, 128, knn, "whiten")["total_bytes"] - plain >= 4 * 576 * 576 * 8


IVF = {"nlist": 4, "nprobe": 2, "recall_sample": 50, "seed": 0}
DECLARED = [  # what rules/common.smk declares per index kind and recipe
    ({"k": 5, "index": "flat"}, DENSITY),
    ({"k": 5, "index": "ivf", **IVF}, {**DENSITY, "postprocess": "center", "length_residual": "tokens"}),
    ({"k": 5, "index": "ivfpq", **IVF, "pq_m": 4, "rerank": 4}, {**DENSITY, "postprocess": "whiten", "components": 3}),
    ({"k": 5, "index": "ivfjoin", **IVF, "fix_fraction": 0.1, "fix_nprobe": 4}, {**DENSITY, "postprocess": "abtt", "components": 2}),
]


@pytest.mark.parametrize("knn, dens", DECLARED, ids=[k["index"] for k, _ in DECLARED])
def test_run_reads_exactly_its_params(tmp_path, small_chunks, knn, dens):
    """The stage reads every param its rule declares, and only those (tests/test_contract.py: the whole pipeline)."""
    from density_grpo import config, density
    from density_grpo.cli import RecordingParams

    x, _ = small_chunks
    cols = {"n_tokens": np.arange(len(x)) + 5, "turns": np.ones(len(x), dtype=int)}
    paths = write_chunks(tmp_path, x, [160, 160], columns=cols)
    params = RecordingParams({"knn": knn, "density": dens})
    prompts = tmp_path / "prompts.parquet"
    pd.DataFrame({"prompt_id": [f"{j:016x}" for j in range(len(x))], "topic": ""}).to_parquet(prompts)
    config.AUDIT = set()
    try:
        inputs = {"chunks": paths, "prompts": str(prompts)}
        density.run(inputs, {"weights": str(tmp_path / "w.parquet"), "meta": str(tmp_path / "m.json")}, params)
        read = params.read | config.AUDIT
    finally:
        config.AUDIT = None
    assert read == params.leaves()


@pytest.mark.parametrize("env, shown", [(None, True), ("1", False)])
def test_chunk_progress_bar_honours_tqdm_disable(tmp_path, monkeypatch, capsys, env, shown):
    """Every job sets TQDM_DISABLE; the chunk bars asked for with progress=True must still stay off the console."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    if env is not None:
        monkeypatch.setenv("TQDM_DISABLE", env)
    x = np.random.default_rng(0).standard_normal((8, 4))
    chunks = Chunks.open(write_chunks(tmp_path, x, [4, 4]), progress=True)
    assert sum(len(v) for v in chunks.raw("fitting")) == 8
    assert ("fitting" in capsys.readouterr().err) == shown

"""The weights stage at scale: N=1,000,000 synthetic prompts at the default model's width, against exact search.

    python benchmarks/knn_scale.py [--n 1000000] [--kind hard] [--compare-n 50000] [--quick]

Data: `common.synthetic` (clustered on a latent subspace, LM-style anisotropy and offset, a long tail of rare
points), written as chunk stores. The stage (`density.compute_weights` with `knn.index: auto` and the other knn
defaults of config.yaml) runs in a fresh subprocess, so its wall time and peak RSS are its own. Ground truth: exact
top-k by brute force for a seeded 2,000-row sample (not the stage's own recall sample). Metrics on that sample:
recall@10 (id sets), Spearman of the stage's weights vs the exact mean distance (= exact weights' ranks),
the relative error of the mean k-NN distance (median over the top decile of exact distance = rare_dist_err).
recall10 is the stage's own tie-aware recall@10 on its seeded recall sample, set to 2,000 rows here (the stage
outputs no neighbour ids). Then every index kind once at --compare-n rows (the first rows of the same data) with the same defaults, to show
which is best; --compare-n 0 skips it.
The last line is machine-readable: RESULT knn_scale n=... seconds=... recall10=... spearman=... rare_dist_err=...
peak_rss_gb=...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import ROOT, machine, peak_rss_bytes, result, synthetic, table, write_stores

SAMPLE = 2000


def knn_defaults() -> tuple[dict, dict]:
    """knn and density sections of the shipped config.yaml."""
    import yaml

    with open(os.path.join(ROOT, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    return cfg["knn"], cfg["density"]


def stage_params(index: str, n: int, dim: int) -> dict:
    """The knn params the rule would pass (rules/common.smk knn_params), for `index` (auto resolved here)."""
    from density_grpo.index_plan import choose_index

    knn, _ = knn_defaults()
    kind = choose_index(index, n, dim, knn["exact_max"], knn["max_index_gb"])
    params = {"k": knn["k"], "index": kind}
    if kind != "flat":
        params.update(nlist=knn["nlist"], nprobe=knn["nprobe"], recall_sample=knn["recall_sample"], seed=0)
    if kind == "ivfpq":
        params.update(pq_m=knn["pq_m"], rerank=knn["rerank"])
    if kind == "ivfjoin":
        params.update(fix_fraction=knn["fix_fraction"], fix_nprobe=knn["fix_nprobe"])
    return params


def stage(args: argparse.Namespace) -> None:
    """Child mode: run the weights stage on the stores in args.stage; save weights, print one JSON line."""
    from density_grpo.config import DensityConfig, KNNConfig
    from density_grpo.density import compute_weights

    paths = sorted((os.path.join(args.stage, p) for p in os.listdir(args.stage)), key=lambda p: int(p.split("_")[-1][:-5]))
    paths = paths[: args.chunks] if args.chunks else paths
    knn, dens = KNNConfig.from_params(json.loads(args.params)), DensityConfig.from_params(knn_defaults()[1])
    t = time.perf_counter()
    df, meta = compute_weights(paths, knn, dens, progress=False)
    wall = time.perf_counter() - t
    np.savez(args.out, mean_dist=df["knn_mean_dist"].to_numpy(), weight=df["weight"].to_numpy())
    peak = peak_rss_bytes()
    meta.pop("weight_stats", None)
    print(json.dumps({"seconds": wall, "peak_rss_gb": peak / 1e9, "meta": meta}))


def run_stage(store: str, params: dict, chunks: int, threads: int, out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", store, "--params", json.dumps(params)]
    cmd += ["--chunks", str(chunks), "--out", out]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"weights stage failed ({params['index']}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def evaluate(got: dict, x: np.ndarray, rows: np.ndarray, k: int) -> dict:
    """recall@k (id sets), weight Spearman and mean-distance errors of a stage run on the ground-truth sample."""
    import pandas as pd

    from density_grpo.knn import exact_knn, rescore

    exact = np.clip(1.0 - rescore(x[rows], exact_knn(x, rows, k)[1], x), 0.0, None).mean(axis=1)
    approx = got["mean_dist"][rows]
    rel = (approx - exact) / np.maximum(exact, 1e-6)
    top = exact >= np.quantile(exact, 0.9)
    w = pd.Series(got["weight"][rows]).rank().to_numpy()
    return {
        "spearman": float(np.corrcoef(w, pd.Series(exact).rank().to_numpy())[0, 1]),
        "rare_dist_err": float(np.median(np.abs(rel[top]))),
        "mean_rel_err": float(np.mean(np.abs(rel))),
        "p99_rel_err": float(np.quantile(np.abs(rel), 0.99)),
        "max_rel_err": float(np.abs(rel).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=576, help="SmolLM2-135M hidden size")
    ap.add_argument("--kind", default="hard", help="synthetic data: clustered | lm | hard")
    ap.add_argument("--chunk", type=int, default=8192, help="rows per chunk store")
    ap.add_argument("--compare-n", type=int, default=50_000, help="rows for the all-index comparison (0: skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="N=100,000, compare at 20,000")
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--chunks", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        return stage(args)
    if args.quick:
        args.n, args.compare_n = 100_000, 20_000
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(machine())
    print(f"faiss {faiss.__version__}, {args.threads} threads; data {args.kind} n={args.n:,} dim={args.dim}; "
          f"chunk stores of {args.chunk} rows; ground truth: exact k-NN of {SAMPLE:,} sampled rows", flush=True)  # fmt: skip
    k = knn_defaults()[0]["k"]
    rows_out = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        t = time.perf_counter()
        x = synthetic(args.n, args.dim, args.kind)
        store = os.path.join(tmp, "stores")
        os.makedirs(store)
        write_stores(store, x, args.chunk)
        np.save(os.path.join(tmp, "x.npy"), x)
        print(f"data + stores: {time.perf_counter() - t:.0f} s", flush=True)
        del x  # the stage runs alone: the parent holds nothing big meanwhile

        runs = [(args.n, "auto")]
        if args.compare_n:
            runs += [(args.compare_n, kind) for kind in ("flat", "ivf", "ivfpq", "ivfjoin")]
        for n, index in runs:
            chunks = -(-n // args.chunk)
            n_eff = min(args.n, chunks * args.chunk)
            # the stage's own recall sample is the 2,000-row recall10 (it outputs no neighbour ids to compare)
            params = {**stage_params(index, n_eff, args.dim), "recall_sample": SAMPLE}
            if params["index"] == "flat":
                del params["recall_sample"]
            out = os.path.join(tmp, "weights.npz")
            rec = run_stage(store, params, chunks, args.threads, out)
            got = dict(np.load(out))
            x = np.ascontiguousarray(np.load(os.path.join(tmp, "x.npy"), mmap_mode="r")[:n_eff])
            rows = np.sort(np.random.default_rng(12345).choice(n_eff, size=min(SAMPLE, n_eff), replace=False))
            ev = evaluate(got, x, rows, k)
            del x
            meta = rec["meta"]
            knobs = ("nlist", "nprobe", "fix_fraction", "fix_nprobe", "pq_m", "rerank")
            row = {
                "n": n_eff, "index": f"{index} -> {params['index']}" if index == "auto" else index,
                "params": ",".join(f"{key}={meta.get(key, params[key])}" for key in knobs if key in params),
                "seconds": rec["seconds"], "peak_rss_gb": rec["peak_rss_gb"], "recall10": meta["recall_at_k"], **ev,
                "stage_top_decile_err": meta["top_decile_dist_rel_err_median"],
            }  # fmt: skip
            rows_out.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows_out))
    head = rows_out[0]
    print(result(
        "knn_scale", n=head["n"], seconds=round(head["seconds"], 1), recall10=head["recall10"], spearman=head["spearman"],
        rare_dist_err=head["rare_dist_err"], peak_rss_gb=round(head["peak_rss_gb"], 2),
    ))  # fmt: skip


if __name__ == "__main__":
    main()

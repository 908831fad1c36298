"""Shared benchmark helpers: machine line, peak-RSS sampler, synthetic embeddings, chunk stores, table printing.

Benchmarks measure the project's way and the reference way in one process run (interleaved repeats, medians) and
print a table, then LAST a `RESULT <name> key=value ...` line. Run from a clean clone after `make install`.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import density_grpo  # noqa: F401
except ImportError:
    sys.path.insert(0, ROOT)


def machine() -> str:
    """One line: CPU model, cores, RAM, load averages (these machines are shared: ratios, not absolute times)."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    ram = psutil.virtual_memory().total / 2**30
    return f"machine: {cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, load average {load}"


def gemm_gflops(threads: int, n: int = 2048, repeats: int = 3) -> float:
    """Float32 GEMM ceiling measured now (torch matmul, `threads` threads): best of `repeats`, GFLOP/s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM, which (unlike ru_maxrss) does not start at the parent's RSS after fork+exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Samples this process's RSS on a thread; `peak` is the highest value seen (bytes)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


# -----------------------------------------------------------------------------
# synthetic embeddings

KINDS = {
    # Gaussian clusters with log-normal sizes on a 64-d latent subspace + noise, 8% isolated rare points
    "clustered": dict(lm=False, latent=64, n_clusters=3000, noise=2.0, rare=0.08),
    # the same through what mean-pooled LM states look like: anisotropic scales, 4 massive dims, a common offset
    "lm": dict(lm=True, latent=64, n_clusters=3000, noise=2.0, rare=0.08),
    # harder: 256-d latent, 20,000 small clusters, more noise, 10% rare, LM-style offset
    "hard": dict(lm=True, latent=256, n_clusters=20000, noise=3.0, rare=0.10),
}


def synthetic(n: int, dim: int = 576, kind: str = "hard", seed: int = 0, block: int = 1 << 16) -> np.ndarray:
    """(n, dim) float32 unit vectors with a long tail of rare points; row ranges are reproducible (seeded per block).

    Clusters have log-normal sizes (a few huge, many tiny) and varied spreads; `rare` of the points are drawn from
    a broad Gaussian in the latent space, far from everything: the high-weight tail the weights exist for.
    """
    p = KINDS[kind]
    rng = np.random.default_rng([seed, 999])
    w = rng.lognormal(0.0, 1.5, p["n_clusters"])
    cum = np.cumsum(w / w.sum())
    centres = rng.standard_normal((p["n_clusters"], p["latent"])).astype(np.float32)
    spread = rng.uniform(0.15, 0.8, p["n_clusters"]).astype(np.float32)
    proj = (rng.standard_normal((p["latent"], dim)) / np.sqrt(p["latent"])).astype(np.float32)
    scale = rng.lognormal(0.0, 0.5, dim).astype(np.float32)
    scale[rng.choice(dim, 4, replace=False)] *= 12.0  # massive-activation dims
    offset = rng.standard_normal(dim).astype(np.float32) * scale
    out = np.empty((n, dim), dtype=np.float32)
    for b, start in enumerate(range(0, n, block)):
        m = min(block, n - start)
        rng = np.random.default_rng([seed, b])
        c = np.minimum(np.searchsorted(cum, rng.random(m)), p["n_clusters"] - 1)
        z = centres[c] + spread[c, None] * rng.standard_normal((m, p["latent"]), dtype=np.float32)
        rare = rng.random(m) < p["rare"]
        z[rare] = 1.6 * rng.standard_normal((int(rare.sum()), p["latent"]), dtype=np.float32)
        x = z @ proj
        x += (p["noise"] / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        if p["lm"]:
            x *= scale
            x += offset * (1.6 * np.linalg.norm(x, axis=1).mean() / np.linalg.norm(offset))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def write_stores(root: str, x: np.ndarray, chunk: int, attrs: dict | None = None) -> list[str]:
    """Rows of x as chunk stores of `chunk` rows (ids: the row numbers in hex), like the embed step writes them."""
    from density_grpo.store import write_chunk

    paths = []
    for i, start in enumerate(range(0, len(x), chunk)):
        path = os.path.join(root, f"chunk_{i}.zarr")
        ids = [f"{j:016x}" for j in range(start, min(start + chunk, len(x)))]
        write_chunk(path, ids, x[start : start + chunk], attrs or {"model": "synthetic", "source": "hidden", "layer": -1})
        paths.append(path)
    return paths


def table(rows: list[dict], floats: str = ".3f") -> str:
    """A markdown table of dicts (keys of the first row as columns)."""
    cols = list(rows[0])
    fmt = lambda v: f"{v:{floats}}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def result(name: str, **values) -> str:
    """The machine-readable last line."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return f"RESULT {name} " + " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def default_model() -> str:
    """The default model's folder (resources/models/smollm2-135m-instruct), fetched and converted once if absent."""
    from density_grpo.models import fetch_model

    path = os.path.join(ROOT, "resources", "models", "smollm2-135m-instruct")
    if not os.path.exists(os.path.join(path, "config.json")):
        fetch_model("smollm2-135m-instruct", path)
    return path


def set_threads(threads: int) -> None:
    """Same threads for every library that computes here: torch, faiss (OpenMP) and numpy/scipy's BLAS."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    threadpool_limits(threads)

"""Measure a job's memory: a sampling monitor, and the hooks a stage uses to record its prediction.

    with MemoryMonitor("memory/embed_chunk_3.json", rule="embed_chunk", wildcards={"i": "3"}):
        expect(prediction)          # the stage's own predicted peak (memory.prediction), once it knows its shapes
        ...
        note(tokens_per_s=812.0)    # any figure worth keeping beside the measurement

On exit (also on an exception, then status "failed") the JSON holds peak RSS of the process tree (sampled every
`interval` s) and, for a step run on N data-parallel processes (density_grpo.distributed), each rank's own peak
(`peak_rss_per_rank_mb`; then the measured figure is the largest rank's, as the prediction is per process), CUDA
peaks (torch.cuda.max_memory_allocated/reserved, exact; per rank too) when CUDA was used, the prediction and
measured/predicted, the notes, and the timeline. Units: MiB (2^20 bytes, what Snakemake's benchmark max_rss calls MB).
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import psutil
from tqdm import tqdm

from density_grpo.io import write_json

log = logging.getLogger(__name__)

MiB = 2**20
_current: contextvars.ContextVar["MemoryMonitor | None"] = contextvars.ContextVar("memory_monitor", default=None)


def job_name(rule: str, wildcards: Sequence[str]) -> str:
    """The one name of a job: `{rule}[_{wildcard value}...]`, for its memory record, log and benchmark (the rules
    call it with wildcard patterns such as "{sampler}", the monitor with the values)."""
    return "_".join([rule, *map(str, wildcards)])


def duration(seconds: float) -> str:
    """Seconds as h:mm:ss ("?" when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def bar(iterable: Any, **kw: Any) -> tqdm:
    """A tqdm bar that honours TQDM_DISABLE (set in every job) even when the caller passes `disable=False`: tqdm
    reads the variable only for arguments left out, so an explicit `disable=False` would print bars in a job."""
    off = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(iterable, **{**kw, "disable": off or kw.get("disable", False)})


class Progress:
    """Compact progress lines with an estimate of time left, at most about `lines` of them for the whole loop:
    `update(done, **fields)` logs `{what} {done}/{total} {unit}, {fields}; {rate} {unit}/s, ETA h:mm:ss` when due."""

    def __init__(self, what: str, total: int, unit: str, lines: int = 20, logger: logging.Logger = log):
        self.what, self.total, self.unit, self.logger = what, total, unit, logger
        self.every = max(1, math.ceil(total / max(1, lines)))
        self.t0, self._next = time.perf_counter(), self.every

    def line(self, done: int, elapsed_s: float, fields: Mapping[str, float | None]) -> str:
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else math.inf
        shown = ", ".join(f"{k} {'-' if v is None else f'{v:.4g}'}" for k, v in fields.items())
        return f"{self.what} {done}/{self.total} {self.unit}{', ' + shown if shown else ''}; {rate:.3g} {self.unit}/s, ETA {duration(left)}"

    def update(self, done: int, **fields: float | None) -> None:
        if done >= self._next or done >= self.total:
            self._next = (done // self.every + 1) * self.every
            self.logger.info("%s", self.line(done, time.perf_counter() - self.t0, fields))


def read_bench(path: str | os.PathLike) -> dict[str, float]:
    """A Snakemake benchmark TSV -> its max over repeats of s and max_rss (MiB); '-' cells become NaN."""
    import pandas as pd

    df = pd.read_csv(path, sep="\t")
    return {col: float(pd.to_numeric(df[col], errors="coerce").max()) for col in ("s", "max_rss") if col in df}


def collect(input: dict, output: dict, params: dict) -> None:
    """Rule embed_records: the embed chunks' memory records and benchmarks in one file, so the report's inputs do
    not depend on how many chunks the prompts checkpoint made (reports rebuild from frozen artifacts)."""
    from density_grpo.io import read_json

    records = [read_json(p) for p in input["memory"]]
    write_json({"records": records, "bench": [read_bench(p) for p in input["bench"]]}, output["records"])


def expect(prediction: Mapping[str, Any]) -> None:
    """Record the running job's predicted peak (a memory.prediction dict); warn when it may not fit. No-op outside a job."""
    from density_grpo.memory import warn_if_too_big

    mon = _current.get()
    if mon is None:
        return
    mon.predicted = dict(prediction)
    try:
        warn_if_too_big(prediction, mon.warn_fraction)
    except Exception as e:  # a failed free-memory query must not fail the job
        log.debug("free memory check failed: %s", e)


def note(**figures: Any) -> None:
    """Keep figures (throughput, token counts) in the running job's memory record. No-op outside a job."""
    mon = _current.get()
    if mon is not None:
        mon.extra.update(figures)


def rank_cuda_peaks(peaks_mb: list[float]) -> None:
    """Record each rank's CUDA peak (MiB; distributed.launch reads them from the workers). No-op outside a job."""
    mon = _current.get()
    if mon is not None:
        mon.rank_cuda_mb = list(peaks_mb)


class Relay:
    """In a worker of a multi-process step: collect what the step tells the monitor (expect, note) and, on exit,
    write it with this process's CUDA peak to `path` for the launcher (which has the job's real MemoryMonitor)."""

    def __init__(self, path: Path, rank: int):
        self.path, self.rank = path, rank
        self.predicted: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}
        self.warn_fraction = 0.9

    def __enter__(self) -> "Relay":
        self._token = _current.set(self)  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc) -> None:
        _current.reset(self._token)
        cuda = _cuda()
        peak = None if cuda is None else cuda.max_memory_allocated() / MiB
        told = {"rank": self.rank, "predicted": self.predicted, "extra": self.extra, "peak_cuda_mb": peak}
        write_json(told, self.path)


def _rank_of(proc: psutil.Process, ranks: dict[int, int | None]) -> int | None:
    """The data-parallel rank a process belongs to (RANK in its environment, as torch.distributed.run sets it).
    Only a rank is cached: a worker seen between fork and exec still shows its launcher's environment (no RANK),
    which on a loaded machine is long enough to be sampled."""
    if ranks.get(proc.pid) is None:
        try:
            rank = proc.environ().get("RANK")
        except psutil.Error:
            rank = None
        ranks[proc.pid] = int(rank) if rank is not None and rank.isdigit() else None
    return ranks[proc.pid]


def _tree_rss(proc: psutil.Process, ranks: dict[int, int | None] | None = None) -> tuple[int, dict[int, int]]:
    """RSS of a process and all its children (shared pages are counted once per process), and per rank: the RSS of
    the processes whose environment names a RANK (a launched step's workers; `ranks` caches pid -> rank)."""
    total, per_rank = 0, {}
    ranks = {} if ranks is None else ranks
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:  # a child exited between listing and reading
            continue
        total += rss
        rank = _rank_of(p, ranks) if p is not proc else None
        if rank is not None:
            per_rank[rank] = per_rank.get(rank, 0) + rss
    return total, per_rank


def _cuda():
    """torch.cuda when this process has already initialised CUDA (never initialises it), else None."""
    # the job may be importing torch on the main thread right now: a partially initialised module has no .cuda
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except Exception:
        return None


class MemoryMonitor:
    """Sample the RSS of this process and its children (and CUDA memory) on a daemon thread; write one JSON."""

    MAX_SAMPLES = 10_000  # beyond this, every other sample is dropped and the interval doubled

    def __init__(
        self,
        path: str | os.PathLike,
        rule: str,
        wildcards: Mapping | None = None,
        interval: float = 0.1,
        warn_fraction: float = 0.9,
    ):
        self.path, self.rule = Path(path), rule
        # Snakemake's Wildcards is a list with .items(), not a dict
        items = wildcards.items() if hasattr(wildcards, "items") else (wildcards or {})
        self.wildcards = {str(k): str(v) for k, v in dict(items).items()}
        self.job = job_name(rule, self.wildcards.values())
        self.interval, self.warn_fraction = interval, warn_fraction
        self.predicted: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}
        self.samples: list[tuple[float, float, float, float]] = []  # t_s, rss, cuda alloc, cuda reserved (bytes)
        self.peak_rss = 0
        self.rank_peaks: dict[int, int] = {}  # bytes per data-parallel rank (workers of distributed.launch)
        self.rank_cuda_mb: list[float] | None = None
        self._ranks: dict[int, int | None] = {}
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cuda_seen = False
        self._token: contextvars.Token | None = None

    def sample(self) -> None:
        """Take one sample now (the thread calls this every `interval` seconds)."""
        rss, per_rank = _tree_rss(self._proc, self._ranks)
        alloc = reserved = 0.0
        cuda = _cuda()
        if cuda is not None:
            self._cuda_seen = True
            alloc, reserved = cuda.memory_allocated(), cuda.memory_reserved()
        with self._lock:
            self.peak_rss = max(self.peak_rss, rss)
            for rank, r in per_rank.items():
                self.rank_peaks[rank] = max(self.rank_peaks.get(rank, 0), r)
            self.samples.append((time.perf_counter() - self._t0, rss, alloc, reserved))
            if len(self.samples) > self.MAX_SAMPLES:
                self.samples = self.samples[::2]
                self.interval *= 2

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as e:  # keep sampling: one failed read must not end the timeline
                log.debug("memory sample failed: %s", e)

    def __enter__(self) -> "MemoryMonitor":
        self._t0 = time.perf_counter()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self.sample()
        self.baseline_rss = self.samples[0][1]
        self._thread = threading.Thread(target=self._run, name=f"memory-monitor-{self.job}", daemon=True)
        self._thread.start()
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._token is not None:
            _current.reset(self._token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        self.wall_s = time.perf_counter() - self._t0
        try:
            write_json(self.record("ok" if exc_type is None else "failed"), self.path)
        except Exception:  # never mask the job's own error (or success) with a reporting failure
            log.exception("could not write the memory record of %s", self.job)

    def record(self, status: str = "ok") -> dict[str, Any]:
        """The JSON record (MiB)."""
        cuda = _cuda()
        peak_cuda = peak_cuda_reserved = None
        if cuda is not None:
            peak_cuda, peak_cuda_reserved = cuda.max_memory_allocated() / MiB, cuda.max_memory_reserved() / MiB
        elif self._cuda_seen:
            peak_cuda = max(s[2] for s in self.samples) / MiB
            peak_cuda_reserved = max(s[3] for s in self.samples) / MiB
        if self.rank_cuda_mb:  # a multi-process step: the largest rank (the prediction is per process)
            peak_cuda = max(self.rank_cuda_mb)
        pred = self.predicted
        on_gpu = pred is not None and pred["device"] != "cpu" and peak_cuda is not None
        ranks = [round(self.rank_peaks[r] / MiB, 2) for r in sorted(self.rank_peaks)]
        measured = peak_cuda if on_gpu else (max(ranks) if ranks else self.peak_rss / MiB)
        what = "cuda max_memory_allocated" if on_gpu else "peak RSS of the job's process tree"
        if ranks:
            what = f"{'cuda max_memory_allocated' if on_gpu else 'peak RSS'} of the largest of {len(ranks)} processes"
        rec: dict[str, Any] = {
            "job": self.job,
            "rule": self.rule,
            "wildcards": self.wildcards,
            "status": status,
            "peak_rss_mb": round(self.peak_rss / MiB, 2),
            "baseline_rss_mb": round(self.baseline_rss / MiB, 2),
            "peak_cuda_mb": None if peak_cuda is None else round(peak_cuda, 2),
            "peak_cuda_reserved_mb": None if peak_cuda_reserved is None else round(peak_cuda_reserved, 2),
            "peak_rss_per_rank_mb": ranks or None,
            "peak_cuda_per_rank_mb": self.rank_cuda_mb,
            "measured_mb": round(measured, 2),
            "measured_what": what,
            "wall_s": round(self.wall_s, 3),
            "started_at": self.started_at,
            "host": platform.node(),
            "total_ram_mb": round(psutil.virtual_memory().total / MiB, 1),
            "cpus": psutil.cpu_count(),
            "predicted_mb": None,
            "measured_over_predicted": None,
            "prediction": None,
            "extra": self.extra,
        }
        if pred is not None:
            rec["predicted_mb"] = round(pred["total_bytes"] / MiB, 2)
            rec["measured_over_predicted"] = round(measured / rec["predicted_mb"], 3) if rec["predicted_mb"] else None
            rec["prediction"] = {**pred, "components_mb": {k: round(v / MiB, 2) for k, v in pred["components"].items()}}
        timeline: dict[str, list[float]] = {
            "t_s": [round(s[0], 3) for s in self.samples],
            "rss_mb": [round(s[1] / MiB, 2) for s in self.samples],
        }
        if self._cuda_seen:
            timeline["cuda_alloc_mb"] = [round(s[2] / MiB, 2) for s in self.samples]
            timeline["cuda_reserved_mb"] = [round(s[3] / MiB, 2) for s in self.samples]
        rec["timeline"] = timeline
        return rec

"""N data-parallel processes for one training step, launched by the step itself (torch.distributed.run).

A rule's step that is configured for N > 1 processes calls `launch`: the step function runs again in N worker
processes on this node (gloo on CPU, NCCL on CUDA: the Trainer's accelerator picks the backend from the device),
with the rule's CPU threads split between them. Workers see RANK/WORLD_SIZE in their environment (`world`), and
only rank 0 writes the step's outputs. The launcher relays the workers' log lines into the job's log, and what the
workers told the memory monitor (rank 0's prediction and notes, every rank's CUDA peak) into the job's own monitor;
a UserError in a worker becomes the job's one-line error. Snakemake and the SLURM profile see one job.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from density_grpo.errors import UserError

log = logging.getLogger(__name__)

ERROR_MARK = "density_grpo.distributed error: "  # a worker's UserError, relayed as the job's error
FILE_MARK = "[log file] "  # a worker's line for the job's log file only (cli.FILE_ONLY), not the console
RELAY_ENV = "DENSITY_GRPO_RELAY"  # the folder where each worker leaves what it told the memory monitor
THREADS_ENV = "DENSITY_GRPO_THREADS"


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a launched worker."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return world()[0] == 0


def must_launch(processes: int) -> bool:
    """True in the job's own process of a step configured for more than one process (not yet in a worker)."""
    return processes > 1 and RELAY_ENV not in os.environ


def local_device(device: str) -> str:
    """A worker's own device: cuda:LOCAL_RANK when the job's device is CUDA (one GPU per process)."""
    if device.startswith("cuda") and world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def launch(
    step: Callable,
    paths: tuple[Mapping[str, Any], Mapping[str, Any]],
    params: Mapping[str, Any],
    processes: int,
    key: str,
) -> None:
    """Run `step(input, output, params)` (a module-level function) in `processes` workers; return when all are done.

    paths: the rule's input and output; key: the config key of `processes` (named when the GPUs are missing). The
    CPU threads of this job are shared out (at least one per worker)."""
    from density_grpo.monitor import expect, note, rank_cuda_peaks

    check_gpus(params["device"], processes, key)

    threads = max(1, _threads() // processes)
    payload = {"module": step.__module__, "function": step.__name__, "input": dict(paths[0]), "output": dict(paths[1]),
               "params": dict(params)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="density-grpo-launch-") as tmp:
        spec = os.path.join(tmp, "step.json")
        Path(spec).write_text(json.dumps(payload))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), THREADS_ENV: str(threads), RELAY_ENV: tmp,
               "PYTHONPATH": package_path()}  # fmt: skip
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", __name__, spec]  # fmt: skip
        log.info("launching %d processes (threads per process: %d)", processes, threads)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            error = _relay(proc)
        finally:  # the job itself failed or was interrupted: its workers go with it
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        told = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"), key=lambda p: int(p.stem[4:]))]
    main = next((t for t in told if t["rank"] == 0), None)
    if main is not None and main["predicted"] is not None:
        expect(main["predicted"])
    note(**(main["extra"] if main else {}), processes=processes)
    if told and all(t["peak_cuda_mb"] is not None for t in told):
        rank_cuda_peaks([t["peak_cuda_mb"] for t in told])
    if error is not None:
        raise UserError(error)


def check_gpus(device: str, processes: int, key: str) -> None:
    """On CUDA, one process per GPU: one line before any process starts unless torch sees `processes` GPUs (a job
    granted fewer GPUs than it has processes, or none)."""
    from density_grpo.device import is_gpu, torch_device

    if not is_gpu(device):
        return
    import torch

    torch_device(device)  # no CUDA at all: the pipeline's usual line
    seen = torch.cuda.device_count()
    if seen < processes:
        raise UserError(
            f"config key {key}: {processes} processes need {processes} CUDA devices (one each), but torch sees {seen} "
            f"here (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )


def package_path() -> str:
    """PYTHONPATH that makes workers import this very copy of the package (the one the job's script put first)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])


def _threads() -> int:
    """This job's CPU threads (cli.run_step sets OMP_NUM_THREADS from the rule's `threads`)."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def _relay(proc: subprocess.Popen) -> str | None:
    """Log the workers' output line by line (FILE_MARK lines to the job's log file only); the job's error (None
    when every worker succeeded)."""
    from density_grpo.cli import FILE_ONLY

    error = None
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if ERROR_MARK in line:
            error = error or line.split(ERROR_MARK, 1)[1]
        if line.strip():
            log.info("| %s", line.replace(FILE_MARK, ""), extra=FILE_ONLY if FILE_MARK in line else {})
    if proc.wait() != 0:
        return error or f"a training process failed (exit {proc.returncode}); its traceback is in the log above"
    return None


def same_on_every_rank(digest: str, what: str) -> None:
    """Fail with one line unless every rank computed the same `digest` (a no-op on one process)."""
    if world()[1] == 1:
        return
    from accelerate.utils import gather_object

    digests = gather_object([digest])
    odd = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise UserError(
            f"{what} differs between processes (ranks {odd} disagree with rank 0): every rank must use the same "
            "seed and weights"
        )


def digest(*arrays: np.ndarray) -> str:
    """A short content hash of arrays (each one's store.array_sha256: dtype, shape and bytes)."""
    import hashlib

    from density_grpo.store import array_sha256

    return hashlib.sha256("".join(array_sha256(a) for a in arrays).encode()).hexdigest()[:16]


class _MarkFileOnly(logging.Filter):
    """In a worker, whose one output is the launcher's pipe: keep the records meant for the job's log file only,
    marked (FILE_MARK) so that the launcher logs them there and not on the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.mark = FILE_MARK if getattr(record, "console", True) is False else ""
        return getattr(record, "file", True)


def _worker(spec: str) -> int:
    """One rank: run the step under a memory relay (its prediction, notes and CUDA peak go back to the launcher)."""
    from density_grpo.cli import setup_logging
    from density_grpo.device import set_threads
    from density_grpo.errors import describe
    from density_grpo.monitor import Relay

    rank = world()[0]
    setup_logging(None, f"rank {rank}")
    out = logging.getLogger().handlers[0]
    out.filters = [_MarkFileOnly()]
    out.setFormatter(logging.Formatter(f"%(mark)s%(asctime)s rank {rank} %(levelname)s %(message)s", "%H:%M:%S"))
    if rank > 0:  # rank 0 tells the story (progress, figures); the others only their warnings and errors
        logging.getLogger("density_grpo").setLevel(logging.WARNING)
    set_threads(int(os.environ.get(THREADS_ENV, 1)))
    s = json.loads(Path(spec).read_text())
    step = getattr(importlib.import_module(s["module"]), s["function"])
    with Relay(Path(os.environ[RELAY_ENV]) / f"rank{rank}.json", rank):
        try:
            step(s["input"], s["output"], s["params"])
        except Exception as e:
            inputs = [str(f) for v in s["input"].values() for f in (v if isinstance(v, list) else [v])]
            what = str(e) if isinstance(e, UserError) else describe(e, inputs)
            if what is None:  # a bug: the traceback goes to the job's log
                raise
            print(f"[rank {rank}] {ERROR_MARK}{what}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1]))

"""Device and precision: one place decides where and in what dtype models run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def wants_gpu(spec: str) -> bool:
    """Whether `device` (config) resolves to CUDA, decided without importing torch (cheap at DAG build)."""
    if spec.startswith("cuda"):
        return True
    if spec != "auto" or shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def resolve_device(spec: str = "auto"):
    """`auto` -> cuda if available, else mps, else cpu; explicit specs are checked."""
    import torch

    from density_grpo.errors import UserError

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={spec!r} but torch sees no CUDA device (set device: cpu or auto)")
    return torch.device(spec)


def resolve_dtype(spec: str, device):
    """`auto`: bf16 where the device supports it, else fp16 on accelerators; fp32 on CPU.

    CPU bf16 matmuls are slower than fp32 on most CPUs and lose precision, so auto keeps fp32 there.
    """
    import torch

    if spec != "auto":
        return getattr(torch, DTYPES[spec])
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def resolve(cfg: dict):
    """(torch.device, torch.dtype) for a pipeline config: its `device` and `model.dtype` keys."""
    device = resolve_device(cfg.get("device", "auto"))
    return device, resolve_dtype(cfg.get("model", {}).get("dtype", "auto"), device)


def set_threads(n: int) -> None:
    """Honour Snakemake's `threads` in torch and FAISS (on 2 cores, 1 thread per job is often fastest).

    Sets the OpenMP/MKL variables read when torch or faiss is first imported, so cheap rules import neither.
    """
    n = max(1, int(n))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)

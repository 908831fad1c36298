"""Device and precision: decided once, torch-free, when the DAG is built; checked where models run.

`plan(device, dtype)` resolves the config's `device` and `model.dtype` (both may be `auto`) to concrete strings
without importing torch, so the rules can put the resolved values into their `params` (a job reruns when they
change) and request a GPU. The job then calls `torch_device` / `torch_dtype`, which only check and convert.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys

from density_grpo.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")


@functools.lru_cache(maxsize=1)
def _cuda_capability() -> tuple[int, int] | None:
    """Compute capability of the first GPU nvidia-smi lists, or None without a visible NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or not lines:
        return None
    try:
        major, minor = lines[0].split(".")
        return int(major), int(minor)
    except ValueError:
        return (8, 0)  # a GPU is there but reports no capability: assume a recent one


def _mps_host() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def plan_device(spec: str) -> str:
    """`auto` -> 'cuda' when nvidia-smi sees a GPU, else 'mps' on Apple silicon, else 'cpu'; others unchanged."""
    if spec != "auto":
        return spec
    if _cuda_capability() is not None:
        return "cuda"
    return "mps" if _mps_host() else "cpu"


def plan_dtype(spec: str, device: str) -> str:
    """`auto` -> bfloat16 on CUDA with compute capability >= 8 (else float16), float16 on MPS, float32 on CPU.

    CPU bf16 matmuls are slower than fp32 on most CPUs and lose precision, so auto keeps fp32 there.
    """
    if spec != "auto":
        return spec
    if device.startswith("cuda"):
        cap = _cuda_capability()
        return "bfloat16" if cap is None or cap[0] >= 8 else "float16"
    return "float16" if device == "mps" else "float32"


def plan_train_precision(device: str) -> str:
    """Autocast precision for training (weights and optimizer state always stay fp32): bf16 on CUDA with compute
    capability >= 8, fp16 (with a grad scaler) on older CUDA GPUs, fp32 on CPU and MPS.

    Independent of model.dtype, the inference precision: training directly in bf16 weights loses small updates
    (a 1e-5 step is below bf16's resolution for most weights).
    """
    if device.startswith("cuda"):
        cap = _cuda_capability()
        return "bf16" if cap is None or cap[0] >= 8 else "fp16"
    return "fp32"


def plan(device: str, dtype: str) -> tuple[str, str]:
    """(device, dtype) strings for the config values `device` and `model.dtype`."""
    d = plan_device(device)
    return d, plan_dtype(dtype, d)


def is_gpu(device: str) -> bool:
    """Whether a planned device needs a GPU from the scheduler (rules' `resources: gpu`)."""
    return device.startswith("cuda")


def torch_device(device: str):
    """torch.device for a planned device string; UserError when this machine does not have it."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"config key device: {device!r} but torch sees no CUDA device here (set device: cpu or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("config key device: 'mps' but torch sees no MPS device here (set device: cpu or auto)")
    return torch.device(device)


def torch_dtype(dtype: str, device=None):
    """torch dtype for a planned dtype string; UserError for bf16 on a CUDA device without bf16 support."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"config key model.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("config key model.dtype: bfloat16 is not supported by this GPU (use float16 or auto)")
    return getattr(torch, dtype)


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

"""The embedding chunk store: one Zarr v3 group per chunk of prompts.

Layout of `chunk_{i}.zarr`:
  embeddings  float32 (n, dim)
  prompt_id   uint64  (n,)   the 16-hex-digit prompt_id as an integer (Zarr v3 has no stable string dtype)
  attrs       model, source, layer, pooling, dtype, dim, ... (whatever the embedder records)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from density_grpo.io import atomic_path


def ids_to_uint64(prompt_ids: Sequence[str]) -> np.ndarray:
    """'00ff...' hex prompt ids -> uint64 array."""
    return np.array([int(p, 16) for p in prompt_ids], dtype=np.uint64)


def uint64_to_ids(values: np.ndarray) -> list[str]:
    """uint64 array -> 16-hex-digit prompt ids."""
    return [f"{int(v):016x}" for v in values]


def write_chunk(
    path: str | os.PathLike, prompt_ids: Sequence[str], embeddings: np.ndarray, attrs: dict[str, Any]
) -> None:
    """Write one chunk store atomically (a half-written store never appears at `path`)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(prompt_ids):
        raise ValueError(f"embeddings shape {emb.shape} does not match {len(prompt_ids)} prompt ids")
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        rows = max(1, emb.shape[0])
        group.create_array("embeddings", shape=emb.shape, dtype="float32", chunks=(rows, max(1, emb.shape[1])))[...] = emb
        group.create_array("prompt_id", shape=(len(prompt_ids),), dtype="uint64", chunks=(rows,))[...] = ids_to_uint64(
            prompt_ids
        )
        group.attrs.update({**attrs, "n": int(emb.shape[0]), "dim": int(emb.shape[1])})


def read_chunk(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read one chunk store: (prompt_ids, float32 embeddings (n, dim), attrs)."""
    group = zarr.open_group(str(Path(path)), mode="r")
    return uint64_to_ids(group["prompt_id"][...]), np.asarray(group["embeddings"][...], dtype=np.float32), dict(group.attrs)


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Attributes of a chunk store, without reading the arrays."""
    return dict(zarr.open_group(str(Path(path)), mode="r").attrs)

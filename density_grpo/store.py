"""The embedding chunk store: one Zarr v3 group per chunk of prompts.

Layout of `chunk_{i}.zarr`:
  embeddings  float32 (n, dim)
  prompt_id   uint64  (n,)   the 16-hex-digit prompt_id as an integer (Zarr v3 has no stable string dtype)
  n_tokens    int64   (n,)   per-prompt columns the embedder records (tokens of the whole prompt, Human turns)
  turns       int64   (n,)
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
    path: str | os.PathLike,
    prompt_ids: Sequence[str],
    embeddings: np.ndarray,
    attrs: dict[str, Any],
    columns: dict[str, np.ndarray] | None = None,
) -> None:
    """Write one chunk store atomically (a half-written store never appears at `path`); columns: extra 1-D
    per-prompt arrays (e.g. n_tokens, turns)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(prompt_ids):
        raise ValueError(f"embeddings shape {emb.shape} does not match {len(prompt_ids)} prompt ids")
    columns = {name: np.asarray(v) for name, v in (columns or {}).items()}
    for name, v in columns.items():
        if v.shape != (len(prompt_ids),):
            raise ValueError(f"column {name!r} has shape {v.shape}, expected ({len(prompt_ids)},)")
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        rows = max(1, emb.shape[0])
        group.create_array("embeddings", shape=emb.shape, dtype="float32", chunks=(rows, max(1, emb.shape[1])))[...] = emb
        group.create_array("prompt_id", shape=(len(prompt_ids),), dtype="uint64", chunks=(rows,))[...] = ids_to_uint64(
            prompt_ids
        )
        for name, v in columns.items():
            group.create_array(name, shape=v.shape, dtype=v.dtype, chunks=(rows,))[...] = v
        group.attrs.update({**attrs, "n": int(emb.shape[0]), "dim": int(emb.shape[1])})


def read_chunk(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read one chunk store: (prompt_ids, float32 embeddings (n, dim), attrs)."""
    group = zarr.open_group(str(Path(path)), mode="r")
    return uint64_to_ids(group["prompt_id"][...]), np.asarray(group["embeddings"][...], dtype=np.float32), dict(group.attrs)


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Attributes of a chunk store, without reading the arrays."""
    return dict(zarr.open_group(str(Path(path)), mode="r").attrs)


def read_column(path: str | os.PathLike, name: str) -> np.ndarray | None:
    """A per-prompt column of a chunk store (see write_chunk), or None when the store has none by that name."""
    group = zarr.open_group(str(Path(path)), mode="r")
    return np.asarray(group[name][...]) if name in group else None

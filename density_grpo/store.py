"""The embedding chunk store: one Zarr v3 group per chunk of prompts.

Layout of `chunk_{i}.zarr`:
  embeddings  float32 (n, dim)
  prompt_id   uint64  (n,)   the 16-hex-digit prompt_id as an integer (Zarr v3 has no stable string dtype)
  n_tokens    int64   (n,)   per-prompt columns the embedder records (tokens of the whole prompt, Human turns)
  turns       int64   (n,)
  attrs       model, source, layer, pooling, dtype, dim, ... (whatever the embedder records), and `sha256`:
              the content hash of each array (dtype, shape and bytes), which every reader verifies
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from density_grpo.errors import UserError, first_line
from density_grpo.io import atomic_path

# Reading a damaged store raises these (zstd: RuntimeError; bad zarr.json: JSONDecodeError, a ValueError;
# a missing array: KeyError); a missing array chunk silently reads as zeros, which the content hash catches.
_DAMAGED = (OSError, ValueError, RuntimeError, KeyError, TypeError, zarr.errors.BaseZarrError)


def ids_to_uint64(prompt_ids: Sequence[str]) -> np.ndarray:
    """'00ff...' hex prompt ids -> uint64 array."""
    return np.array([int(p, 16) for p in prompt_ids], dtype=np.uint64)


def uint64_to_ids(values: np.ndarray) -> list[str]:
    """uint64 array -> 16-hex-digit prompt ids."""
    return [f"{int(v):016x}" for v in values]


def array_sha256(a: np.ndarray) -> str:
    """Content hash of an array: its dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def rebuild_hint(path: str | os.PathLike) -> str:
    return f"delete it (rm -r {path}) and rerun snakemake to rebuild it"


def write_chunk(
    path: str | os.PathLike,
    prompt_ids: Sequence[str],
    embeddings: np.ndarray,
    attrs: dict[str, Any],
    columns: dict[str, np.ndarray] | None = None,
) -> None:
    """Write one chunk store atomically (a half-written store never appears at `path`), with its content hashes;
    columns: extra 1-D per-prompt arrays (e.g. n_tokens, turns)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(prompt_ids):
        raise ValueError(f"embeddings shape {emb.shape} does not match {len(prompt_ids)} prompt ids")
    uids = ids_to_uint64(prompt_ids)
    columns = {name: np.ascontiguousarray(v) for name, v in (columns or {}).items()}
    for name, v in columns.items():
        if v.shape != (len(prompt_ids),):
            raise ValueError(f"column {name!r} has shape {v.shape}, expected ({len(prompt_ids)},)")
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        rows = max(1, emb.shape[0])
        group.create_array("embeddings", shape=emb.shape, dtype="float32", chunks=(rows, max(1, emb.shape[1])))[...] = emb
        group.create_array("prompt_id", shape=(len(prompt_ids),), dtype="uint64", chunks=(rows,))[...] = uids
        for name, v in columns.items():
            group.create_array(name, shape=v.shape, dtype=v.dtype, chunks=(rows,))[...] = v
        sha = {"embeddings": array_sha256(emb), "prompt_id": array_sha256(uids)}
        sha |= {name: array_sha256(v) for name, v in columns.items()}
        group.attrs.update({**attrs, "n": int(emb.shape[0]), "dim": int(emb.shape[1]), "sha256": sha})


def _group(path: str | os.PathLike) -> zarr.Group:
    try:
        return zarr.open_group(str(Path(path)), mode="r", zarr_format=3)  # no probing for v2 metadata: 5x faster
    except FileNotFoundError:
        raise UserError(f"{path}: no such chunk store") from None
    except _DAMAGED as e:
        raise UserError(f"{path}: damaged chunk store ({first_line(e)}): {rebuild_hint(path)}") from None



def _read_array(path: str | os.PathLike, group: zarr.Group, name: str, dtype: str) -> np.ndarray:
    """One array of a chunk store, verified against the sha256 recorded in the attrs."""
    try:
        recorded = dict(group.attrs).get("sha256", {}).get(name)
        a = np.asarray(group[name][...])
    except _DAMAGED as e:
        raise UserError(f"{path}: damaged chunk store ({name}: {first_line(e)}): {rebuild_hint(path)}") from None
    if recorded is None:  # every chunk of that run is as old: rebuild them all
        raise UserError(
            f"{path}: no content hash recorded for {name!r} (written by an older version): delete the old chunks "
            f"(rm -r {Path(path).parent}) and rerun snakemake to rebuild them"
        )
    if (dtype is not None and a.dtype != np.dtype(dtype)) or array_sha256(a) != recorded:
        raise UserError(f"{path}: {name!r} does not match its recorded sha256 (corrupted or modified): {rebuild_hint(path)}")
    return a


def read_chunk(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read one chunk store, verified: (prompt_ids, float32 embeddings (n, dim), attrs)."""
    group = _group(path)
    ids = _read_array(path, group, "prompt_id", "uint64")
    emb = _read_array(path, group, "embeddings", "float32")
    if emb.ndim != 2 or len(ids) != emb.shape[0]:
        raise UserError(f"{path}: {len(ids)} prompt ids for embeddings of shape {emb.shape}: {rebuild_hint(path)}")
    attrs = dict(group.attrs)
    attrs.pop("sha256", None)
    return uint64_to_ids(ids), emb, attrs


def read_ids(path: str | os.PathLike) -> np.ndarray:
    """The verified uint64 prompt ids of a chunk store, without reading the embeddings."""
    return _read_array(path, _group(path), "prompt_id", "uint64")


def read_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of a chunk's embeddings, from the metadata alone."""
    group = _group(path)
    try:
        return tuple(group["embeddings"].shape)
    except _DAMAGED as e:
        raise UserError(f"{path}: damaged chunk store (embeddings: {first_line(e)}): {rebuild_hint(path)}") from None


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Attributes of a chunk store (without the content hashes), without reading the arrays."""
    attrs = dict(_group(path).attrs)
    attrs.pop("sha256", None)
    return attrs


def read_column(path: str | os.PathLike, name: str) -> np.ndarray | None:
    """A per-prompt column of a chunk store (see write_chunk), verified, or None when the store has none by that name."""
    group = _group(path)
    return _read_array(path, group, name, None) if name in group else None

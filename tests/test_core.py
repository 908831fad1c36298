"""Atomic writes, the chunk store, device resolution and chunk row ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from density_grpo.device import resolve_device, resolve_dtype, wants_gpu
from density_grpo.errors import UserError
from density_grpo.io import atomic_path, write_json
from density_grpo.steps import chunk_rows
from density_grpo.store import ids_to_uint64, read_chunk, uint64_to_ids, write_chunk


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_directory(tmp_path):
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "old").write_text("x")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new"]
    write_json({"b": 1, "a": 2}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_store_roundtrip(tmp_path):
    ids = ["0000000000000001", "ffffffffffffffff", "0123456789abcdef"]
    assert uint64_to_ids(ids_to_uint64(ids)) == ids
    emb = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    write_chunk(tmp_path / "c.zarr", ids, emb, {"model": "m", "layer": 2})
    got_ids, got, attrs = read_chunk(tmp_path / "c.zarr")
    assert got_ids == ids and np.array_equal(got, emb)
    assert attrs == {"model": "m", "layer": 2, "n": 3, "dim": 5}
    with pytest.raises(ValueError):
        write_chunk(tmp_path / "bad.zarr", ids[:2], emb, {})
    assert not (tmp_path / "bad.zarr").exists()


def test_device_resolution_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert wants_gpu("cuda:1") and not wants_gpu("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device='cuda'"):
            resolve_device("cuda")
        assert not wants_gpu("auto") or torch.cuda.is_available() is False


@pytest.mark.parametrize("n, size", [(10, 4), (8, 4), (3, 5)])
def test_chunk_rows_cover_all_prompts(n, size):
    rows = [chunk_rows(n, size, i) for i in range(-(-n // size))]
    assert [i for s in rows for i in range(n)[s]] == list(range(n))

"""Atomic writes, the chunk store and device planning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from density_grpo import device as D
from density_grpo.errors import UserError
from density_grpo.io import atomic_path, write_json
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


def test_device_plan_without_torch(monkeypatch):
    """auto resolves by what the machine has; explicit values pass through; dtype auto follows the device."""
    monkeypatch.setattr(D, "_mps_host", lambda: False)
    monkeypatch.setattr(D, "_cuda_capability", lambda: None)
    assert D.plan("auto", "auto") == ("cpu", "float32")
    assert D.plan("cpu", "bfloat16") == ("cpu", "bfloat16")
    monkeypatch.setattr(D, "_cuda_capability", lambda: (9, 0))
    assert D.plan("auto", "auto") == ("cuda", "bfloat16")
    assert D.plan("cuda:1", "auto") == ("cuda:1", "bfloat16") and D.is_gpu("cuda:1") and not D.is_gpu("cpu")
    monkeypatch.setattr(D, "_cuda_capability", lambda: (7, 5))  # pre-Ampere: no bf16
    assert D.plan("auto", "auto") == ("cuda", "float16")
    assert D.plan("auto", "float32") == ("cuda", "float32")
    monkeypatch.setattr(D, "_cuda_capability", lambda: None)
    monkeypatch.setattr(D, "_mps_host", lambda: True)
    assert D.plan("auto", "auto") == ("mps", "float16")


def test_torch_device_checks(monkeypatch):
    assert D.torch_device("cpu") == torch.device("cpu")
    assert D.torch_dtype("bfloat16") == torch.bfloat16 and D.torch_dtype("float32") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="config key device: 'cuda'"):
        D.torch_device("cuda")


def test_read_parquet_rows_reads_only_their_row_groups(tmp_path):
    from density_grpo.io import read_parquet_rows, write_parquet

    df = pd.DataFrame({"prompt_id": [f"{i:04d}" for i in range(300)], "text": ["x" * i for i in range(300)]})
    path = tmp_path / "p.parquet"
    write_parquet(df, path, row_group_size=128)
    for start, stop in [(0, 8), (120, 136), (250, 300), (296, 310), (300, 310)]:
        got = read_parquet_rows(path, start, stop, ["prompt_id", "text"])
        pd.testing.assert_frame_equal(got, df.iloc[start:stop].reset_index(drop=True))
    whole = read_parquet_rows(path, 0, 300, ["text"]).attrs["bytes_read"]
    assert read_parquet_rows(path, 0, 8, ["text"]).attrs["bytes_read"] < whole / 5  # the first group alone

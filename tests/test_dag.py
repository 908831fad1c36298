"""The README's pipeline picture is the rule graph Snakemake computes today (all rules)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

pytestmark = pytest.mark.e2e


def test_committed_rule_graph_is_current():
    spec = importlib.util.spec_from_file_location("rulegraph", REPO / "tools" / "rulegraph.py")
    rulegraph = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rulegraph)
    generated = rulegraph.rulegraph()
    for rule in ("pairs", "embed_chunk", "knn_weights", "reward_model", "grpo", "evaluate_model", "build_reports"):
        assert f"    {rule}[" in generated, rule
    assert (REPO / "docs" / "pipeline.dot").read_text() == generated, "docs/pipeline.dot is stale: run `make dag`"

"""Analytic memory model on hand-computed cases, per-rule predictions, device helpers and the sampling monitor."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from density_grpo import memory as M
from density_grpo.memory import MiB

REPO_CONFIG = yaml.safe_load(open(__file__.rsplit("/tests/", 1)[0] + "/config.yaml"))


class FakeWildcards(list):
    """Like Snakemake's Wildcards: a list of values with named .items()."""

    def __init__(self, named: dict):
        super().__init__(named.values())
        self.named = named

    def items(self):
        return list(self.named.items())


def test_weights_bytes_by_precision():
    assert M.weights_bytes(1_200_000_000, "fp32") == 4_800_000_000
    assert M.weights_bytes(1_200_000_000, "float32") == 4_800_000_000
    assert M.weights_bytes(1_200_000_000, "bf16") == M.weights_bytes(1_200_000_000, "fp16") == 2_400_000_000
    assert M.weights_bytes(1_200_000_000, "int8") == 1_200_000_000
    assert M.weights_bytes(1_200_000_000, "int4") == 600_000_000  # n / 2
    assert M.weights_bytes(7, "int4") == 4  # rounded up to whole bytes
    with pytest.raises(ValueError):
        M.weights_bytes(1, "fp8")


def test_smollm2_param_count_matches_the_real_model():
    # embeddings 49152*576 + 30 layers * (q 576*576 + k,v 2*576*192 + o 576*576 + MLP 3*576*1536 + norms 2*576)
    # + final norm 576; tied head counted once. Equals the tensor sizes summed over the model's safetensors.
    layer = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536 + 2 * 576
    assert 49152 * 576 + 30 * layer + 576 == 134_515_008
    assert M.param_count(M.SMOLLM2_135M) == 134_515_008
    untied = {**M.SMOLLM2_135M, "tie_word_embeddings": False}
    assert M.param_count(untied) == 134_515_008 + 49152 * 576


def test_reference_param_counts():
    assert M.param_count(M.REFERENCE_MODELS["Llama-2-7B"]) == 6_738_415_616
    assert M.param_count(M.REFERENCE_MODELS["Llama-2-13B"]) == 13_015_864_320
    assert M.param_count(M.REFERENCE_MODELS["Llama-2-70B"]) == 68_976_648_192
    assert M.param_count(M.REFERENCE_MODELS["Llama-3.2-1B"]) == 1_235_814_400


def test_logit_and_embedding_sizes():
    # 28,000 prompts x 50,304-dim mean-pooled logits in fp32 vs the d_model transform
    assert M.embedding_store_bytes(28_000, 50_304) == 28_000 * 50_304 * 4 == 5_634_048_000
    assert M.embedding_store_bytes(28_000, 576) == 64_512_000
    # GRPO/Intuitor logits at B=64, T=6144, V=151,936 in fp32: naive vs a 256-token chunk
    assert M.grpo_logits_bytes(64, 6144, 151_936) == 64 * 6144 * 151_936 * 4 == 238_974_664_704
    assert M.grpo_logits_bytes(64, 6144, 151_936, chunk=256) == 256 * 151_936 * 4
    assert M.grpo_logits_bytes(1, 10, 100, chunk=256) == 10 * 100 * 4  # a chunk never exceeds B*T


def test_faiss_index_bytes():
    n, d = 10_000, 576
    assert M.faiss_index_bytes(n, d, "flat") == n * d * 4
    assert M.faiss_index_bytes(n, d, "ivf", nlist=100) == n * (d * 4 + 8) + 100 * d * 4
    assert M.faiss_index_bytes(n, d, "ivfpq", nlist=100, pq_m=16) == n * (16 + 8) + 100 * d * 4 + 256 * d * 4
    assert M.default_nlist(1_000_000) == 4000 and M.default_nlist(10_000) == 256  # >= 39 points per list
    knn = {"index": "auto", "exact_max": 100_000, "max_index_gb": 8.0}
    assert M.choose_index(1000, d, knn) == "flat"
    assert M.choose_index(200_000, d, knn) == "ivf"
    assert M.choose_index(10_000_000, d, knn) == "ivfpq"


def test_kv_cache_and_training():
    cfg = M.SMOLLM2_135M
    assert M.kv_cache_bytes(cfg, 2, 100, "bf16") == 2 * 30 * 2 * 100 * 3 * 64 * 2
    n = 134_515_008
    parts = M.training_components(cfg, 4, 128, "fp32", logit_positions=0)
    assert parts["weights"] == parts["grads"] == 4 * n
    assert parts["optimizer"] == 8 * n  # AdamW: m and v in fp32
    assert parts["logits"] == 0
    assert M.training_bytes(cfg, 4, 128, "fp32", logit_positions=0) == sum(parts.values())
    ckpt = M.training_components(cfg, 4, 128, "fp32", gradient_checkpointing=True, logit_positions=0)
    assert ckpt["activations"] < parts["activations"] / 5
    assert M.training_components(cfg, 4, 128, "fp32", optimizer="sgd")["optimizer"] == 0
    assert M.training_components(cfg, 4, 128)["logits"] == 2 * 4 * 128 * 49152 * 4


def test_ppo_vs_intuitor():
    r = M.ppo_vs_intuitor(M.SMOLLM2_135M, 64, 6144, "bf16", token_chunk=256)
    w = 134_515_008 * 2
    assert r["ppo"]["reward model"] == w and "value model (trainable)" in r["ppo"]
    assert "reward model" not in r["intuitor"] and "value model (trainable)" not in r["intuitor"]
    assert r["self_certainty_naive"] == 64 * 6144 * 49152 * 4
    assert r["intuitor_total_chunked"] < r["ppo_total"] < r["intuitor_total_naive"]


@pytest.mark.parametrize("rule", ["embed_chunk", "knn_weights", "model", "reward_model", "grpo", "evaluate_model"])
def test_predict_rule(rule):
    p = M.predict_rule(rule, REPO_CONFIG, None, n_prompts=270, prompt_tokens=72, device="cpu")
    assert p["total_bytes"] > M.BASELINE_BYTES["python"]
    assert p["components"]["baseline"] > 0
    assert all(v >= 0 for v in p["components"].values())
    assert p["params"] == 134_515_008


def test_predict_rule_details():
    cfg = REPO_CONFIG
    assert M.predict_rule("pairs", cfg, device="cpu") is None
    e = M.predict_rule("embed_chunk", cfg, device="cpu")
    c = e["components"]
    assert c["weights"] == 4 * 134_515_008  # fp32 on CPU (model.dtype auto)
    assert e["total_bytes"] == sum(c.values())
    bf16 = M.predict_rule("embed_chunk", {**cfg, "model": {**cfg["model"], "dtype": "bfloat16"}}, device="cpu")
    assert bf16["components"]["weights"] == 2 * 134_515_008
    assert bf16["assumptions"]["load_copy_bytes"] == 4 * 134_515_008  # fp32 file loaded, then cast
    gpu = M.predict_rule("embed_chunk", cfg, device="cuda")
    assert gpu["precision"] == "bf16" and gpu["host_bytes"] > M.CUDA_CONTEXT_BYTES
    k = M.predict_rule("knn_weights", cfg, n_prompts=1_000_000, device="cpu")
    assert k["assumptions"]["index"] == "ivf" and k["components"]["index"] == M.faiss_index_bytes(1_000_000, 576, "ivf")
    sc = M.predict_rule("grpo", {**cfg, "grpo": {**cfg["grpo"], "reward": "self_certainty"}}, device="cpu")
    assert "reward_model" not in sc["components"] and "self_certainty_logits" in sc["components"]


def test_device_helpers():
    free = M.free_memory_bytes("cpu")
    assert free > 0
    assert M.can_allocate(1, "cpu") and not M.can_allocate(10 * free, "cpu")
    assert M.warn_if_too_big(1, "cpu", 0.9, "grpo") is None
    msg = M.warn_if_too_big(10 * free, "cpu", 0.9, "grpo")
    assert msg is not None and "grpo.prompts_per_step" in msg
    assert "embed.batch_tokens" in M.warn_if_too_big(10 * free, "cpu", 0.9, "embed_chunk")


def test_monitor_sees_a_400mb_block(tmp_path):
    pred = M.predict_rule("knn_weights", REPO_CONFIG, n_prompts=100, device="cpu")
    with M.MemoryMonitor(tmp_path, "alloc_1", rule="alloc", wildcards={"i": 1}, predicted_bytes=pred, interval=0.02) as mon:
        block = np.ones(400 * MiB // 8)  # touched: every page resident
        time.sleep(0.3)
        mon.extra["note"] = "test"
        del block
    rec = json.loads((tmp_path / "alloc_1.json").read_text())
    assert rec["peak_rss_mb"] - rec["baseline_rss_mb"] >= 0.8 * 400
    assert rec["rule"] == "alloc" and rec["wildcards"] == {"i": "1"} and rec["status"] == "ok"
    assert rec["note"] == "test" and rec["peak_cuda_mb"] is None
    assert rec["predicted_mb"] == pytest.approx(pred["total_bytes"] / MiB, abs=0.01)
    assert set(rec["predicted_components_mb"]) == set(pred["components"])
    tsv = pd.read_csv(tmp_path / "alloc_1.tsv", sep="\t")
    assert list(tsv.columns) == ["t_s", "rss_mb"] and len(tsv) >= 5
    assert tsv["rss_mb"].max() == pytest.approx(rec["peak_rss_mb"], abs=0.01)


def test_monitor_writes_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with M.MemoryMonitor(tmp_path, "boom", predicted_bytes=100 * MiB):
            raise RuntimeError("boom")
    rec = json.loads((tmp_path / "boom.json").read_text())
    assert rec["status"] == "failed" and rec["predicted_mb"] == 100 and rec["rule"] == "boom"


def test_cuda_probe_tolerates_a_half_imported_torch(monkeypatch):
    import types

    monkeypatch.setitem(__import__("sys").modules, "torch", types.ModuleType("torch"))  # no .cuda yet
    assert M._cuda() is None


def test_monitor_accepts_snakemake_wildcards(tmp_path):
    with M.MemoryMonitor(tmp_path, "w", wildcards=FakeWildcards({"i": "7"})) as mon:
        pass
    assert mon.record()["wildcards"] == {"i": "7"}


def test_monitor_job_from_a_snakemake_object(tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/r/data").mkdir(parents=True)
    texts = ["short"] * 130 + ["x" * 350]  # chunk 1 holds the 3 last prompts, the longest ~100 tokens
    pd.DataFrame({"prompt_id": [str(i) for i in range(len(texts))], "text": texts}).to_parquet(tmp_path / "results/r/data/prompts.parquet")
    assert M.prompt_stats(tmp_path / "results/r/data/prompts.parquet") == (131, 100)
    assert M.prompt_stats(tmp_path / "results/r/data/prompts.parquet", slice(0, 128)) == (128, 2)

    cfg = {**REPO_CONFIG, "run": "r", "device": "cpu"}
    smk = SimpleNamespace(rule="embed_chunk", wildcards=FakeWildcards({"i": "1"}), config=cfg)
    with M.monitor_job(smk, interval=0.01):
        pass
    rec = json.loads((tmp_path / "results/r/memory/embed_chunk_1.json").read_text())
    expected = M.predict_rule("embed_chunk", cfg, None, 3, 100, device="cpu")
    assert rec["predicted_mb"] == pytest.approx(expected["total_bytes"] / MiB, abs=0.01)
    assert rec["wildcards"] == {"i": "1"}
    smk = SimpleNamespace(rule="pairs", wildcards=FakeWildcards({}), config=cfg)
    with M.monitor_job(smk):
        pass
    assert json.loads((tmp_path / "results/r/memory/pairs.json").read_text())["predicted_mb"] is None

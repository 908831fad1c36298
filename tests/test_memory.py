"""Analytic memory model on hand-computed cases, FAISS sizing, the stages' predictions and the sampling monitor."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from density_grpo import index_plan as ip
from density_grpo import memory as M
from density_grpo.config import KNNConfig
from density_grpo.memory import MiB
from density_grpo.monitor import MemoryMonitor, _cuda, expect, note

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
    assert ip.index_bytes(n, d, "flat") == n * d * 4
    assert ip.index_bytes(n, d, "ivf", nlist=100) == n * (d * 4 + 8) + 100 * d * 4
    assert ip.index_bytes(n, d, "ivfpq", nlist=100, pq_m=16) == n * (16 + 8 + 2 * d) + 100 * d * 4 + 256 * d * 4
    assert ip.index_bytes(n, d, "ivfjoin", nlist=100) == n * d * 4 + 100 * d * 4
    assert ip.default_nlist(1_000_000) == 4000 and ip.default_nlist(10_000) == 256  # >= 39 points per list
    assert ip.choose_index("auto", 1000, d, 100_000, 8.0) == "flat"
    assert ip.choose_index("auto", 200_000, d, 100_000, 8.0) == "ivfjoin"
    assert ip.default_nlist(1_000_000, index="ivfjoin") == 2000
    assert ip.choose_index("auto", 10_000_000, d, 100_000, 8.0) == "ivfpq"


def test_kv_cache_and_training():
    cfg = M.SMOLLM2_135M
    assert M.kv_cache_bytes(cfg, 2, 100, "bf16") == 2 * 30 * 2 * 100 * 3 * 64 * 2
    n = 134_515_008
    parts = M.training_components(cfg, 4, 128, M.Training(logit_positions=0))
    assert parts["weights"] == parts["grads"] == 4 * n
    assert parts["optimizer"] == 8 * n  # AdamW: m and v in fp32
    assert parts["logits"] == 0
    ckpt = M.training_components(cfg, 4, 128, M.Training(checkpointing=True, logit_positions=0))
    assert ckpt["activations"] < parts["activations"] / 5
    assert M.training_components(cfg, 4, 128, M.Training(optimizer="sgd"))["optimizer"] == 0
    assert M.training_components(cfg, 4, 128)["logits"] == 2 * 4 * 128 * 49152 * 4


def test_a_published_model_and_the_bytes_it_implies():
    """Llama-2-7B has 6,738,415,616 parameters (Meta's model card); a full fp32 fine-tune with AdamW holds 16 bytes
    of state per parameter (weights, grads, m, v): 107.8 GB before activations."""
    cfg = M.REFERENCE_MODELS["Llama-2-7B"]
    assert M.param_count(cfg) == 6_738_415_616
    parts = M.training_components(cfg, 1, 1, M.Training(logit_positions=0))
    assert parts["weights"] + parts["grads"] + parts["optimizer"] == 107_814_649_856
    assert M.weights_bytes(6_738_415_616, "bf16") == 13_476_831_232 and M.weights_bytes(6_738_415_616, "int4") == 3_369_207_808


def test_ppo_vs_intuitor():
    r = M.ppo_vs_intuitor(M.SMOLLM2_135M, 64, 6144, "bf16", token_chunk=256)
    w = 134_515_008 * 2
    assert r["ppo"]["reward model"] == w and "value model (trainable)" in r["ppo"]
    assert "reward model" not in r["intuitor"] and "value model (trainable)" not in r["intuitor"]
    assert r["self_certainty_naive"] == 64 * 6144 * 49152 * 4
    assert r["intuitor_total_chunked"] < r["ppo_total"] < r["intuitor_total_naive"]


def test_stage_predictions_use_their_shapes():
    """Each stage predicts from the batch numbers it runs (its params, as density_grpo.params builds them, and the
    shapes of its data): bigger batches, more bytes; dtype halves the weights."""
    from density_grpo import density, embed, evaluate, grpo, reward
    from density_grpo import params as P

    cfg, conf = M.SMOLLM2_135M, REPO_CONFIG
    cpu32 = {"device": "cpu", "dtype": "float32", "train_precision": "fp32"}
    gpu16 = {"device": "cuda", "dtype": "bfloat16", "train_precision": "bf16"}
    lengths = M.Workload(cfg, (100, 90, 80, 20))

    def emb(batch_tokens, rt=cpu32, work=lengths):
        params = P.embed(conf)
        params["embed"]["batch_tokens"] = batch_tokens
        return embed.predict({**params, **rt}, work)

    small, big = emb(200), emb(4096)
    assert big["total_bytes"] > small["total_bytes"] and big["assumptions"]["batch"] == 4
    bf16 = emb(4096, {**cpu32, "dtype": "bfloat16"})
    assert bf16["components"]["weights"] == 2 * 134_515_008 and big["components"]["weights"] == 4 * 134_515_008
    gpu = emb(4096, gpu16)
    assert "baseline" not in gpu["components"] and gpu["device"] == "cuda"
    # a prompt longer than the budget runs in windows: one window's activations plus the KV cache, not T^2
    long = M.Workload(cfg, (8192,))
    whole, windowed = emb(10**6, work=long), emb(512, work=long)
    key = "max(activations + logits + output, load copy)"
    assert M.kv_cache_bytes(cfg, 1, 8192) < windowed["components"][key] < whole["components"][key] / 4

    def weights(chunk_rows, **knn):
        c = {**conf, "knn": {**conf["knn"], **knn}}
        work = M.Workload(cfg, n_prompts=1_000_000, dim=576, chunk_rows=chunk_rows)
        return density.predict(P.weights(c, 1_000_000, 576), work)

    k = weights(128, index="ivf")
    assert k["components"]["index"] == ip.index_bytes(1_000_000, 576, "ivf", ip.default_nlist(1_000_000))
    j = weights(8192, index="auto")  # ivfjoin beyond exact_max
    assert j["components"]["index"] == 1_000_000 * 576 * 4 + 2000 * 576 * 4 and "direct_map" not in j["components"]
    assert 4e9 < j["total_bytes"] < 5e9  # benchmarks/knn_scale.py measured a 4.4 GB peak at 1M x 576

    prompts = M.Workload(cfg, (72,))
    sc_conf = {**conf, "grpo": {**conf["grpo"], "reward": "self_certainty"}}
    sc = grpo.predict({**P.grpo(sc_conf), **cpu32, "policy_seed": 0}, prompts)
    assert "reward_model" not in sc["components"] and "self_certainty_logits" in sc["components"]
    rm = grpo.predict({**P.grpo(conf), **cpu32, "policy_seed": 0}, prompts)
    assert "reward_model" in rm["components"] and rm["assumptions"]["batch"] == 8
    bf16 = grpo.predict({**P.grpo(conf), **gpu16, "policy_seed": 0}, prompts)
    assert bf16["components"]["weights"] == 4 * 134_515_008  # fp32 master weights, whatever the autocast precision
    assert bf16["components"]["base model (curves)"] == 2 * 134_515_008

    ev = evaluate.predict({**P.evaluate(conf, "base"), **cpu32}, prompts)
    assert ev["assumptions"]["generation_batch"] == 64  # sampling.SEQUENCES_PER_CALL: what sample() runs
    r = reward.predict({**P.reward_model(conf), **cpu32}, M.Workload(cfg, (256, 120)))
    assert r["assumptions"]["batch"] == 16 and r["assumptions"]["seq"] == 256
    assert r["total_bytes"] == sum(r["components"].values())


def test_free_memory_warning():
    free = M.free_memory_bytes("cpu")
    small = M.prediction("cpu", {"x": 1}, "x", "grpo.prompts_per_step")
    big = M.prediction("cpu", {"x": 10 * free}, "x", "grpo.prompts_per_step")
    assert M.warn_if_too_big(small) is None
    assert "grpo.prompts_per_step" in M.warn_if_too_big(big)


def test_monitor_sees_a_400mb_block(tmp_path):
    pred = M.prediction("cpu", {"baseline": 100 * MiB, "block": 400 * MiB}, "test", "none")
    with MemoryMonitor(tmp_path / "alloc_1.json", rule="alloc", wildcards={"i": 1}, interval=0.02):
        expect(pred)
        block = np.ones(400 * MiB // 8)  # touched: every page resident
        time.sleep(0.3)
        note(tokens_per_s=12.5)
        del block
    rec = json.loads((tmp_path / "alloc_1.json").read_text())
    assert rec["peak_rss_mb"] - rec["baseline_rss_mb"] >= 0.8 * 400
    assert rec["job"] == "alloc_1" and rec["wildcards"] == {"i": "1"} and rec["status"] == "ok"
    assert rec["extra"] == {"tokens_per_s": 12.5} and rec["peak_cuda_mb"] is None
    assert rec["predicted_mb"] == 500 and rec["measured_mb"] == rec["peak_rss_mb"]
    assert rec["measured_over_predicted"] == pytest.approx(rec["peak_rss_mb"] / 500, abs=1e-3)
    assert set(rec["prediction"]["components_mb"]) == {"baseline", "block"}
    tl = rec["timeline"]
    assert set(tl) == {"t_s", "rss_mb"} and len(tl["t_s"]) >= 5
    assert max(tl["rss_mb"]) == pytest.approx(rec["peak_rss_mb"], abs=0.01)
    expect(pred)  # outside a job: nothing to record, no error
    note(x=1)


def test_monitor_writes_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with MemoryMonitor(tmp_path / "boom.json", rule="boom"):
            raise RuntimeError("boom")
    rec = json.loads((tmp_path / "boom.json").read_text())
    assert rec["status"] == "failed" and rec["predicted_mb"] is None and rec["rule"] == "boom"


def test_cuda_probe_tolerates_a_half_imported_torch(monkeypatch):
    import types

    monkeypatch.setitem(__import__("sys").modules, "torch", types.ModuleType("torch"))  # no .cuda yet
    assert _cuda() is None


def test_monitor_accepts_snakemake_wildcards(tmp_path):
    with MemoryMonitor(tmp_path / "w.json", rule="w", wildcards=FakeWildcards({"i": "7"})) as mon:
        pass
    assert mon.record()["wildcards"] == {"i": "7"} and mon.job == "w_7"


def test_monitor_records_each_ranks_peak(tmp_path):
    """A step launched on 2 processes (RANK in their environment, as torch.distributed.run sets it): each rank's
    own peak is kept, and the largest is the measured figure (the prediction is per process)."""
    import os
    import subprocess
    import sys

    hold = "import numpy as np, time; b = np.ones({} * 2**20 // 8); time.sleep(0.6)"
    with MemoryMonitor(tmp_path / "dp.json", rule="dp", interval=0.02) as mon:
        procs = [subprocess.Popen([sys.executable, "-c", hold.format(mb)], env={**os.environ, "RANK": str(rank)})
                 for rank, mb in ((0, 300), (1, 100))]  # fmt: skip
        for p in procs:
            p.wait()
    rec = mon.record()
    r0, r1 = rec["peak_rss_per_rank_mb"]
    assert r0 - r1 >= 0.8 * 200 and r1 >= 100
    assert rec["measured_mb"] == r0 and rec["measured_what"] == "peak RSS of the largest of 2 processes"
    assert rec["peak_rss_mb"] >= r0 + r1  # the whole tree: both ranks and this process
    with MemoryMonitor(tmp_path / "one.json", rule="one") as mon:
        pass
    assert mon.record()["peak_rss_per_rank_mb"] is None


def test_a_rank_seen_before_its_exec_is_found_later():
    """A worker sampled between fork and exec shows its launcher's environment (no RANK); the next sample, after
    exec, must still find its rank (caching "no rank" lost rank 1's peak on a loaded machine)."""
    from density_grpo.monitor import _rank_of

    class Worker:  # psutil.Process's environ(): the launcher's before exec, the worker's after
        pid = 4242

        def __init__(self):
            self.envs = [{"PATH": "/bin"}, {"PATH": "/bin", "RANK": "1"}]

        def environ(self):
            return self.envs.pop(0) if len(self.envs) > 1 else self.envs[0]

    ranks, worker = {}, Worker()
    assert _rank_of(worker, ranks) is None
    assert _rank_of(worker, ranks) == 1
    assert _rank_of(worker, ranks) == 1 and ranks == {4242: 1}

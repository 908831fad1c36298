"""Data-parallel training on 2 CPU processes (gloo): the same experiment as 1 process, rank 0 alone writes.

Tolerances: both runs are fp32 on the same data; they differ in float reduction order only (DDP averages two
half-batch gradients where one process sums the whole batch; each rank pads its prompts to its own longest, which
changes matmul shapes, not values). That moves results by a few float32 ulps per operation: ~1e-7 relative in a
reward, loss or gradient norm, for which the tolerances (rtol 1e-4, atol 1e-6) leave 100x. Weights are compared by
their updates, not element by element: Adam divides each gradient element by its own running RMS, so an element whose
gradient is near zero carries its reduction noise into its update at up to the learning rate's scale (one element of
2,048 in a gate_proj differed by 2.3e-5 after 3 GRPO steps, in one suite run on 2 workers). The whole
update differs by 5e-6 of its norm (1.5e-6 of 0.29; the reward model: 1.4e-6 of 0.35); UPDATE_RTOL allows 1e-2. A
real difference (one prompt drawn differently, or a group's advantage normalised over half the group) changes
rewards and gradients at 1e-2 relative or more, and the update by about its own size: the same 3 steps over the
prompts in another order differ by 0.86 of the update.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from density_grpo import grpo, reward
from density_grpo.config import GRPOConfig, RMConfig
from density_grpo.errors import UserError
from density_grpo.io import read_json, read_jsonl
from test_grpo import QUESTIONS, tiny_params, tiny_rm  # noqa: F401 (tiny_rm: a fixture)
from test_reward_eval import rm_params, synthetic_pairs

TESTS = Path(__file__).resolve().parent
RTOL, ATOL = 1e-4, 1e-6
UPDATE_RTOL = 1e-2  # 1 vs 2 processes: |update difference| / |update| over all weights (module docstring)
GRPO_OUT = {"model": "model", "metrics": "metrics.jsonl", "draws": "draws.parquet", "summary": "summary.json",
            "curves": "curves.jsonl", "curve_embeddings": "curves.npz"}  # fmt: skip


@pytest.fixture(scope="module")
def helper_run(tiny_model, tmp_path_factory) -> Path:
    """tests/dist_helper.py on 2 processes, once (starting 2 processes costs ~10 s on 2 cores): its output folder."""
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TESTS / "dist_helper.py"),
           str(out), str(tiny_model), str(TESTS)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True)
    return out


def grpo_step(tmp: Path, tiny_model, rm: Path, processes: int) -> dict[str, Path]:
    """The grpo rule's step on 6 training prompts (2 held out), 3 steps of 3 prompts x 4 completions: on 2
    processes each takes 6 completions, so the middle group is split between the ranks (its advantage needs both),
    and one micro-batch of 6 per step where 1 process accumulates two."""
    from density_grpo.pairs import prompt_id

    tmp.mkdir()
    texts = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS]
    pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "text": texts, "topic": ""}).to_parquet(tmp / "prompts.parquet")
    params = tiny_params("rm")
    params["grpo"].update(processes=processes, keyed_sampling=True, steps=3, prompts_per_step=3, num_generations=4, micro_batch=6,
                          max_completion_length=8, learning_rate=1e-3)  # fmt: skip
    out = {k: tmp / v for k, v in GRPO_OUT.items()}
    grpo.run({"prompts": str(tmp / "prompts.parquet"), "model": str(tiny_model), "rm": str(rm)}, {k: str(v) for k, v in out.items()}, params)
    return out


def assert_same_weights(a: Path, b: Path, start: Path) -> None:
    """The two runs' weights moved from `start`'s alike: the norm of their difference is at most UPDATE_RTOL of the
    norm of the update (tensors `start` lacks, like a reward head, count in the difference only)."""
    wa, wb, w0 = (load_file(d / "model.safetensors") for d in (a, b, start))
    assert wa.keys() == wb.keys()
    diff = sum(float((wa[k] - wb[k]).pow(2).sum()) for k in wa) ** 0.5
    update = sum(float((wa[k] - w0[k]).pow(2).sum()) for k in wa if k in w0) ** 0.5
    assert update > 0 and diff <= UPDATE_RTOL * update, f"weights differ by {diff:.3g}: {diff / update:.3g} of the update"


def test_grpo_two_processes_match_one(tiny_model, tiny_rm, tmp_path, caplog):  # noqa: F811
    """Same config and seed: the 2-process run draws the same prompts at every step, gets the same rewards, loss
    and gradient norm, and ends at the same weights; rank 0 alone wrote, and nothing temporary is left."""
    one = grpo_step(tmp_path / "one", tiny_model, tiny_rm, 1)
    with caplog.at_level("INFO", logger="density_grpo.distributed"):
        two = grpo_step(tmp_path / "two", tiny_model, tiny_rm, 2)
    assert "launching 2 processes (threads per process: 1)" in caplog.messages
    r1, r2 = read_jsonl(one["metrics"]), read_jsonl(two["metrics"])
    assert [r["step"] for r in r2] == [1, 2, 3]
    assert [r["prompt_ids"] for r in r2] == [r["prompt_ids"] for r in r1]
    for key in ("reward", "reward_std", "loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in r2], [r[key] for r in r1], rtol=RTOL, atol=ATOL, err_msg=key)
    assert max(r["grad_norm"] for r in r1) > 1e-3  # the steps really moved the policy
    d1, d2 = pd.read_parquet(one["draws"]), pd.read_parquet(two["draws"])
    pd.testing.assert_frame_equal(d1, d2)
    assert d2["draws"].sum() == 3 * 3  # every global draw counted once (steps x prompts_per_step)
    assert_same_weights(one["model"], two["model"], tiny_model)
    c1, c2 = read_jsonl(one["curves"]), read_jsonl(two["curves"])
    assert [c["step"] for c in c2] == [0, 1, 2, 3]  # rank 0's curves, every point once
    np.testing.assert_allclose([c["reward_mean"] for c in c2], [c["reward_mean"] for c in c1], rtol=RTOL, atol=ATOL)
    assert read_json(two["summary"])["n_draws"] == 9
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(["prompts.parquet", *GRPO_OUT.values()])


def test_reward_model_two_processes_match_one(tiny_model, tmp_path):
    """The reward model on 2 processes (2 pairs each of a 4-pair step): the same loss at every step, the same
    held-out accuracy and weights; rank 0 alone wrote."""
    outs = []
    for n in (1, 2):
        d = tmp_path / str(n)
        d.mkdir()
        synthetic_pairs().to_parquet(d / "pairs.parquet")
        files = {"model": d / "rm", "metrics": d / "metrics.json", "steps": d / "steps.jsonl"}
        reward.run({"model": str(tiny_model), "pairs": str(d / "pairs.parquet")}, {k: str(v) for k, v in files.items()},
                   rm_params(processes=n))  # fmt: skip
        outs.append(files)
    (s1, s2), (m1, m2) = [read_jsonl(f["steps"]) for f in outs], [read_json(f["metrics"]) for f in outs]
    assert [s["step"] for s in s2] == [1, 2, 3, 4]
    np.testing.assert_allclose([s["loss"] for s in s2], [s["loss"] for s in s1], rtol=RTOL, atol=ATOL)
    assert m2["eval_accuracy"] == m1["eval_accuracy"] and m2["steps"] == 4
    np.testing.assert_allclose(m2["eval_margin_mean"], m1["eval_margin_mean"], rtol=RTOL, atol=ATOL)
    assert_same_weights(outs[0]["model"], outs[1]["model"], tiny_model)
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == ["metrics.json", "pairs.parquet", "rm", "steps.jsonl"]


def test_each_group_spreads_over_the_ranks(helper_run):
    """accelerate gives each rank a slice of the identical weighted stream: side by side, the ranks' slices are the
    1-process step (3 groups of 4 completions, 6 per rank: the middle group split between the ranks); each rank
    counts every draw once."""
    got = json.loads((helper_run / "layout.json").read_text())
    ref = grpo.WeightedRepeatSampler(np.linspace(1, 3, 10), 4, 3, 1, 9, seed=7)
    expected = np.array(list(ref)).reshape(3, 12)
    assert [r0 + r1 for r0, r1 in got["steps"]] == expected.tolist()
    assert all(len(r0) == len(r1) == 6 for r0, r1 in got["steps"])
    assert got["counts"] == ref.counts.tolist() and sum(got["counts"]) == 9


def test_ranks_seeded_differently_fail_with_one_line(helper_run):
    """A sampler bug (each rank seeded differently) would train the ranks on different prompts: the trainer
    compares the ranks' prompt streams before the first step and every rank stops with the same one line."""
    for rank in (0, 1):
        line = (helper_run / f"error.{rank}").read_text()
        assert line.startswith("the weighted prompt stream differs between processes (ranks [1] disagree with rank 0)")
        assert "\n" not in line


def test_stream_digest_is_the_digest_of_every_step_draw():
    """What the ranks compare: the hash of the stream the sampler will really draw (every step), so it differs
    exactly when a seed, a weight or the layout does."""
    from density_grpo.distributed import digest

    def sampler(seed=7, w=np.linspace(1, 3, 10), batch=3):
        return grpo.WeightedRepeatSampler(w, 4, batch, 1, 9, seed)

    s = sampler()
    before = s.stream_digest()
    list(s)  # one iteration: s.draws holds every step's draws
    assert before == s.stream_digest() == digest(s.p, np.array([4, 3, 1, 9]), s.draws)
    others = [sampler(seed=8), sampler(w=np.linspace(1, 4, 10)), sampler(batch=1)]
    assert len({before, *(o.stream_digest() for o in others)}) == 4


def test_missing_gpus_fail_before_any_process_starts(monkeypatch):
    """On CUDA each process needs its own GPU: with none, or fewer than the processes (a job granted fewer GPUs),
    the job fails with one line naming the key before starting a worker (each would load torch, then fail)."""
    from density_grpo import distributed

    monkeypatch.setattr(distributed.subprocess, "Popen", lambda *a, **k: pytest.fail("a worker was started"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^config key device: 'cuda' but torch sees no CUDA device here"):
        distributed.launch(grpo.run, ({}, {}), {"device": "cuda"}, 2, "grpo.processes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError) as e:
        distributed.launch(reward.run, ({}, {}), {"device": "cuda"}, 2, "rm.processes")
    assert str(e.value) == (
        "config key rm.processes: 2 processes need 2 CUDA devices (one each), but torch sees 1 here "
        "(CUDA_VISIBLE_DEVICES='0')"
    )


def test_processes_must_share_the_batch():
    """The global batch keeps its meaning: processes must split it into whole micro-batches (TRL's requirement)."""
    g = dict(tiny_params("rm")["grpo"], prompts_per_step=2, num_generations=3, micro_batch=6)
    assert GRPOConfig.from_params(dict(g, processes=3)).accumulation == 1  # 2 sequences per process
    assert GRPOConfig.from_params(dict(g, processes=2)).process_micro_batch == 3
    with pytest.raises(UserError, match=r"^config key grpo.processes: 4 processes cannot share"):
        GRPOConfig.from_params(dict(g, processes=4))
    g8 = dict(g, num_generations=4, micro_batch=2)  # 8 sequences: 2 processes x 2 micro-batches of 2
    assert (GRPOConfig.from_params(dict(g8, processes=2)).accumulation, GRPOConfig.from_params(dict(g8, processes=1)).accumulation) == (2, 4)
    with pytest.raises(UserError, match=r"^config key rm.processes: 3 processes cannot share rm.batch_size = 4"):
        RMConfig.from_params(dict(rm_params()["rm"], processes=3))


def test_snakemake_runs_a_grpo_job_on_two_processes(finished_run, tiny_model, tmp_path):
    """Through Snakemake and run_step: grpo.processes = 2 reruns the job (a param), which launches itself; its memory
    record holds both ranks' peaks and rank 0's prediction, the largest rank being the measured figure."""
    from conftest import copy_run, planned_jobs, snakemake, tiny_config

    work = copy_run(finished_run, tmp_path / "run")
    config = tiny_config(work, tiny_model, work / "pairs.jsonl", grpo={"processes": 2})
    target = "results/tiny/grpo/uniform/seed0/summary.json"
    assert planned_jobs(snakemake(work, target, "--configfile", str(config), "-n").stdout) == {"grpo": 1}
    res = snakemake(work, target, "--configfile", str(config))
    rec = read_json(work / "results/tiny/memory/grpo_uniform_0.json")
    ranks = rec["peak_rss_per_rank_mb"]
    assert rec["status"] == "ok" and len(ranks) == 2 and min(ranks) > 100
    assert rec["measured_mb"] == max(ranks) < rec["peak_rss_mb"]  # the tree adds the launcher
    assert rec["measured_what"] == "peak RSS of the largest of 2 processes"
    assert rec["prediction"]["assumptions"]["processes"] == 2 and rec["extra"]["processes"] == 2
    assert rec["extra"]["n_draws"] == read_json(work / target)["n_draws"] == 2 * 2
    log = (work / "logs/tiny/grpo_uniform_0.log").read_text()
    assert "launching 2 processes" in log and "rank 0 INFO train 2/2 steps" in log
    assert "step 2 metrics {" in log and "metrics {" not in res.stderr  # TRL's dicts: the log file only, as on 1 process


def test_eight_gpu_config_is_valid():
    """configs/hh-8gpu.yaml (predicted, not run) passes the schema and the batch checks for 8 processes."""
    from density_grpo.config import load_config

    cfg = load_config(TESTS.parent / "configs/hh-8gpu.yaml")  # validated: schema and cross-field checks
    assert cfg["grpo"]["processes"] == cfg["rm"]["processes"] == 8
    assert GRPOConfig(**cfg["grpo"]).accumulation == 4  # 64 completions per GPU, 4 micro-batches of 16

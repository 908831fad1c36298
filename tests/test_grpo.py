"""GRPO module: weighted sampler, self-certainty (chunked == naive, position alignment), tiny end-to-end runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl.trainer.utils import RepeatSampler

from density_grpo import grpo
from density_grpo.pairs import prompt_id
from density_grpo.grpo import (
    WeightedRepeatSampler,
    make_rm_reward,
    make_self_certainty_reward,
    self_certainty,
    self_certainty_naive,
    set_pad_token,
)

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "How do I make a good risotto?",
    "What is the capital of France?",
    "Tell me a joke about computers.",
    "Can you help me write an email to my landlord?",
    "Where should I start with the guitar?",
    "What are healthy breakfast ideas for kids?",
    "How do I tune a harpsichord?",
    "How do I say hello in Basque?",
]


def chi_square(counts: np.ndarray, p: np.ndarray) -> float:
    expected = counts.sum() * p
    return float(((counts - expected) ** 2 / expected).sum())


# -----------------------------------------------------------------------------
# sampler


def test_weighted_sampler_follows_weights():
    w = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 30], dtype=float)
    p = w / w.sum()
    s = WeightedRepeatSampler(w, mini_repeat_count=1, batch_size=1, repeat_count=1, num_samples=20_000, seed=0)
    drawn = np.bincount(list(s), minlength=10)
    assert (drawn == s.counts).all() and s.counts.sum() == 20_000
    # chi-square, 9 degrees of freedom: the 0.999 quantile is 27.9; 40 is generous
    assert chi_square(s.counts, p) < 40
    assert np.abs(s.counts / 20_000 - p).max() < 0.01


def test_uniform_weights_give_uniform_draws():
    n = 12
    s = WeightedRepeatSampler(np.ones(n), mini_repeat_count=2, batch_size=3, repeat_count=1, num_samples=24_000, seed=1)
    list(s)
    assert s.counts.sum() == 24_000
    assert chi_square(s.counts, np.full(n, 1 / n)) < 45  # 11 d.o.f.: 0.999 quantile is 31.3
    assert np.abs(s.counts / 24_000 - 1 / n).max() < 0.01


def test_sampler_layout_matches_trl_repeat_sampler():
    w = np.random.default_rng(0).random(7)
    s = WeightedRepeatSampler(w, mini_repeat_count=3, batch_size=4, repeat_count=2, num_samples=10, seed=5)
    out = list(s)
    # TRL's layout over the positions of the same draw (no shuffle), mapped through the draw
    trl_positions = list(
        RepeatSampler(list(range(10)), mini_repeat_count=3, batch_size=4, repeat_count=2, shuffle=False)
    )
    assert out == [int(s.draws[i]) for i in trl_positions]
    assert len(out) == len(s) == 2 * 4 * 3 * 2  # the trailing partial chunk (2 draws) is dropped, as in TRL
    assert (s.counts == np.bincount(s.draws[:8], minlength=7)).all()  # one count per draw, not per repeat
    # same seed, same draws: the two arms differ only in their weights
    again = WeightedRepeatSampler(w, mini_repeat_count=3, batch_size=4, repeat_count=2, num_samples=10, seed=5)
    assert list(again) == out


@pytest.mark.parametrize("w", [np.ones((2, 2)), np.array([1.0, -1.0, 1.0]), np.array([1.0, np.nan]), np.zeros(3)])
def test_sampler_rejects_bad_weights(w):
    with pytest.raises(ValueError):
        WeightedRepeatSampler(w, mini_repeat_count=2, batch_size=1, repeat_count=1, num_samples=None, seed=0)


# -----------------------------------------------------------------------------
# self-certainty


class RowRecorder(torch.nn.Module):
    """Wraps an LM head; records the most positions it was ever given in one call."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head, self.max_rows = head, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.max_rows = max(self.max_rows, x.reshape(-1, x.shape[-1]).shape[0])
        return self.head(x)


@pytest.mark.parametrize("token_chunk", [1, 7, 64, 1000])
def test_self_certainty_chunked_equals_naive(token_chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 37, 16, generator=g)
    head = torch.nn.Linear(16, 101)
    mask = (torch.rand(3, 37, generator=g) > 0.3).long()
    mask[2] = 0
    mask[2, :5] = 1  # a short row
    expected = self_certainty_naive(hidden, head, mask)
    recorder = RowRecorder(head)
    got = self_certainty(hidden, recorder, mask, token_chunk=token_chunk)
    assert got.dtype == torch.float32 and got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    assert recorder.max_rows <= token_chunk  # never the full B x T x V logits
    # logsumexp(z) - mean(z) = KL(uniform || p) + log V >= log V
    assert (got > np.log(101) - 1e-4).all()


def test_self_certainty_temperature_and_empty_row():
    hidden = torch.randn(2, 5, 8)
    head = torch.nn.Linear(8, 11)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    got = self_certainty(hidden, head, mask, token_chunk=2, temperature=0.7)
    torch.testing.assert_close(got, self_certainty_naive(hidden, head, mask, temperature=0.7), rtol=1e-5, atol=0)
    assert got[1] == 0


def test_self_certainty_reward_matches_full_forward(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    # sharpen the (tied) LM head: a random tiny model is near-uniform everywhere, which would hide misalignment
    model.get_output_embeddings().weight.data *= 50
    tok = AutoTokenizer.from_pretrained(tiny_model)
    eos = tok.eos_token_id
    prompts = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS[:4]]
    rng = np.random.default_rng(0)
    normal = [t for t in range(len(tok)) if t not in (eos, tok.pad_token_id)]
    completions = [[int(t) for t in rng.choice(normal, size=k)] for k in (5, 1, 9, 6)]
    completions[3][2] = eos  # an EOS mid-completion: the tokens after it are not scored (TRL masks them)
    reward = make_self_certainty_reward(model, tok, token_chunk=3)
    got = reward(prompts=prompts, completions=[""] * 4, completion_ids=completions)
    assert reward.__name__ == "self_certainty" and len(got) == 4

    # independent reference: each sequence alone, unpadded, through the full causal LM forward and full logits
    def naive(shift: int) -> list[float]:
        values = []
        with torch.no_grad():
            for text, c in zip(prompts, completions):
                c = c[: c.index(eos) + 1] if eos in c else c
                p = tok(text)["input_ids"]
                logits = model(torch.tensor([p + c])).logits[0].float()
                z = logits[len(p) - 1 + shift : len(p) + len(c) - 1 + shift]  # logits at t predict token t + 1
                values.append((torch.logsumexp(z, -1) - z.mean(-1)).mean().item())
        return values

    np.testing.assert_allclose(got, naive(0), rtol=1e-5)
    assert np.abs(np.array(got) / np.array(naive(-1)) - 1).max() > 1e-2  # an off-by-one would show


def test_set_pad_token_distinct_from_eos(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = tok.eos_token  # SmolLM2's setup: pad == eos
    set_pad_token(tok, model)
    assert tok.pad_token == tok.unk_token and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id

    tok.pad_token = tok.eos_token
    tok.unk_token = tok.eos_token  # no usable unk: falls back to "<|pad|>" (added, embeddings resized if new)
    set_pad_token(tok, model)
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)


# -----------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def tiny_rm(tiny_model, tmp_path_factory) -> Path:
    """A tiny (untrained) reward model folder: sequence classification head on the tiny Llama."""
    out = tmp_path_factory.mktemp("rm") / "rm"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def prompts() -> pd.DataFrame:
    texts = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS]
    return pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "text": texts, "topic": ""})


def test_rm_reward_scores_prompt_completion_eos(tiny_rm):
    tok = AutoTokenizer.from_pretrained(tiny_rm)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_rm).eval()
    prompts = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS[:3]]
    completions = [" Toast the rice.", " Paris.", " Sure, here is a joke about computers and programmers."]
    reward = make_rm_reward(str(tiny_rm), "cpu", torch.float32, max_length=20, batch_size=2)
    got = reward(prompts=prompts, completions=completions)
    assert reward.__name__ == "rm" and len(got) == 3
    with torch.no_grad():  # one unpadded sequence at a time: the last 20 tokens of prompt + completion + EOS
        expected = [
            rm(torch.tensor([tok(p + c + tok.eos_token)["input_ids"][-20:]])).logits[0, 0].item()
            for p, c in zip(prompts, completions)
        ]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def tiny_params(reward: str) -> dict:
    """The grpo rule's params for a 2-step run (what density_grpo.params builds from config.yaml)."""
    g = yaml.safe_load((REPO / "config.yaml").read_text())["grpo"]
    g.update(reward=reward, steps=2, prompts_per_step=2, num_generations=2, micro_batch=2, max_completion_length=6)
    del g["samplers"], g["seeds"]
    if reward == "rm":
        del g["token_chunk"]
    params = {
        "seed": 0, "policy_seed": 0, "device": "cpu", "dtype": "float32", "train_precision": "fp32", "grpo": g,
        "eval": {"pool": 2, "every": 1, "curve_prompts": 2, "curve_samples": 2},
    }  # fmt: skip
    return {**params, "rm": {"max_length": 64}} if reward == "rm" else params


def train(params: dict, tiny_model, prompts, weights=None, rm=None, curve_prompts=()):
    weights = np.full(len(prompts), 1 / len(prompts)) if weights is None else weights
    job = grpo.GRPOJob.from_params(params)
    return grpo.train_grpo(job, str(tiny_model), prompts, weights, None if rm is None else str(rm), list(curve_prompts))


def check_run(r: dict, n_prompts: int) -> None:
    rows, draws, summary = r["rows"], r["draws"], r["summary"]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert {"reward", "reward_std", "kl", "entropy", "completions/mean_length", "step_wall_s"} <= row.keys()
        assert np.isfinite(row["reward"]) and row["step_wall_s"] > 0
    assert list(draws.columns) == ["prompt_id", "draws"] and len(draws) == n_prompts
    assert draws["draws"].sum() == 2 * 2  # steps x prompts_per_step
    assert summary["steps"] == 2 and summary["n_draws"] == 4 and summary["final_reward"] == rows[-1]["reward"]


def test_train_grpo_density_arm_draws_by_weight(tiny_model, tiny_rm, prompts):
    weights = np.full(len(prompts), 0.03 / (len(prompts) - 2))
    weights[-2:] = 0.485  # the two rare prompts carry 97% of the mass
    r = train(tiny_params("rm"), tiny_model, prompts, weights, tiny_rm)
    check_run(r, len(prompts))
    assert r["draws"]["draws"].iloc[-2:].sum() > r["draws"]["draws"].iloc[:-2].sum()
    assert r["curves"] == [] and r["curve_embeddings"].size == 0  # no curve prompts: no curves


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_step_changes_every_trainable_tensor(tiny_model, tiny_rm, prompts, precision):
    """fp32 master weights (bf16 only as autocast): one step at lr 1e-5 moves every parameter tensor.

    Trained directly in bf16 weights, most of a 1e-5 update is below bf16's resolution (shown on the last line)."""
    params = tiny_params("rm")
    params["grpo"].update(steps=1, learning_rate=1e-5)
    params["train_precision"] = precision
    after = train(params, tiny_model, prompts, rm=tiny_rm)["model"].state_dict()
    before = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    assert all(after[k].dtype == torch.float32 for k in after)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == [], unchanged
    w = before["model.layers.0.mlp.up_proj.weight"]
    assert ((w.bfloat16() + 1e-5 * torch.sign(w)).bfloat16() == w.bfloat16()).float().mean() > 0.5


def run_step(tiny_model, tiny_rm, prompts, tmp_path, params, **logs: str) -> dict[str, str]:
    """The rule's step on `prompts`; returns its output paths. `logs`: its named logs (a TensorBoard folder)."""
    prompts.to_parquet(tmp_path / "prompts.parquet")
    names = {"model": "model", "metrics": "metrics.jsonl", "draws": "draws.parquet", "summary": "summary.json",
             "curves": "curves.jsonl", "curve_embeddings": "curves.npz"}  # fmt: skip
    out = {**logs, **{k: str(tmp_path / name) for k, name in names.items()}}
    inputs = {"prompts": str(tmp_path / "prompts.parquet"), "model": str(tiny_model), "rm": str(tiny_rm)}
    grpo.run(inputs, out, params)
    return out


def test_grpo_step_uniform_arm(tiny_model, tiny_rm, prompts, tmp_path):
    """The rule's step: held-out prompts removed, files written atomically, the saved policy loads back with its
    pad token."""
    out = run_step(tiny_model, tiny_rm, prompts, tmp_path, tiny_params("rm"))
    model = Path(out["model"])
    assert (model / "model.safetensors").exists() and (model / "config.json").exists()
    assert not list(tmp_path.glob(".*.tmp-*"))  # atomic: no temporary left
    rows = [json.loads(line) for line in Path(out["metrics"]).read_text().splitlines()]
    draws = pd.read_parquet(out["draws"])
    summary = json.loads(Path(out["summary"]).read_text())
    check_run({"rows": rows, "draws": draws, "summary": summary}, len(prompts) - 2)
    # collapse curves at steps 0, 1, 2 on the 2 held-out pool prompts, 2 samples each
    curves = [json.loads(line) for line in Path(out["curves"]).read_text().splitlines()]
    assert [c["step"] for c in curves] == [0, 1, 2]
    for c in curves:
        assert {"reward_mean", "kl_to_base", "distinct_2_within", "length_tokens"} <= c.keys() and np.isfinite(c["reward_mean"])
        assert len(c["completions"]) == 2 and all(len(group) == 2 for group in c["completions"])
    assert abs(curves[0]["kl_to_base"]) < 1e-4  # step 0: the policy is the base model
    emb = np.load(out["curve_embeddings"])
    assert emb["embeddings"].shape == (3, 2, 2, 32) and emb["steps"].tolist() == [0, 1, 2]
    assert not set(emb["prompt_ids"]) & set(draws["prompt_id"])  # curve prompts are held out
    tok = AutoTokenizer.from_pretrained(out["model"])
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


def test_grpo_step_writes_tensorboard_events(tiny_model, tiny_rm, prompts, tmp_path):
    """training.report_to: tensorboard: in the folder its rule gives it, the step writes TRL's logged metrics
    (train/<name>) at every step and each collapse-curve point (curves/<name>), replacing an earlier run's events."""
    from conftest import tensorboard_scalars

    tb = tmp_path / "tensorboard" / "grpo_uniform_0"
    tb.mkdir(parents=True)
    (tb / "events.out.tfevents.0.earlier").write_bytes(b"")
    out = run_step(tiny_model, tiny_rm, prompts, tmp_path, tiny_params("rm"), tensorboard=str(tb))
    assert not (tb / "events.out.tfevents.0.earlier").exists() and len(list(tb.iterdir())) == 1  # one writer
    scalars = tensorboard_scalars(tb)
    assert {"train/loss", "train/reward", "train/reward_std", "train/entropy", "train/completions/mean_length"} <= scalars.keys()
    rows = [json.loads(line) for line in Path(out["metrics"]).read_text().splitlines()]
    assert [step for step, _ in scalars["train/reward"]] == [1, 2]
    np.testing.assert_allclose([v for _, v in scalars["train/reward"]], [r["reward"] for r in rows], rtol=1e-6, atol=1e-7)
    curves = [json.loads(line) for line in Path(out["curves"]).read_text().splitlines()]
    for key in ("reward_mean", "kl_to_base", "distinct_2_within", "length_tokens"):
        assert [step for step, _ in scalars[f"curves/{key}"]] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in scalars[f"curves/{key}"]], [c[key] for c in curves], rtol=1e-6, atol=1e-7)


def test_last_curve_point_samples_like_the_final_evaluation(tiny_model, tiny_rm, prompts, tmp_path):
    """One sampling function: the curve point after the last step and the evaluation of the saved policy, given
    the same prompts, settings and seed, produce the same completions (cut at the same stop tokens)."""
    from density_grpo.evaluate import EvalJob, evaluate_policy
    from density_grpo.pairs import holdout_split

    params = tiny_params("rm")
    params["grpo"].update(max_completion_length=12, temperature=1.0)
    out = run_step(tiny_model, tiny_rm, prompts, tmp_path, params)
    last = [json.loads(line) for line in Path(out["curves"]).read_text().splitlines()][-1]
    curve_prompts = holdout_split(prompts, 2, 0)[1]["text"].tolist()
    ev = {"pool": 2, "prompts": 2, "rare_fraction": 0.5, "rare_quantile": 0.2, "samples": 2, "max_new_tokens": 12, "max_prompt_length": 64, "temperature": 1.0}
    job = EvalJob.from_params({"eval": ev, "rm": {"max_length": 64, "batch_size": 2}, "name": "x", "sets": 1, "seed": 0,
                               "device": "cpu", "dtype": "float32"})  # fmt: skip
    evaluated = evaluate_policy(job, out["model"], str(tiny_model), curve_prompts, str(tiny_rm))
    assert evaluated["completions"][0] == last["completions"]
    assert len({t for group in last["completions"] for t in group}) > 1  # sampled, not a constant


def test_train_grpo_self_certainty(tiny_model, prompts):
    r = train(tiny_params("self_certainty"), tiny_model, prompts, curve_prompts=prompts["text"].tolist()[:1])
    check_run(r, len(prompts))
    assert r["summary"]["final_reward"] > np.log(320) - 1  # self-certainty is >= log V (V ~ 320 here)
    assert [c["step"] for c in r["curves"]] == [0, 1, 2] and r["curves"][0]["reward_mean"] > np.log(320) - 1

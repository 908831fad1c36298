"""Reward model training/scoring and diversity evaluation on a tiny random Llama (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

from conftest import tokenized_lengths

from density_grpo.errors import UserError
from density_grpo.evaluate import EvalJob, evaluate_policy
from density_grpo.sampling import Sampling, cut_at, keep_last_tokens, sample
from density_grpo.stats import distinct_n, pairwise_cosine_distance, vendi_score
from density_grpo import reward
from density_grpo.reward import (
    freeze_lower_layers,
    load_reward_model,
    score,
    set_pad_token,
    split_by_prompt,
    train_reward_model,
)

PROMPTS = [
    "\n\nHuman: How do I make a good risotto?\n\nAssistant:",
    "\n\nHuman: What is the capital of France?\n\nAssistant:",
    "\n\nHuman: Tell me a joke about computers.\n\nAssistant:",
]


def rm_params(**rm) -> dict:
    """The reward_model rule's params."""
    rm = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "max_length": 128, "eval_fraction": 0.25,
          "gradient_checkpointing": False, "train_layers": None, "processes": 1, **rm}  # fmt: skip
    return {"seed": 0, "device": "cpu", "train_precision": "fp32", "rm": rm}


def eval_job(sets: int) -> EvalJob:
    """An evaluate_model job's params (the sampling keys of the eval section, RM scoring), typed."""
    return EvalJob.from_params({
        "seed": 0, "device": "cpu", "dtype": "float32", "rm": {"max_length": 64, "batch_size": 4}, "name": "base",
        "sets": sets, "eval": {"samples": 3, "max_new_tokens": 6, "max_prompt_length": 64, "temperature": 1.0},
    })  # fmt: skip


def synthetic_pairs(n: int = 12) -> pd.DataFrame:
    """Chosen: a long helpful reply; rejected: a curt one. Prompt i appears in pairs i and i + n//2 (shared prompts)."""
    rows = []
    for j in range(n):
        i = j % (n // 2)
        rows.append(
            {
                "prompt": f"\n\nHuman: Question number {i}, how do I cook rice?\n\nAssistant:",
                "chosen": f" Rinse the rice, add water and simmer for {10 + i} minutes.",
                "rejected": f" No ({i}).",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def trained_rm(tiny_model, tmp_path_factory):
    """The rule's step, with training.report_to: tensorboard (its folder among the outputs, as run_step passes it)."""
    out = tmp_path_factory.mktemp("rm")
    files = {"model": str(out / "rm"), "metrics": str(out / "metrics.json"), "steps": str(out / "steps.jsonl"),
             "tensorboard": str(out / "tensorboard" / "reward_model")}  # fmt: skip
    synthetic_pairs().to_parquet(out / "pairs.parquet")
    reward.run({"model": str(tiny_model), "pairs": str(out / "pairs.parquet")}, files, rm_params())
    return out, json.loads((out / "metrics.json").read_text())


# -----------------------------------------------------------------------------
# metrics on hand-checkable inputs


def test_distinct_n_known_values():
    assert distinct_n(["a b c", "a b c", "a b c"], 1) == pytest.approx(3 / 9)  # identical: minimal
    assert distinct_n(["a b c", "a b c"], 2) == pytest.approx(2 / 4)
    assert distinct_n(["one two", "three four"], 1) == 1.0
    assert distinct_n(["one two", "three four"], 2) == 1.0
    # "the cat the cat" -> bigrams (the,cat) (cat,the) (the,cat); "the dog" -> (the,dog): 3 unique of 4
    assert distinct_n(["the cat the cat", "the dog"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["the cat the cat", "the dog"], 1) == pytest.approx(3 / 6)
    # n-grams never span two texts, and no n-grams -> 0
    assert distinct_n(["a", "b"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_vendi_identical_and_orthonormal():
    v = np.array([[0.3, -1.2, 2.0, 0.5]])
    assert vendi_score(np.repeat(v, 5, axis=0)) == pytest.approx(1.0, abs=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    assert vendi_score(q[:4] * 3.0) == pytest.approx(4.0, abs=1e-9)  # orthogonal rows, any norm
    assert vendi_score(np.eye(3)) == pytest.approx(3.0)
    # two identical + one orthogonal: eigenvalues 2/3, 1/3
    two = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert vendi_score(two) == pytest.approx(np.exp(-(2 / 3) * np.log(2 / 3) - (1 / 3) * np.log(1 / 3)))


def test_pairwise_cosine_distance_known_values():
    assert pairwise_cosine_distance(np.array([[1.0, 2.0], [2.0, 4.0]])) == pytest.approx(0.0)
    assert pairwise_cosine_distance(np.eye(3)) == pytest.approx(1.0)
    assert pairwise_cosine_distance(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    # pairs: (0,1) d=1, (0,2) d=0, (1,2) d=1 -> 2/3
    assert pairwise_cosine_distance(np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])) == pytest.approx(2 / 3)
    assert pairwise_cosine_distance(np.array([[1.0, 0.0]])) == 0.0


# -----------------------------------------------------------------------------
# generation


def test_sample_shape_and_determinism(tiny_model):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(123)
    before = torch.rand(1)
    how = Sampling(samples=4, max_new_tokens=8, temperature=1.0)
    a, b, c = (sample(model, tok, PROMPTS, how, seed) for seed in (7, 7, 8))
    assert len(a.texts) == len(PROMPTS) and all(len(cs) == 4 for cs in a.texts)
    assert len(a.ids) == 12 and len(a.prompt_ids) == 3 and all(len(x) <= 8 for x in a.ids)
    assert a.texts == b.texts and a.ids == b.ids
    assert a.texts != c.texts
    assert tok.padding_side == "right"  # restored
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the global RNG stream is untouched by seeding inside sample


def test_sample_stops_at_every_eos_and_cuts_at_human(tiny_model):
    """Completions end at the first of the generation config's EOS ids (as TRL's GRPO stops), EOS kept in the ids;
    the text stops where the model starts a Human turn itself."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model)
    free = sample(model, tok, PROMPTS[:1], Sampling(8, 10, 1.0), 3)
    stop = free.ids[0][2]  # a token the model samples early: make it an extra EOS of the generation config
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    out = sample(model, tok, PROMPTS[:1], Sampling(8, 10, 1.0), 3)
    assert out.ids[0] == free.ids[0][:3]  # same draw up to the stop token, cut after it
    assert all(stop not in ids[:-1] for ids in out.ids)
    assert cut_at(" Sure.\n\nHuman: and then", "\n\nHuman:") == " Sure." and cut_at(" Sure.\n\nHum", "\n\nHuman:") == " Sure."


# -----------------------------------------------------------------------------
# reward model


def test_split_by_prompt_keeps_prompts_apart():
    pairs = synthetic_pairs(20)
    train, held, dropped = split_by_prompt(pairs, 0.2, seed=0)
    assert len(train) + len(held) == len(pairs) and dropped == 0
    assert held["prompt"].nunique() == 2 and len(held) == 4  # 2 of 10 prompts, each with 2 pairs
    assert not set(train["prompt"]) & set(held["prompt"])
    again, _, _ = split_by_prompt(pairs, 0.2, seed=0)
    pd.testing.assert_frame_equal(train, again)


def test_pad_token_distinct_from_eos(tiny_model):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = tok.eos_token  # as SmolLM2 ships
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    pad = set_pad_token(tok, model)
    assert pad != tok.eos_token and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert tok.pad_token_id < model.get_input_embeddings().weight.shape[0]


def test_freeze_lower_layers(tiny_model):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    freeze_lower_layers(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.2.", "model.norm.", "score.")) for n in trainable)
    assert "score.weight" in trainable and "model.norm.weight" in trainable
    with pytest.raises(UserError, match="rm.train_layers"):
        freeze_lower_layers(model, 4)


def test_train_reward_model_writes_loadable_folder(trained_rm):
    folder, saved = trained_rm
    out = folder / "rm"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert sorted(p.name for p in out.iterdir() if "metrics" in p.name) == []  # the step's files sit beside the model
    assert saved["steps"] == 4
    assert 0.0 <= saved["eval_accuracy"] <= 1.0
    assert saved["n_train"] + saved["n_eval"] == 12 and saved["n_eval"] > 0
    for key in ("train_loss_first", "train_loss_last", "train_loss_mean", "eval_margin_mean", "wall_time_s"):
        assert np.isfinite(saved[key]), key
    lines = [json.loads(x) for x in (folder / "steps.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all("loss" in x for x in lines)
    model, tok = load_reward_model(str(out), device="cpu")
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id


def test_reward_model_writes_tensorboard_events(trained_rm):
    """TRL's logged metrics of every step, as train/<name> scalars in the folder the rule gives the step."""
    from conftest import tensorboard_scalars

    folder = trained_rm[0]
    scalars = tensorboard_scalars(folder / "tensorboard" / "reward_model")
    assert {"train/loss", "train/accuracy", "train/margin", "train/grad_norm", "train/learning_rate"} <= scalars.keys()
    steps = [json.loads(x) for x in (folder / "steps.jsonl").read_text().splitlines()]
    assert [step for step, _ in scalars["train/loss"]] == [x["step"] for x in steps] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [x["loss"] for x in steps], rtol=1e-6)


def test_tensorboard_folder_rank_0_only_and_removed_on_failure(tmp_path, monkeypatch):
    """The job's folder: written by rank 0 alone, removed when the job fails, and a one-line error naming the key
    and the install command without the tensorboard package."""
    import sys

    from density_grpo import training

    tb = tmp_path / "tensorboard" / "reward_model"
    with pytest.raises(RuntimeError, match="the job fails"):
        with training.tensorboard(str(tb)) as writer:
            writer.add_scalar("train/loss", 1.0, 1)
            writer.flush()
            assert list(tb.glob("events.out.tfevents.*"))
            raise RuntimeError("the job fails")
    assert not tb.exists()
    monkeypatch.setattr(training, "is_main", lambda: False)
    with training.tensorboard(str(tb)) as writer:
        assert writer is None
    assert not tb.exists()
    monkeypatch.setattr(training, "is_main", lambda: True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(UserError) as e:
        with training.tensorboard(str(tb)):
            pass
    assert str(e.value) == (
        "config key training.report_to: tensorboard needs the tensorboard package "
        "(pip install -e '.[tensorboard]' -c constraints.txt)"
    )
    assert not tb.exists()


def test_score_consistent_after_reload(trained_rm, tiny_model):
    out = trained_rm[0] / "rm"
    model, tok = load_reward_model(str(out), device="cpu")
    prompts = PROMPTS * 2
    responses = [" Sure, here you go.", " No.", "", " A much longer answer " * 6, " Paris.", " Why did the computer"]
    r = score(model, tok, prompts, responses, max_length=64, batch_size=4)
    assert r.shape == (6,) and r.dtype == np.float32
    # batching and padding do not change a score
    one = np.array([score(model, tok, [p], [x], max_length=64, batch_size=1)[0] for p, x in zip(prompts, responses)])
    np.testing.assert_allclose(r, one, atol=1e-5)
    # the saved/reloaded model scores like the in-memory model it was saved from
    fresh = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    np.testing.assert_allclose(score(fresh, tok, prompts, responses, 64, 4), r, atol=1e-6)
    # the score is read at the appended EOS: an explicit trailing EOS changes nothing
    np.testing.assert_allclose(score(model, tok, prompts[:1], [responses[0] + tok.eos_token], 64, 1), r[:1], atol=1e-6)


def test_trained_rm_prefers_chosen(tiny_model, tmp_path):
    """More steps on the easy synthetic task: held-out accuracy must reach 1."""
    metrics = train_reward_model(str(tiny_model), synthetic_pairs(), rm_params(max_steps=12, eval_fraction=0.34))["metrics"]
    assert metrics["eval_accuracy"] == 1.0 and metrics["eval_margin_mean"] > 0
    assert metrics["train_loss_last"] < metrics["train_loss_first"]


# -----------------------------------------------------------------------------
# evaluation end to end


def test_evaluate_then_compare(tiny_model, trained_rm, tmp_path):
    """evaluate_policy's sets (texts, rewards, lengths, embeddings) feed compare.run, which writes the comparison."""
    from density_grpo import compare
    from density_grpo.io import write_json

    rm_dir = trained_rm[0] / "rm"
    r = evaluate_policy(eval_job(2), str(tiny_model), str(tiny_model), PROMPTS, str(rm_dir))
    assert r["embeddings"].shape == (2, 3, 3, 32) and np.array(r["rewards"]).shape == (2, 3, 3)
    assert len(r["completions"]) == 2 and all(len(cs) == 3 for p in r["completions"] for cs in p)
    assert r["completions"][0] != r["completions"][1]  # two sample sets: different seeds
    again = evaluate_policy(eval_job(1), str(tiny_model), str(tiny_model), PROMPTS, str(rm_dir))
    assert again["completions"][0] == r["completions"][0]  # same seed: same samples (common random numbers)

    inputs = {"evals": [], "embeddings": [], "curves": [], "curve_embeddings": []}
    models = [["base", None], ["density", 0], ["uniform", 0]]
    for (name, _), res in zip(models, (r, again, again)):
        emb = res["embeddings"]
        np.savez(tmp_path / f"{name}.npz", embeddings=emb)
        doc = {k: v for k, v in res.items() if k != "embeddings"}
        doc |= {"model": name, "strata": ["rare", "dense", "dense"], "samples": 3, "sets": len(emb), "temperature": 1.0}
        write_json(doc, tmp_path / f"{name}.json")
        inputs["evals"].append(str(tmp_path / f"{name}.json"))
        inputs["embeddings"].append(str(tmp_path / f"{name}.npz"))
        if name != "base":
            rows = [{"step": s, "reward_mean": 0.1 * s, "kl_to_base": 0.01 * s, "distinct_2_within": 0.5, "length_tokens": 5} for s in (0, 2)]
            (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
            np.savez(tmp_path / f"{name}_curves.npz", embeddings=emb[:1, :2].repeat(2, 0))
            inputs["curves"].append(str(tmp_path / f"{name}.jsonl"))
            inputs["curve_embeddings"].append(str(tmp_path / f"{name}_curves.npz"))
    out = {"json": str(tmp_path / "comparison.json"), "diversity": str(tmp_path / "c.png"), "curves": str(tmp_path / "curves.png")}
    params = {"models": models, "runs": [["density", 0], ["uniform", 0]], "seed": 0,
              "eval": {"bootstrap": 100, "control_temperature": None}}  # fmt: skip
    compare.run(inputs, out, params)
    c = json.loads((tmp_path / "comparison.json").read_text())
    assert c["n_prompts"] == 3 and c["strata"] == {"rare": 1, "dense": 2} and c["seeds"] == {"density": [0], "uniform": [0]}
    v = c["metrics"]["vendi_within"]
    assert v["density_minus_uniform"]["diff"] == 0.0  # both arms are the same samples
    assert 1.0 - 1e-9 <= v["values"]["base"] <= 3 + 1e-9 and "noise_floor" in v
    assert c["metrics"]["vendi_within"]["strata"]["dense"]["values"]["density"] > 0
    assert set(c["curves"]) == {"density", "uniform"} and c["matched"]["reward"]["level"] == pytest.approx(0.2)  # after step 0 only
    for png in ("c.png", "curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


LONG_WORDS = " ".join(f"w{i} ünï ✓" for i in range(20_000))  # ~200k characters, far past 64 tokens


def test_long_texts_scored_from_a_bounded_tail(trained_rm, monkeypatch):
    """A response far past rm.max_length tokens: only its tail is tokenized, and the score is the whole text's."""
    model, tok = load_reward_model(str(trained_rm[0] / "rm"), device="cpu")
    long = LONG_WORDS
    window = reward.tail_chars(tok, 64)
    assert len(PROMPTS[0] + long) > 10 * window
    with tokenized_lengths(tok) as seen:
        bounded = score(model, tok, PROMPTS[:1], [long], max_length=64)
    assert max(seen) <= window + len(tok.eos_token)
    monkeypatch.setattr(reward, "tail_chars", lambda *_: 10**12)  # every text tokenized whole: the reference
    np.testing.assert_allclose(bounded, score(model, tok, PROMPTS[:1], [long], max_length=64), atol=1e-6)


def test_prompts_keep_their_last_tokens_from_a_bounded_tail(tiny_model):
    """A prompt far past max_prompt_length tokens keeps the whole text's last tokens while the tokenizer sees only
    models.tail_chars characters of it; a short prompt is kept as it is."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    long = LONG_WORDS + "\n\nHuman: the final request?\n\nAssistant:"
    with tokenized_lengths(tok) as seen:
        (cut, short), n_cut = keep_last_tokens(tok, [long, "Human: hi"], 16)
    assert n_cut == 1 and short == "Human: hi" and max(seen) <= reward.tail_chars(tok, 16) < len(long) / 100
    assert cut == tok.decode(tok(long, add_special_tokens=False)["input_ids"][-16:]) and cut.endswith("Assistant:")


def test_surely_short_keeps_what_trl_may_keep():
    pairs = pd.DataFrame({"prompt": ["ab", "ab", "abcd"], "chosen": ["c", "cccccc", "c"], "rejected": ["r", "r", "rrr"]})
    assert reward.surely_short(pairs, 7).index.tolist() == [0, 2]

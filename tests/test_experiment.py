"""The experiment's statistics and design: bootstrap intervals, strata, the shared diversity space, training
precision, the reward model's honest split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from density_grpo import compare
from density_grpo import device as D
from density_grpo.compare import Run, compare_models
from density_grpo.stats import vendi_score
from density_grpo.pairs import holdout_split, prompt_id, stratified_eval
from density_grpo.reward import split_by_prompt


def runs_with_rewards(rewards: list[np.ndarray]) -> list[Run]:
    """Runs that differ only in their rewards (prompts x samples)."""
    emb = np.zeros((rewards[0].shape[0], rewards[0].shape[1], 4))
    texts = [["a b c"] * rewards[0].shape[1] for _ in range(rewards[0].shape[0])]
    return [Run(texts, r, np.ones_like(r), emb + 1.0, np.zeros(4)) for r in rewards]


def test_bootstrap_identical_arms_give_an_interval_around_zero():
    rng = np.random.default_rng(0)
    arm = lambda: [rng.normal(0, 1, (200, 4)) for _ in range(2)]  # two seeds, same distribution
    groups = {"density": runs_with_rewards(arm()), "uniform": runs_with_rewards(arm())}
    d = compare_models(groups, "reward_mean", np.arange(200), B=500, seed=0)["density_minus_uniform"]
    assert d["lo"] < 0 < d["hi"] and not d["excludes_zero"]
    assert d["hi"] - d["lo"] < 0.5  # 2 x 200 x 4 draws per arm: a narrow interval
    same = runs_with_rewards(arm())
    d = compare_models({"density": same, "uniform": same}, "reward_mean", np.arange(200), B=200, seed=0)["density_minus_uniform"]
    assert d["diff"] == 0.0 and d["lo"] < 0 < d["hi"]  # seeds resampled independently per arm: spread around 0


def test_bootstrap_constant_shift_gives_an_interval_around_the_shift():
    rng = np.random.default_rng(1)
    base = [rng.normal(0, 1, (50, 4)) for _ in range(3)]
    shifted = [r + 0.7 for r in base]
    d = compare_models({"density": runs_with_rewards(shifted), "uniform": runs_with_rewards(base)}, "reward_mean", np.arange(50), 300, 0)
    d = d["density_minus_uniform"]
    assert d["diff"] == pytest.approx(0.7) and d["excludes_zero"]
    assert d["lo"] < 0.7 < d["hi"] and d["hi"] - d["lo"] < 0.3  # seeds resampled independently: spread around it
    noisy = [r + 0.7 + rng.normal(0, 0.5, r.shape) for r in base]
    d = compare_models({"density": runs_with_rewards(noisy), "uniform": runs_with_rewards(base)}, "reward_mean", np.arange(50), 300, 0)
    assert d["density_minus_uniform"]["lo"] < 0.7 < d["density_minus_uniform"]["hi"]


def test_noise_floor_and_pairing():
    """base vs base_b (two sample sets of one model) is the noise floor; pairing prompts removes prompt variance."""
    rng = np.random.default_rng(2)
    prompt_effect = rng.normal(0, 5, (100, 1))  # large per-prompt differences shared by every model
    sets = [prompt_effect + rng.normal(0, 0.1, (100, 4)) for _ in range(2)]
    out = compare_models({"base": runs_with_rewards(sets[:1]), "base_b": runs_with_rewards(sets[1:])}, "reward_mean", np.arange(100), 300, 0)
    nf = out["noise_floor"]
    assert nf["lo"] < 0 < nf["hi"] and nf["hi"] - nf["lo"] < 0.1  # paired: the prompt effect (sd 5) cancels


def test_detectable_difference_is_2_8_standard_errors_of_the_bootstrap():
    """The smallest detectable difference: 2.8 bootstrap standard errors (1.96 + 0.84: 95% interval, 80% power). A
    true shift of that size shows in most replications of the design; a shift of a tenth of it almost never."""
    rng = np.random.default_rng(4)
    make = lambda shift: [rng.normal(shift, 1, (60, 4)) for _ in range(3)]
    d = compare_models({"density": runs_with_rewards(make(0)), "uniform": runs_with_rewards(make(0))}, "reward_mean", np.arange(60), 400, 0)
    d = d["density_minus_uniform"]
    assert d["detectable"] == pytest.approx(2.8 * d["se"]) and d["se"] > 0
    hits = {}
    for frac in (1.0, 0.1):
        hits[frac] = np.mean([
            compare_models({"density": runs_with_rewards(make(frac * d["detectable"])), "uniform": runs_with_rewards(make(0))},
                           "reward_mean", np.arange(60), 200, 0)["density_minus_uniform"]["excludes_zero"]
            for _ in range(25)
        ])  # fmt: skip
    assert hits[1.0] >= 0.6 and hits[0.1] <= 0.2, hits


def test_positive_control_is_compared_with_the_base_model():
    rng = np.random.default_rng(5)
    base = [rng.normal(0, 1, (40, 4))]
    groups = {"base": runs_with_rewards(base), "control": runs_with_rewards([base[0] - 0.5 + rng.normal(0, 0.1, (40, 4))])}
    c = compare_models(groups, "reward_mean", np.arange(40), 300, 0)["control_minus_base"]
    assert c["diff"] == pytest.approx(-0.5, abs=0.05) and c["excludes_zero"] and c["hi"] < 0


def test_centring_undoes_a_common_offset():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 64))
    offset = 30 * rng.normal(size=64)
    raw_vendi, true_vendi = vendi_score(x + offset), vendi_score(x)
    assert raw_vendi < 1.5 and true_vendi > 10  # the anisotropy the comparison must undo
    emb = (x + offset)[None]  # one prompt x 20 samples
    run = Run([["t"] * 20], np.zeros((1, 20)), np.ones((1, 20)), emb, centre=emb.reshape(-1, 64).mean(0))
    across = run.across(np.arange(1))
    assert across["vendi_across_raw"] == pytest.approx(raw_vendi)
    assert across["vendi_across"] == pytest.approx(vendi_score(x - x.mean(0)))
    assert across["vendi_across"] > 10 * raw_vendi


def test_vendi_uses_the_smaller_decomposition():
    x = np.random.default_rng(4).normal(size=(300, 8))  # n > dim: decomposes the 8 x 8 matrix
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(u @ u.T / 300), 0, None)
    lam = lam[lam > 1e-12] / lam.sum()
    assert vendi_score(x) == pytest.approx(float(np.exp(-(lam * np.log(lam)).sum())), rel=1e-9)


def test_holdout_pool_and_stratified_selection():
    texts = [f"prompt {i}" for i in range(100)]
    prompts = pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "text": texts})
    train, pool = holdout_split(prompts, 30, seed=0)
    assert len(pool) == 30 and len(train) == 70 and not set(train["prompt_id"]) & set(pool["prompt_id"])
    assert holdout_split(prompts.iloc[::-1], 30, seed=0)[1]["prompt_id"].tolist() == pool["prompt_id"].tolist()  # order-free
    weights = pd.Series(np.linspace(1, 2, 100), index=prompts["prompt_id"])  # the last 20 rows: top 20% of weights
    chosen = stratified_eval(pool, weights, 10, rare_fraction=0.5, rare_quantile=0.2, seed=0)
    top = set(prompts["prompt_id"].iloc[80:])
    assert len(chosen) == 10 and chosen["prompt_id"].is_unique and set(chosen["prompt_id"]) <= set(pool["prompt_id"])
    rare = chosen[chosen["stratum"] == "rare"]
    n_top_in_pool = len(set(pool["prompt_id"]) & top)
    assert set(rare["prompt_id"]) <= top and len(rare) == min(5, n_top_in_pool)
    assert chosen.equals(stratified_eval(pool, weights, 10, 0.5, 0.2, seed=0))  # seeded: reproducible
    all_rare = stratified_eval(pool, weights, 10, rare_fraction=1.0, rare_quantile=0.2, seed=0)
    assert (all_rare["stratum"] == "rare").sum() == n_top_in_pool and len(all_rare) == 10  # short stratum filled


def test_training_precision_by_device(monkeypatch):
    monkeypatch.setattr(D, "_cuda_capability", lambda: (9, 0))
    assert D.plan_train_precision("cuda") == "bf16" and D.plan_train_precision("cuda:1") == "bf16"
    monkeypatch.setattr(D, "_cuda_capability", lambda: (7, 0))
    assert D.plan_train_precision("cuda") == "fp16"
    assert D.plan_train_precision("mps") == "fp32" and D.plan_train_precision("cpu") == "fp32"


def test_reward_model_split_drops_held_out_pairs_seen_in_training():
    rows = []
    for i in range(20):
        rows.append({"prompt": f"q{i}", "chosen": f" good answer {i}", "rejected": " No."})  # "No." repeats
        rows.append({"prompt": f"q{i}", "chosen": f" another answer {i}", "rejected": f" bad answer {i}"})
    pairs = pd.DataFrame(rows)
    train, held, dropped = split_by_prompt(pairs, 0.25, seed=0)
    assert dropped == 5 and len(held) == 5  # 5 held-out prompts x 2 pairs; the " No." pairs are dropped
    seen = set(train["chosen"]) | set(train["rejected"])
    assert not (set(held["chosen"]) | set(held["rejected"])) & seen
    assert not set(train["prompt"]) & set(held["prompt"])


def test_matched_reward_interpolates_every_run():
    pts = lambda xs, ys: [{"step": i, "reward_mean": x, "kl_to_base": x, "vendi_within": y, "vendi_across": y, "distinct_2_within": y} for i, (x, y) in enumerate(zip(xs, ys))]
    points = {
        "density": {0: pts([0, 1, 2, 3], [3, 3, 3, 3]), 1: pts([0, 2, 3], [3, 3, 3])},
        "uniform": {0: pts([0.5, 1.5, 2.5], [2, 1, 0.5])},
    }  # ranges after step 0: [1, 3], [2, 3], [1.5, 2.5]
    m = compare.matched(points, "reward_mean", B=100, seed=0)
    assert m["level"] == 2.25 and m["range"] == [2, 2.5]
    assert m["vendi_within"]["values"] == {"density": 3.0, "uniform": 0.625}
    assert m["vendi_within"]["density_minus_uniform"]["diff"] == 2.375
    assert compare.matched({"density": {0: pts([0, 1], [1, 1])}, "uniform": {0: pts([2, 3], [1, 1])}}, "reward_mean", 10, 0)["level"] is None


def test_matched_ignores_step_zero_and_resamples_prompts():
    """Every run starts at the base model: a level reached only at step 0 is no match; per-prompt Vendi is resampled."""
    def pts(xs, per):
        return [{"step": 2 * i, "reward_mean": x, "kl_to_base": x, "vendi_within": float(np.mean(v)), "vendi_within_per_prompt": v,
                 "vendi_across": 1.0, "distinct_2_within": 1.0} for i, (x, v) in enumerate(zip(xs, per))]  # fmt: skip
    up, down = pts([0, 1, 2], [[1, 1]] * 3), pts([0, -1, -2], [[1, 1]] * 3)
    assert compare.matched({"density": {0: up}, "uniform": {0: down}}, "reward_mean", 10, 0)["level"] is None
    # prompts differ (one gains, one loses), seeds agree: the interval comes from the prompts alone
    d = pts([0, 1, 2], [[2, 2], [4, 2], [4, 2]])
    u = pts([0, 1, 2], [[2, 2], [2, 2], [2, 2]])
    m = compare.matched({"density": {0: d, 1: d}, "uniform": {0: u, 1: u}}, "reward_mean", 400, 0)
    assert m["level"] == 1.5 and m["n_seeds"] == {"density": 2, "uniform": 2}
    ci = m["vendi_within"]["density_minus_uniform"]
    assert ci["diff"] == 1.0 and ci["lo"] == 0.0 and ci["hi"] == 2.0


def test_real_scale_config_is_valid_and_predicted():
    """configs/hh-1gpu.yaml merges over config.yaml, validates, and every job's predicted peak fits one 141 GiB GPU."""
    import subprocess
    import sys

    from conftest import REPO

    res = subprocess.run(
        [sys.executable, str(REPO / "tools/predict_run.py"), "--configfile", str(REPO / "configs/hh-1gpu.yaml")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| grpo (per arm x seed) | 6 |" in res.stdout and "fits on one h200 (141 GiB): True" in res.stdout

"""Stage 7a, evaluation: sample completions of one model on the evaluated held-out prompts, score and embed them.

The evaluated prompts are drawn from the held-out pool (never trained on) stratified by density weight (pairs.py:
holdout_split, stratified_eval). Every model's responses are embedded with the BASE model (mean-pooled last hidden
state), so all models can be compared in one space; the diversity metrics, their centring and the intervals are
computed by the comparison (compare.py). The base model is evaluated with two independent sample sets: their
difference is the noise floor.

The metrics (density_grpo.stats): lexical diversity distinct-n (unique / total whitespace n-grams); semantic
diversity, the mean pairwise cosine distance and the Vendi score of response embeddings; "within" = among the
samples of one prompt, averaged over prompts; "across" = all responses of all prompts pooled. The positive control
is the base model sampled at eval.control_temperature: a known drop in diversity the comparison must detect.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from density_grpo import memory
from density_grpo.config import EvalConfig, RMConfig, Job
from density_grpo.embed import RESPONSE_BATCH_TOKENS
from density_grpo.io import write_json
from density_grpo.sampling import Sampling, keep_last_tokens, sample

log = logging.getLogger(__name__)


# -----------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True)
class EvalJob(Job):
    """The params of one evaluate_model job, typed: the eval section (temperature: eval.control_temperature for
    the control), rm scoring (max_length, batch_size), the model's name, its number of sample sets (2 for the base
    model: the noise floor), the config seed (set k samples with seed + k: every model sees the same seeds), and
    the resolved device and dtype."""

    eval: EvalConfig
    rm: RMConfig
    name: str
    sets: int
    seed: int
    device: str
    dtype: str

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.eval.samples, self.eval.max_new_tokens, self.eval.temperature)


def predict(params: Mapping[str, Any], work: memory.Workload) -> dict:
    """Peak memory of evaluating one model (work.lengths: the evaluated prompts' tokens): one model's weights at a
    time (policy, base, RM loaded in turn) plus the largest of the generation KV cache and logits, the response
    embedding batch and the RM scoring batch."""
    return _predict(EvalJob.from_params(params), work)


def _predict(job: EvalJob, work: memory.Workload) -> dict:
    model_cfg, e = work.model, job.eval
    prec = memory.precision_key(job.dtype)
    B = job.sampling.prompts_per_call * e.samples
    S = max(work.lengths) + e.max_new_tokens
    embed_batch = max(1, RESPONSE_BATCH_TOKENS // e.max_new_tokens)
    c = {
        **memory.baseline("torch", job.device),
        **memory.texts(work, job.device),
        "weights": memory.weights_bytes(memory.param_count(model_cfg), prec),
        "max(generation KV cache + logits, embedding, RM scoring)": max(
            memory.kv_cache_bytes(model_cfg, B, S, prec) + B * memory.dims(model_cfg)["V"] * 4,
            memory.inference_activation_bytes(model_cfg, embed_batch, e.max_new_tokens, prec),
            memory.inference_activation_bytes(model_cfg, job.rm.batch_size, S, prec),
        ),
    }
    return memory.prediction(
        job.device, c, "baseline + one model's weights + max(KV cache + logits, embedding, RM activations)",
        "eval.samples (or model.dtype)", generation_batch=B, seq=S,
    )  # fmt: skip


def evaluate_policy(
    job: EvalJob, policy_dir: str, base_dir: str, prompts: list[str], rm_dir: str, text_bytes: int | None = None
) -> dict:
    """`job.sets` independent sets of `eval.samples` completions per prompt: texts, RM rewards, token lengths,
    base-model embeddings (array `embeddings`: sets x prompts x samples x dim) and the prompts as evaluated (cut
    to eval.max_prompt_length tokens). text_bytes: the characters of text the job holds (default: the prompts')."""
    from density_grpo.device import torch_device, torch_dtype
    from density_grpo.embed import response_embedder
    from density_grpo.models import load_causal_lm
    from density_grpo.monitor import Progress, expect
    from density_grpo.reward import load_reward_model, score

    e = job.eval
    device = torch_device(job.device)
    dtype = torch_dtype(job.dtype, device)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    policy, tok = load_causal_lm(policy_dir, dtype=dtype, device=device)
    chars = sum(map(len, prompts)) if text_bytes is None else text_bytes
    prompts, n_cut = keep_last_tokens(tok, prompts, e.max_prompt_length)
    lengths = tuple(len(x) for x in tok(prompts)["input_ids"])
    expect(_predict(job, memory.Workload(memory.model_config(policy_dir), lengths, text_bytes=chars)))
    gen = Progress(f"{job.name}: sampled", job.sets * len(prompts), "prompts", logger=log)
    completions = [
        sample(policy, tok, prompts, job.sampling, job.seed + k, lambda n, k=k: gen.update(k * len(prompts) + n)).texts
        for k in range(job.sets)
    ]
    flat = [c for cs in completions for c_p in cs for c in c_p]
    n_tokens = np.array([len(ids) for ids in tok(flat, add_special_tokens=False)["input_ids"]])
    timings["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if str(base_dir) != str(policy_dir):
        del policy
        base, base_tok = load_causal_lm(base_dir, dtype=dtype, device=device)
    else:
        base, base_tok = policy, tok
    embedder = response_embedder(base, base_tok, e.max_new_tokens)
    shape = (job.sets, len(prompts), e.samples)
    emb = embedder.embed(flat, progress=False).reshape(*shape, -1)
    del base, embedder
    timings["embed_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rm, rm_tok = load_reward_model(rm_dir, device=device, dtype=dtype)
    per_sample = [p for _ in range(job.sets) for p in prompts for _ in range(e.samples)]
    rewards = score(rm, rm_tok, per_sample, flat, job.rm.max_length, job.rm.batch_size).reshape(shape)
    timings["reward_s"] = time.perf_counter() - t
    log.info("%s: %d sets x %d prompts x %d samples: mean reward %.3f, mean length %.1f tokens", job.name, *shape, rewards.mean(), n_tokens.mean())
    return {
        "completions": completions,
        "rewards": rewards.tolist(),
        "lengths": n_tokens.reshape(shape).tolist(),
        "embeddings": emb.astype(np.float32),
        "time_s": timings,
        "prompts": prompts,
        "n_prompts_cut": n_cut,
    }


def run(input: dict, output: dict, params: dict) -> None:
    """Rule evaluate_model: one model on the evaluated prompts -> eval JSON (texts, rewards, lengths) + embeddings NPZ."""
    import pandas as pd

    from density_grpo.density import read_weights
    from density_grpo.io import atomic_path
    from density_grpo.pairs import holdout_split, stratified_eval

    job = EvalJob.from_params(params)
    e = job.eval
    prompts = pd.read_parquet(input["prompts"])
    _, pool = holdout_split(prompts, e.pool, job.seed)
    weights = read_weights(input["weights"], prompts["prompt_id"])  # the rare stratum: a quantile over all prompts
    chosen = stratified_eval(pool, weights, e.prompts, e.rare_fraction, e.rare_quantile, job.seed)
    chars = int(prompts["text"].str.len().sum())
    result = evaluate_policy(job, input["policy"], input["base"], chosen["text"].tolist(), input["rm"], chars)
    with atomic_path(output["embeddings"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=result.pop("embeddings"))
    write_json(
        {
            "model": job.name,
            "prompt_ids": chosen["prompt_id"].tolist(),
            "strata": chosen["stratum"].tolist(),
            "samples": e.samples,
            "sets": job.sets,
            "max_new_tokens": e.max_new_tokens,
            "temperature": e.temperature,
            "seed": job.seed,
            "embedding": "base model, mean-pooled last hidden state",
            **result,
        },
        output["eval"],
    )

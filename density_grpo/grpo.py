"""Stage 6b: GRPO with density-weighted prompt sampling (TRL GRPOTrainer), and its two rewards.

Hypothesis under test: drawing rare prompts (high k-NN density weight) more often reduces mode collapse. Both arms
run the same code: `WeightedRepeatSampler` draws the prompts of each step by weight, with replacement; the
`uniform` arm passes a uniform weight vector, so the arms differ only in the weights.

Rewards (TRL reward-function signature):
- `rm`: the Bradley-Terry reward model trained by density_grpo/reward.py, scored on prompt + completion + EOS;
- `self_certainty`: Intuitor's self-certainty of the current policy on its own completion (no reward model),
  computed through the LM head in chunks of positions, so the B x T x V logits never exist.

Pad token: SmolLM2 ships pad == eos == "<|im_end|>". Code that tells real tokens from padding by `id != pad` (HF
sequence-classification pooling, `generate` without an attention mask, collators) would then drop real EOS tokens.
TRL itself masks by length, but the saved policy is reused downstream, so `set_pad_token` makes pad distinct from
every eos id: the tokenizer's unk token when it is distinct (SmolLM2: "<|endoftext|>", already in the vocabulary and
never emitted by byte-level BPE, so no embedding resize), else a new "<|pad|>" with resized embeddings (the rule of
reward.py). Pads are always attention-masked and never scored, so their embedding does not matter.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Sampler
import trl
from transformers import TrainerCallback

from density_grpo import memory
from density_grpo.config import EvalConfig, GRPOConfig, RMConfig, Job
from density_grpo.distributed import digest, is_main, launch, local_device, must_launch, same_on_every_rank
from density_grpo.errors import UserError
from density_grpo.io import atomic_path
from density_grpo.models import eos_token_ids, pad_token_id, set_pad_token
from density_grpo.sampling import Sampling, keep_last_tokens, pack, sample

log = logging.getLogger(__name__)

# per-step keys always present in metrics.jsonl (None when TRL did not log them, e.g. kl when beta == 0)
METRIC_KEYS = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/max_length")

# -----------------------------------------------------------------------------
# sampler


class WeightedRepeatSampler(Sampler[int]):
    """TRL's RepeatSampler layout, but the unique indices are drawn by weight (with replacement) instead of shuffled.

    Each iteration draws `num_samples` unique indices i ~ weights (numpy Generator seeded once with `seed`, so
    successive iterations continue the same stream), cuts them into chunks of `batch_size` (a trailing partial chunk
    is dropped, as in TRL), and yields each chunk `repeat_count` times with every index repeated `mini_repeat_count`
    times consecutively:

        draws [4, 1, 4, 0], batch_size=2, mini_repeat_count=2, repeat_count=2
        -> 4 4 1 1 | 4 4 1 1 | 4 4 0 0 | 4 4 0 0

    One weight per dataset row; `num_samples` None means len(weights) (one "epoch" = as many draws as rows); GRPO
    training sets it to exactly the draws its steps consume. `counts[i]` counts the draws of index i actually
    yielded (once per draw, not per repeat); `draws` holds the last iteration's full draw.
    """

    def __init__(
        self, weights: np.ndarray, mini_repeat_count: int, batch_size: int, repeat_count: int, num_samples: int | None,
        seed: int,
    ):  # fmt: skip
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be a 1-D array of finite, non-negative weights, not all zero")
        self.p = w / w.sum()
        self.mini_repeat_count, self.batch_size, self.repeat_count = mini_repeat_count, batch_size, repeat_count
        self.num_samples = len(w) if num_samples is None else int(num_samples)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.counts = np.zeros(len(w), dtype=np.int64)
        self.draws = np.empty(0, dtype=np.int64)

    def __iter__(self):
        self.draws = self.rng.choice(len(self.p), size=self.num_samples, replace=True, p=self.p)
        n_chunks = self.num_samples // self.batch_size
        for chunk in self.draws[: n_chunks * self.batch_size].reshape(n_chunks, self.batch_size).tolist():
            np.add.at(self.counts, chunk, 1)  # add.at: an index may be drawn twice in one chunk
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def stream_digest(self) -> str:
        """A hash of the weights, the layout and the whole stream of one iteration (every step's draws, from a
        fresh generator: the sampler's own is untouched): equal on every rank exactly when the ranks will draw the
        same prompts at every step."""
        stream = np.random.default_rng(self.seed).choice(len(self.p), size=self.num_samples, p=self.p)
        layout = np.array([self.mini_repeat_count, self.batch_size, self.repeat_count, self.num_samples])
        return digest(self.p, layout, stream)

    def __len__(self) -> int:
        return (self.num_samples // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count


# -----------------------------------------------------------------------------
# trainer


class WeightedGRPOTrainer(trl.GRPOTrainer):
    """trl.GRPOTrainer whose train sampler draws the prompts by `prompt_weights`, one per train_dataset row.

    `draw_counts` (after training): how many times each row was drawn as a group's prompt. On N processes every
    rank iterates the whole, identical stream (TRL's RepeatSampler contract: the dataloader gives each rank its
    slice and the rewards are gathered for the group advantage), so each rank's counts are the global draws.
    keyed_sampling: completions sampled with `KeyedGumbel` (the same completions for any number of processes).
    """

    def __init__(self, *args, prompt_weights: np.ndarray, keyed_sampling: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompt_weights = np.asarray(prompt_weights, dtype=np.float64)
        self.train_sampler: WeightedRepeatSampler | None = None
        self.keyed_sampling, self._generations = keyed_sampling, 0

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        if not self.keyed_sampling:
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        from transformers import LogitsProcessorList

        from density_grpo.sampling import KeyedGumbel

        model = self.accelerator.unwrap_model(self.model)
        rows, generation = len(prompt_ids), self._generations
        keyed = KeyedGumbel(self.temperature, self.args.seed, generation, self.accelerator.process_index * rows)
        generate = model.generate

        def keyed_generate(*a, generation_config, **kw):
            config = copy.deepcopy(generation_config)
            config.do_sample, config.temperature, config.top_k, config.top_p = False, None, None, None
            return generate(*a, generation_config=config, logits_processor=LogitsProcessorList([keyed]), **kw)

        model.generate, self._generations = keyed_generate, generation + 1
        try:
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        finally:
            del model.generate  # the class's method again

    def _get_train_sampler(self, dataset=None) -> Sampler:
        # the arguments of GRPOTrainer._get_train_sampler (see its comment for the layout), plus weights
        batch_size = self.args.generation_batch_size // self.num_generations
        repeat_count = self.num_iterations * self.args.steps_per_generation
        num_samples = None
        if self.args.max_steps > 0:  # exactly the draws max_steps consume: every counted draw is trained on
            micro_steps = self.args.max_steps * self.args.gradient_accumulation_steps
            num_samples = math.ceil(micro_steps / repeat_count) * batch_size
        self.train_sampler = WeightedRepeatSampler(
            self.prompt_weights, self.num_generations, batch_size, repeat_count, num_samples, self.args.seed
        )
        same_on_every_rank(self.train_sampler.stream_digest(), "the weighted prompt stream")
        return self.train_sampler

    def step_draws(self) -> list[np.ndarray]:
        """The dataset rows each optimizer step drew (a step is one generation: prompts_per_step unique draws)."""
        if self.train_sampler is None:
            return []
        draws, size = self.train_sampler.draws, self.train_sampler.batch_size
        return [draws[i : i + size] for i in range(0, len(draws) - size + 1, size)]

    @property
    def draw_counts(self) -> np.ndarray:
        if self.train_sampler is None:
            return np.zeros(len(self.train_dataset), dtype=np.int64)
        return self.train_sampler.counts.copy()


# -----------------------------------------------------------------------------
# rewards


RM_BATCH = 8  # sequences per reward-model forward when GRPO scores completions


def make_rm_reward(rm_dir: str, device, dtype, max_length: int, batch_size: int = RM_BATCH) -> Callable[..., list[float]]:
    """TRL reward function scoring prompt + completion with the reward model folder `rm_dir` (no grad, batched).

    Scored exactly as TRL's RewardTrainer trains (density_grpo.reward.score: prompt + completion + EOS).
    """
    from density_grpo.reward import load_reward_model, make_reward_func

    rm, tokenizer = load_reward_model(rm_dir, device=device, dtype=dtype)
    pad_id = rm.config.get_text_config().pad_token_id
    if pad_id is None or pad_id == tokenizer.eos_token_id:  # the score would be read before the EOS
        raise UserError(f"{rm_dir}: reward model pad_token_id must be set and differ from eos")
    rm_reward = torch.no_grad()(make_reward_func(rm, tokenizer, max_length, batch_size))
    rm_reward.__name__ = "rm"
    return rm_reward


@torch.no_grad()
def self_certainty(
    hidden: torch.Tensor, lm_head: torch.nn.Module, mask: torch.Tensor, token_chunk: int = 128, temperature: float = 1.0
) -> torch.Tensor:
    """Intuitor's self-certainty per sequence, without ever building the B x T x V logits.

    hidden (B, T, H): the hidden states that predict the scored tokens; mask (B, T): 1 where a token is scored.
    Per position, with z = lm_head(h) / temperature over the V-token vocab: logsumexp(z) - mean(z), which is
    KL(uniform || softmax(z)) + log V (the constant log V is dropped: it cancels in GRPO's group advantages).
    Returns the masked mean per sequence, float32 (B,) (0 for a row with no scored position). Only the masked
    positions go through lm_head, `token_chunk` at a time, and each chunk's logits are reduced in place (one
    token_chunk x V float32 buffer, reused for every chunk when the head is a plain fp32 nn.Linear; no logsumexp
    temporaries): logsumexp(z) - mean(z) = log sum exp(z - m) - mean(z - m) for m = max(z). Small chunks stay in
    cache, so this is also faster than the full-logits version on CPU.
    """
    mask = mask.bool()
    rows = mask.nonzero(as_tuple=True)[0]
    h = hidden[mask]  # (N, H), N = scored positions
    per_token = torch.empty(h.size(0), dtype=torch.float32, device=hidden.device)
    w = lm_head.weight if type(lm_head) is torch.nn.Linear and lm_head.bias is None else None
    buf = None
    if w is not None and w.dtype == h.dtype == torch.float32:
        buf = torch.empty(min(token_chunk, h.size(0)), w.size(0), dtype=torch.float32, device=h.device)
    for start in range(0, h.size(0), token_chunk):
        part = h[start : start + token_chunk]
        z = lm_head(part).float() if buf is None else torch.mm(part, w.t(), out=buf[: part.size(0)])
        if temperature != 1.0:
            z.div_(temperature)
        z.sub_(z.amax(dim=-1, keepdim=True))
        centred_mean = z.mean(dim=-1)
        per_token[start : start + token_chunk] = z.exp_().sum(dim=-1).log_() - centred_mean
        del z  # free this chunk's logits before the next one is allocated
    total = torch.zeros(hidden.size(0), dtype=torch.float32, device=hidden.device).index_add_(0, rows, per_token)
    return total / mask.sum(dim=1).clamp(min=1)


@torch.no_grad()
def self_certainty_naive(
    hidden: torch.Tensor, lm_head: torch.nn.Module, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """`self_certainty` through the full (B, T, V) logits: the reference for tests and benchmarks."""
    z = lm_head(hidden).float() / temperature
    per_token = torch.logsumexp(z, dim=-1) - z.mean(dim=-1)
    mask = mask.float()
    return (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)




def make_self_certainty_reward(
    model, tokenizer, token_chunk: int = 128, temperature: float = 1.0
) -> Callable[..., list[float]]:
    """TRL reward function: the current policy's self-certainty on its own completions (Intuitor; no reward model).

    One extra no-grad forward of the policy's backbone on prompt + completion ids, laid out as TRL lays out its
    log-prob forward (left-padded prompts, right-padded completions, masked after the first EOS, no position ids).
    Logits at position t predict token t+1, so completion token j is scored from the hidden state at P + j - 1.
    Prompts must be plain text: they are re-tokenized exactly as TRL tokenizes them, `tokenizer(text=prompts)`.
    """
    eos_ids = eos_token_ids(model, tokenizer)

    def self_certainty_reward(prompts: list[str], completions: list, completion_ids: list[list[int]], **kwargs: Any):
        prompt_ids = tokenizer(text=prompts)["input_ids"]
        input_ids, attention_mask, completion_mask = pack(prompt_ids, completion_ids, tokenizer.pad_token_id, eos_ids)
        P, C = input_ids.size(1) - completion_mask.size(1), completion_mask.size(1)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # no dropout, and HF gradient checkpointing is off in eval mode
        try:
            with torch.no_grad():
                hidden = model.get_decoder()(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
                ).last_hidden_state
                scores = self_certainty(
                    hidden[:, P - 1 : P + C - 1],
                    model.get_output_embeddings(),
                    completion_mask.to(device),
                    token_chunk,
                    temperature,
                )
        finally:
            model.train(was_training)
        return scores.cpu().tolist()

    self_certainty_reward.__name__ = "self_certainty"
    return self_certainty_reward


# -----------------------------------------------------------------------------
# collapse curves


@torch.no_grad()
def completion_logprobs(model, packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], token_chunk: int = 256) -> torch.Tensor:
    """log p(token) of every completion position of a packed batch (sampling.pack), (B, C) float32 (0 at pads).

    Through the backbone's hidden states and the LM head in chunks of `token_chunk` positions, so the B x T x V
    logits never exist (as `self_certainty`).
    """
    input_ids, attention_mask, completion_mask = packed
    C = completion_mask.size(1)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    h = hidden[:, -C - 1 : -1]  # position t predicts token t + 1
    targets = input_ids[:, -C:]
    flat_h, flat_t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    out = torch.empty(flat_t.shape, dtype=torch.float32, device=input_ids.device)
    head = model.get_output_embeddings()
    for start in range(0, flat_t.numel(), token_chunk):
        z = head(flat_h[start : start + token_chunk]).float()
        out[start : start + token_chunk] = z.gather(1, flat_t[start : start + token_chunk, None])[:, 0] - torch.logsumexp(z, -1)
    return out.view_as(targets) * completion_mask


@dataclass
class CurveTools:
    """What a curve point needs besides the policy: the frozen base model (KL, response embeddings), the reward
    function, the tokenizer, the autocast settings of training."""

    base: Any
    tokenizer: Any
    reward_func: Callable[..., list[float]]
    embedder: Any
    autocast: dict


class CollapseCurves(TrainerCallback):
    """Every `eval.every` optimizer steps (and at step 0): sample completions of a fixed set of held-out prompts with
    the current policy (density_grpo.sampling, as the final evaluation samples) and record their reward, lexical
    diversity, length, KL to the base policy and the completions, and keep their embeddings (base model) for the
    diversity measured later in one shared space.

    KL(policy || base) per token is estimated on the policy's own samples: mean over completion tokens of
    log p_policy(y_t) - log p_base(y_t). Sampling uses the same seed at every point (common random numbers), so the
    step-0 point is identical for every run. With a TensorBoard `writer`, each point's figures go to it as
    `curves/<name>` scalars at its step.
    """

    def __init__(self, prompts: list[str], how: Sampling, every: int, seed: int, tools: CurveTools, writer: Any = None):
        self.prompts, self.how, self.every, self.seed, self.tools = prompts, how, every, seed, tools
        self.writer = writer
        self.rows: list[dict] = []
        self.embeddings: list[np.ndarray] = []  # (prompts, samples, dim) per point

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.measure(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(state.global_step, model)

    def measure(self, step: int, model) -> None:
        from density_grpo.stats import distinct_n

        t0, tools = time.perf_counter(), self.tools
        device = next(model.parameters()).device
        with torch.autocast(**tools.autocast):
            out = sample(model, tools.tokenizer, self.prompts, self.how, self.seed)
            repeated = [p for p in out.prompt_ids for _ in range(self.how.samples)]
            eos = eos_token_ids(model, tools.tokenizer)
            packed = tuple(t.to(device) for t in pack(repeated, out.ids, pad_token_id(tools.tokenizer), eos))
            was_training = model.training
            model.eval()
            try:
                lp = completion_logprobs(model, packed)
            finally:
                model.train(was_training)
            lb = completion_logprobs(tools.base, packed)
        mask = packed[2]
        kl = float(((lp - lb) * mask).sum() / mask.sum().clamp(min=1))
        texts = out.flat_texts()
        prompts = [p for p in self.prompts for _ in range(self.how.samples)]
        rewards = tools.reward_func(prompts=prompts, completions=texts, completion_ids=out.ids)
        self.embeddings.append(tools.embedder.embed(texts, progress=False).reshape(len(self.prompts), self.how.samples, -1))
        self.rows.append({
            "step": step,
            "reward_mean": float(np.mean(rewards)),
            "kl_to_base": kl,
            "length_tokens": float(mask.sum(1).float().mean()),
            "distinct_1_within": float(np.mean([distinct_n(g, 1) for g in out.texts])),
            "distinct_2_within": float(np.mean([distinct_n(g, 2) for g in out.texts])),
            "distinct_2_across": distinct_n(texts, 2),
            "wall_s": time.perf_counter() - t0,
            "completions": out.texts,
        })  # fmt: skip
        log.info("curve point at step %d: reward %.3f, KL to base %.4f", step, self.rows[-1]["reward_mean"], kl)
        if self.writer is not None:
            for key, value in self.rows[-1].items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"curves/{key}", value, step)
            self.writer.flush()


# -----------------------------------------------------------------------------
# training


class StepMetrics(TrainerCallback):
    """One row per optimizer step: TRL's logged metrics plus the step's wall time (generation + scoring + update)."""

    def __init__(self):
        self.rows: list[dict] = []
        self._start = self._step_start = time.perf_counter()
        self._step_s: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._step_s = time.perf_counter() - self._step_start

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:  # skips the end-of-training summary log
            row = {"step": state.global_step, **dict.fromkeys(METRIC_KEYS), **logs}
            row.update(step_wall_s=self._step_s, elapsed_s=time.perf_counter() - self._start)
            self.rows.append(row)


@dataclass(frozen=True)
class GRPOJob(Job):
    """The params of one grpo job, typed: the grpo section, the held-out pool and the curve settings (eval section),
    rm.max_length (rm reward only), and what the rules resolved.

    seed: the config seed (held-out split, curve sampling); policy_seed: this run's seed (the wildcard: model
    init, prompt sampler, TRL); device and dtype (inference: base model, reward model, curve embeddings);
    train_precision: the autocast precision of the fp32 policy.
    """

    grpo: GRPOConfig
    eval: EvalConfig
    rm: RMConfig | None
    seed: int
    policy_seed: int
    device: str
    dtype: str
    train_precision: str

    @property
    def curve_sampling(self) -> Sampling:
        """Curve points sample as GRPO does: grpo.max_completion_length tokens at grpo.temperature."""
        return Sampling(self.eval.curve_samples, self.grpo.max_completion_length, self.grpo.temperature)

    def trl_args(self, output_dir: str, device: torch.device) -> trl.GRPOConfig:
        """trl.GRPOConfig: each optimizer step = one generation of prompts_per_step x num_generations completions
        (shared out between grpo.processes processes), trained on in micro-batches of at most grpo.micro_batch
        sequences per process (gradient accumulation)."""
        from density_grpo.training import trainer_args

        g = self.grpo
        return trainer_args(
            trl.GRPOConfig, output_dir, device, self.train_precision, self.policy_seed, g.gradient_checkpointing,
            max_steps=g.steps, per_device_train_batch_size=g.process_micro_batch,
            gradient_accumulation_steps=g.accumulation, steps_per_generation=g.accumulation, num_generations=g.num_generations,
            max_completion_length=g.max_completion_length, temperature=g.temperature, learning_rate=g.learning_rate,
            beta=g.beta, epsilon=g.epsilon, loss_type=g.loss_type, use_vllm=False,
        )  # fmt: skip


def predict(params: Mapping[str, Any], work: memory.Workload) -> dict:
    """Peak memory of one GRPO step (work.lengths: the training prompts' tokens): fp32 policy weights + grads +
    AdamW, the larger of training activations + logits and the generation KV cache, the frozen base model (KL and
    embeddings of the collapse curves), plus the reward model (rm) or the chunked self-certainty logits.

    Per process when grpo.processes > 1 (data parallel): every rank holds the full weights, grads and AdamW state;
    activations follow the per-process micro-batch, generation and scoring the process's share of the batch."""
    return _predict(GRPOJob.from_params(params), work)


def _predict(job: GRPOJob, work: memory.Workload) -> dict:
    g, model_cfg, device = job.grpo, work.model, job.device
    infer, act = memory.precision_key(job.dtype), memory.precision_key(job.train_precision)
    B, C = g.batch // g.processes, g.max_completion_length  # generated together on each process
    S = max(work.lengths) + C
    n_params, V = memory.param_count(model_cfg), memory.dims(model_cfg)["V"]
    how = memory.Training(checkpointing=g.gradient_checkpointing, logit_positions=C, activations=act)
    tc = memory.training_components(model_cfg, g.process_micro_batch, S, how)
    gen = memory.kv_cache_bytes(model_cfg, B, S, act) + B * V * 4
    c = {**memory.baseline("trl", device), **memory.texts(work, device)}
    c.update({k: tc[k] for k in ("weights", "grads", "optimizer")})
    c["max(train activations + logits, generation KV cache)"] = max(tc["activations"] + tc["logits"], gen)
    c["base model (curves)"] = memory.weights_bytes(n_params, infer)
    if g.beta > 0:
        c["reference"] = memory.weights_bytes(n_params, infer)
    if g.reward == "rm":
        rm_acts = memory.inference_activation_bytes(model_cfg, min(B, RM_BATCH), S, infer)
        c["reward_model"] = memory.weights_bytes(n_params, infer) + rm_acts
    else:
        c["self_certainty_logits"] = memory.grpo_logits_bytes(B, C, V, g.token_chunk)
    return memory.prediction(
        device, c, "baseline + fp32 weights + grads + AdamW + max(train activations + logits, KV cache) + base model + reward model or chunked self-certainty",
        "grpo.prompts_per_step (or grpo.num_generations, grpo.max_completion_length, grpo.gradient_checkpointing)",
        batch=g.batch, micro_batch=g.process_micro_batch, seq=S, completion=C, processes=g.processes,
    )  # fmt: skip


def summarize(rows: list[dict], counts: np.ndarray, job: GRPOJob, wall_s: float) -> dict[str, Any]:
    """The run's figures the report shows (reward first/final/mean, seconds per step, prompts drawn)."""
    rewards = [r["reward"] for r in rows if r["reward"] is not None]
    step_s = [r["step_wall_s"] for r in rows if r["step_wall_s"] is not None]
    return {
        "reward": job.grpo.reward,
        "seed": job.policy_seed,
        "steps": len(rows),
        "wall_s": wall_s,
        "first_reward": rewards[0] if rewards else None,
        "final_reward": rewards[-1] if rewards else None,
        "mean_reward": float(np.mean(rewards)) if rewards else None,
        "step_s_mean": float(np.mean(step_s)) if step_s else None,
        "n_prompts": len(counts),
        "n_draws": int(counts.sum()),
        "unique_prompts_drawn": int((counts > 0).sum()),
    }


def train_grpo(
    job: GRPOJob, model_dir: str, prompts: pd.DataFrame, weights: np.ndarray, rm_dir: str | None, curve_prompts: list[str],
    writer: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Train one GRPO policy from `model_dir` on `prompts` (prompt_id, text; held-out ones removed) drawn by `weights`
    (aligned with its rows; uniform for the uniform arm), with collapse curves on `curve_prompts` (none: no curves).
    A TensorBoard `writer` (density_grpo.training.tensorboard) gets TRL's logged metrics and the curve points.

    The policy trains in fp32 master weights (autocast in train_precision); the base model, the reward model and
    the curves' embeddings run in `dtype`. Returns the trained model and tokenizer, summary, step rows, draws,
    curve rows and curve embeddings.
    """
    from datasets import Dataset
    from transformers import set_seed

    from density_grpo.device import torch_device, torch_dtype
    from density_grpo.embed import response_embedder
    from density_grpo.models import load_causal_lm
    from density_grpo.monitor import expect
    from density_grpo.training import quiet_console, tensorboard_callbacks

    g = job.grpo
    if len(prompts) == 0:
        raise UserError("no training prompts for GRPO")
    t0 = time.perf_counter()
    device = torch_device(local_device(job.device))
    dtype = torch_dtype(job.dtype, device)
    set_seed(job.policy_seed)
    model, tokenizer = load_causal_lm(model_dir, torch.float32, device)  # fp32 master weights
    set_pad_token(tokenizer, model)
    text_bytes = int(prompts["text"].str.len().sum()) + sum(map(len, curve_prompts))
    texts, n_cut = keep_last_tokens(tokenizer, prompts["text"].astype(str).tolist(), g.max_prompt_length)
    curve_prompts = keep_last_tokens(tokenizer, curve_prompts, g.max_prompt_length)[0]
    if n_cut:
        log.info("%d of %d training prompts keep their last grpo.max_prompt_length=%d tokens", n_cut, len(texts), g.max_prompt_length)
    lengths = tuple(len(x) for x in tokenizer(texts)["input_ids"])
    expect(_predict(job, memory.Workload(memory.model_config(model_dir), lengths, text_bytes=text_bytes)))
    if g.reward == "rm":
        reward_func = make_rm_reward(rm_dir, device, dtype, job.rm.max_length)
    else:
        reward_func = make_self_certainty_reward(model, tokenizer, g.token_chunk, g.temperature)

    metrics = StepMetrics()
    callbacks: list[TrainerCallback] = [metrics, *tensorboard_callbacks(writer)]
    curves = None
    if curve_prompts and is_main():  # rank 0 alone measures and writes the curves
        base, base_tok = load_causal_lm(model_dir, dtype, device)
        base.requires_grad_(False)
        tp = job.train_precision
        autocast = {"device_type": device.type, "dtype": torch.float16 if tp == "fp16" else torch.bfloat16, "enabled": tp != "fp32"}
        tools = CurveTools(base, tokenizer, reward_func, response_embedder(base, base_tok, g.max_completion_length), autocast)
        curves = CollapseCurves(curve_prompts, job.curve_sampling, job.eval.every, job.seed, tools, writer)
        callbacks.append(curves)
    with tempfile.TemporaryDirectory() as trainer_dir:  # the Trainer's own output_dir: nothing kept from it
        trainer = WeightedGRPOTrainer(
            model=model,
            reward_funcs=reward_func,
            args=job.trl_args(trainer_dir, device),
            train_dataset=Dataset.from_dict({"prompt": texts}),
            processing_class=tokenizer,
            callbacks=callbacks,
            prompt_weights=weights,
            keyed_sampling=g.keyed_sampling,
        )
        quiet_console(trainer, ("reward", "kl"), log)
        trainer.train()
    counts = trainer.draw_counts
    ids = prompts["prompt_id"].astype(str).to_numpy()
    for row, rows_drawn in zip(metrics.rows, trainer.step_draws()):
        row["prompt_ids"] = ids[rows_drawn].tolist()
    summary = summarize(metrics.rows, counts, job, time.perf_counter() - t0) | {"n_prompts_cut": n_cut}
    log.info("GRPO (%s reward, seed %d): %d steps in %.1fs, final reward %s", g.reward, job.policy_seed, summary["steps"], summary["wall_s"], summary["final_reward"])
    return {
        "model": trainer.accelerator.unwrap_model(trainer.model),
        "tokenizer": tokenizer,
        "summary": summary,
        "rows": metrics.rows,
        "draws": pd.DataFrame({"prompt_id": prompts["prompt_id"].astype(str).to_numpy(), "draws": counts}),
        "curves": curves.rows if curves else [],
        "curve_embeddings": np.stack(curves.embeddings) if curves else np.zeros((0, 0, 0, 0), np.float32),
    }


def training_weights(prompts: pd.DataFrame, weights_path: str | None) -> np.ndarray:
    """The density arm's weight of every training prompt, renormalised over them (held-out prompts removed);
    uniform for the uniform arm (no weights file)."""
    if weights_path is None:
        return np.full(len(prompts), 1.0 / len(prompts))
    from density_grpo.density import read_weights

    w = read_weights(weights_path, prompts["prompt_id"])
    weights = w.loc[prompts["prompt_id"]].to_numpy(dtype="float64")
    return weights / weights.sum()


def run(input: dict, output: dict, params: dict) -> dict:
    """Rule grpo: one policy per arm and seed; the density arm draws training prompts by weight, uniform uniformly.

    The held-out pool (eval.pool prompts, by a seeded hash, independent of the weights) is never trained on; the
    collapse curves sample its first eval.curve_prompts prompts. With `output["tensorboard"]` (a folder, the rule's
    named log with training.report_to: tensorboard), rank 0 writes TensorBoard events there while it trains.
    """
    from density_grpo.io import write_json, write_jsonl, write_parquet
    from density_grpo.pairs import holdout_split
    from density_grpo.training import tensorboard

    job = GRPOJob.from_params(params)
    if must_launch(job.grpo.processes):  # the job's own process: the step runs again on N processes
        launch(run, (input, output), params, job.grpo.processes, "grpo.processes")
        return _figures(json.loads(Path(output["summary"]).read_text()))
    prompts, pool = holdout_split(pd.read_parquet(input["prompts"]), job.eval.pool, job.seed)
    curve = pool.head(job.eval.curve_prompts)
    weights = training_weights(prompts, input.get("weights"))
    with tensorboard(output.get("tensorboard")) as writer:  # removed again if anything below fails
        out = train_grpo(job, input["model"], prompts, weights, input.get("rm"), curve["text"].tolist(), writer)
        if not is_main():  # rank 0 writes every output; the other ranks leave nothing behind
            return {}
        with atomic_path(output["model"]) as tmp:
            tmp.mkdir()
            out["model"].save_pretrained(tmp, safe_serialization=True)
            out["tokenizer"].save_pretrained(tmp)
        write_jsonl(out["rows"], output["metrics"])
        write_jsonl(out["curves"], output["curves"])
        with atomic_path(output["curve_embeddings"]) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=out["curve_embeddings"], steps=np.array([r["step"] for r in out["curves"]]),
                         prompt_ids=curve["prompt_id"].to_numpy(dtype=str))  # fmt: skip
        write_parquet(out["draws"], output["draws"])
        write_json(out["summary"], output["summary"])
    return _figures(out["summary"])


def _figures(summary: Mapping[str, Any]) -> dict:
    """The summary's plain figures, kept in the job's memory record."""
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}

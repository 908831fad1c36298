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

import json
import logging
import math
import tempfile
import time
from typing import Any, Callable, Sized

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from density_grpo import memory
from density_grpo.errors import UserError
from density_grpo.io import atomic_path
from density_grpo.models import eos_token_ids, set_pad_token

log = logging.getLogger(__name__)

REWARDS = ("rm", "self_certainty")
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

    `num_samples` defaults to len(data_source) (one "epoch" = as many draws as prompts); GRPO training sets it to
    exactly the draws its steps consume. `counts[i]` counts the draws of index i actually yielded (once per draw,
    not per repeat); `draws` holds the last iteration's full draw.
    """

    def __init__(
        self,
        data_source: Sized,
        weights: np.ndarray,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        num_samples: int | None = None,
        seed: int | None = None,
    ):
        n = len(data_source)
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights has shape {w.shape}, expected ({n},) (one weight per dataset row)")
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        self.data_source = data_source
        self.p = w / w.sum()
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.num_samples = n if num_samples is None else int(num_samples)
        self.rng = np.random.default_rng(seed)
        self.counts = np.zeros(n, dtype=np.int64)
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

    def __len__(self) -> int:
        return (self.num_samples // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count


# -----------------------------------------------------------------------------
# trainer


class WeightedGRPOTrainer(GRPOTrainer):
    """trl.GRPOTrainer whose train sampler draws the prompts by `prompt_weights` (aligned with train_dataset rows).

    None means uniform. `draw_counts` (after training): how many times each row was drawn as a group's prompt.
    """

    def __init__(self, *args, prompt_weights: np.ndarray | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.train_dataset)
        self.prompt_weights = np.full(n, 1.0 / n) if prompt_weights is None else np.asarray(prompt_weights, float)
        if self.prompt_weights.shape != (n,):
            raise ValueError(f"prompt_weights has shape {self.prompt_weights.shape}, expected ({n},)")
        self.train_sampler: WeightedRepeatSampler | None = None

    def _get_train_sampler(self, dataset=None) -> Sampler:
        # the arguments of GRPOTrainer._get_train_sampler (see its comment for the layout), plus weights
        dataset = self.train_dataset if dataset is None else dataset
        batch_size = self.args.generation_batch_size // self.num_generations
        repeat_count = self.num_iterations * self.args.steps_per_generation
        num_samples = None
        if self.args.max_steps > 0:  # exactly the draws max_steps consume: every counted draw is trained on
            micro_steps = self.args.max_steps * self.args.gradient_accumulation_steps
            num_samples = math.ceil(micro_steps / repeat_count) * batch_size
        self.train_sampler = WeightedRepeatSampler(
            data_source=dataset,
            weights=self.prompt_weights,
            mini_repeat_count=self.num_generations,
            batch_size=batch_size,
            repeat_count=repeat_count,
            num_samples=num_samples,
            seed=self.args.seed,
        )
        return self.train_sampler

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




def pack_prompt_completion(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, eos_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's layout: left-padded prompts (width P) + right-padded completions (width C), each cut after its first EOS.

    Returns input_ids (B, P+C), attention_mask (B, P+C) and completion_mask (B, C).
    """
    eos = set(eos_ids)
    cut = [next((k + 1 for k, t in enumerate(c) if t in eos), len(c)) for c in completion_ids]
    completion_ids = [list(c[:n]) for c, n in zip(completion_ids, cut)]
    P, C = max(map(len, prompt_ids)), max(map(len, completion_ids))
    input_ids = torch.full((len(prompt_ids), P + C), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[i, P - len(p) : P + len(c)] = torch.tensor(list(p) + c, dtype=torch.long)
        attention_mask[i, P - len(p) : P + len(c)] = 1
    return input_ids, attention_mask, attention_mask[:, P:]


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
        input_ids, attention_mask, completion_mask = pack_prompt_completion(
            prompt_ids, completion_ids, tokenizer.pad_token_id, eos_ids
        )
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
def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int, token_chunk: int = 256) -> torch.Tensor:
    """log p(token) of the last `n_completion` positions of each row, (B, n_completion) float32.

    Through the backbone's hidden states and the LM head in chunks of `token_chunk` positions, so the B x T x V
    logits never exist (as `self_certainty`).
    """
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    h = hidden[:, -n_completion - 1 : -1]  # position t predicts token t + 1
    targets = input_ids[:, -n_completion:]
    flat_h, flat_t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    out = torch.empty(flat_t.shape, dtype=torch.float32, device=input_ids.device)
    head = model.get_output_embeddings()
    for start in range(0, flat_t.numel(), token_chunk):
        z = head(flat_h[start : start + token_chunk]).float()
        out[start : start + token_chunk] = z.gather(1, flat_t[start : start + token_chunk, None])[:, 0] - torch.logsumexp(z, -1)
    return out.view_as(targets)


class CollapseCurves(TrainerCallback):
    """Every `every` optimizer steps (and at step 0): sample completions of a fixed set of held-out prompts with the
    current policy and record their reward, lexical diversity, length and KL to the base policy, and keep their
    embeddings (base model, mean-pooled last hidden state) for the diversity measured later in one shared space.

    KL(policy || base) per token is estimated on the policy's own samples: mean over completion tokens of
    log p_policy(y_t) - log p_base(y_t). Sampling uses the same seed at every point (common random numbers), so the
    step-0 point is identical for every run.
    """

    def __init__(
        self, prompts: list[str], tokenizer, base, reward_func, embedder, every: int, samples: int,
        max_new_tokens: int, temperature: float, seed: int, autocast: dict,
    ):  # fmt: skip
        self.prompts, self.tok, self.base, self.reward_func, self.embedder = prompts, tokenizer, base, reward_func, embedder
        self.every, self.samples, self.max_new_tokens, self.temperature = every, samples, max_new_tokens, temperature
        self.seed, self.autocast = seed, autocast
        self.rows: list[dict] = []
        self.embeddings: list[np.ndarray] = []  # (prompts, samples, dim) per point

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.measure(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(state.global_step, model)

    def measure(self, step: int, model) -> None:
        from density_grpo.evaluate import cut_at, distinct_n
        from density_grpo.pairs import HUMAN_TAG

        t0 = time.perf_counter()
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        side, self.tok.padding_side = self.tok.padding_side, "left"
        try:
            enc = self.tok(self.prompts, return_tensors="pt", padding=True).to(device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.autocast(**self.autocast):
                torch.manual_seed(self.seed)
                seqs = model.generate(
                    **enc, do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
                    max_new_tokens=self.max_new_tokens, num_return_sequences=self.samples,
                    pad_token_id=self.tok.pad_token_id, eos_token_id=eos_token_ids(model, self.tok),
                )  # fmt: skip
                attention = enc["attention_mask"].repeat_interleave(self.samples, 0)
                completion = seqs[:, enc["input_ids"].shape[1] :]
                done = torch.zeros(len(completion), dtype=torch.bool, device=device)
                keep = torch.ones_like(completion, dtype=torch.bool)
                for j in range(completion.shape[1]):  # tokens up to and including the first EOS
                    keep[:, j] = ~done
                    done |= torch.isin(completion[:, j], torch.tensor(eos_token_ids(model, self.tok), device=device))
                mask = torch.cat([attention, keep.long()], 1)
                lp = completion_logprobs(model, seqs, mask, completion.shape[1])
                lb = completion_logprobs(self.base, seqs, mask, completion.shape[1])
            kl = float(((lp - lb) * keep).sum() / keep.sum().clamp(min=1))
        finally:
            self.tok.padding_side = side
            model.train(was_training)
        texts = [cut_at(t, HUMAN_TAG) for t in self.tok.batch_decode(completion, skip_special_tokens=True)]
        prompts = [p for p in self.prompts for _ in range(self.samples)]
        rewards = self.reward_func(prompts=prompts, completions=texts, completion_ids=completion.tolist())
        groups = [texts[i : i + self.samples] for i in range(0, len(texts), self.samples)]
        self.embeddings.append(self.embedder.embed(texts, progress=False).reshape(len(groups), self.samples, -1))
        self.rows.append({
            "step": step,
            "reward_mean": float(np.mean(rewards)),
            "kl_to_base": kl,
            "length_tokens": float(keep.sum(1).float().mean()),
            "distinct_1_within": float(np.mean([distinct_n(g, 1) for g in groups])),
            "distinct_2_within": float(np.mean([distinct_n(g, 2) for g in groups])),
            "distinct_2_across": distinct_n(texts, 2),
            "wall_s": time.perf_counter() - t0,
        })  # fmt: skip
        log.info("curve point at step %d: reward %.3f, KL to base %.4f", step, self.rows[-1]["reward_mean"], kl)


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


def grpo_config(params: dict, output_dir: str, device: torch.device) -> GRPOConfig:
    """trl.GRPOConfig from the `grpo` params: each optimizer step = prompts_per_step prompts x num_generations."""
    from density_grpo.training import trainer_args

    g = params["grpo"]
    accumulate = g["prompts_per_step"] * g["num_generations"] // g["micro_batch"]
    return trainer_args(
        GRPOConfig, output_dir, device, params["train_precision"], params["seed"], g["gradient_checkpointing"],
        max_steps=g["steps"],
        # one generation of prompts_per_step x num_generations completions per optimizer step, trained on in
        # micro-batches of grpo.micro_batch sequences (gradient accumulation)
        per_device_train_batch_size=g["micro_batch"],
        gradient_accumulation_steps=accumulate,
        steps_per_generation=accumulate,
        num_generations=g["num_generations"],
        max_completion_length=g["max_completion_length"],
        temperature=g["temperature"],
        learning_rate=g["learning_rate"],
        beta=g["beta"],
        epsilon=g["epsilon"],
        loss_type=g["loss_type"],
        use_vllm=False,
    )  # fmt: skip


def predict(model_cfg: dict, params: dict, prompt_tokens: int, device: str) -> dict:
    """Peak memory of one GRPO step: fp32 policy weights + grads + AdamW, the larger of training activations + logits
    and the generation KV cache, the frozen base model (KL and embeddings of the collapse curves), plus the reward
    model (rm) or the chunked self-certainty logits."""
    g = params["grpo"]
    infer = memory.precision_key(params["dtype"])
    act = memory.precision_key(params["train_precision"])
    B = g["prompts_per_step"] * g["num_generations"]  # generated together
    C = g["max_completion_length"]
    S = prompt_tokens + C
    n_params = memory.param_count(model_cfg)
    V = memory.dims(model_cfg)["V"]
    tc = memory.training_components(model_cfg, g["micro_batch"], S, "fp32", "adamw", g["gradient_checkpointing"], C, act)
    gen = memory.kv_cache_bytes(model_cfg, B, S, act) + B * V * 4
    train = tc["activations"] + tc["logits"]
    c = {**memory.baseline("trl", device), **{k: tc[k] for k in ("weights", "grads", "optimizer")}}
    c["max(train activations + logits, generation KV cache)"] = max(train, gen)
    c["base model (curves)"] = memory.weights_bytes(n_params, infer)
    if g["beta"] > 0:
        c["reference"] = memory.weights_bytes(n_params, infer)
    if g["reward"] == "rm":
        c["reward_model"] = memory.weights_bytes(n_params, infer) + memory.inference_activation_bytes(model_cfg, min(B, RM_BATCH), S, infer)
    else:
        c["self_certainty_logits"] = memory.grpo_logits_bytes(B, C, V, g["token_chunk"])
    return memory.prediction(
        device, c, "baseline + fp32 weights + grads + AdamW + max(train activations + logits, KV cache) + base model + reward model or chunked self-certainty",
        "grpo.prompts_per_step (or grpo.num_generations, grpo.max_completion_length, grpo.gradient_checkpointing)",
        batch=B, micro_batch=g["micro_batch"], seq=S, completion=C,
    )  # fmt: skip


def train_grpo(
    model_dir: str, prompts: pd.DataFrame, weights: np.ndarray | None, params: dict, out_model: str,
    rm_dir: str | None = None, curve_prompts: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train one GRPO policy from `model_dir`, save it to `out_model` atomically.

    prompts: the training prompts (prompt_id, text; held-out prompts already removed). weights: aligned with
    `prompts` rows (density arm), or None for the uniform arm. params: the grpo rule's params (grpo, seed,
    train_precision, device, dtype, eval (pool, every, curve_prompts, curve_samples), split_seed, rm.max_length for
    the rm reward). curve_prompts: the held-out prompts of the collapse curves (None: no curves). The policy
    trains in fp32 master weights (autocast in train_precision); the base model, the reward model and the curves'
    embeddings run in `dtype`. Returns summary, step rows, draws (prompt_id, draws), curve rows and curve embeddings.
    """
    from datasets import Dataset
    from transformers import set_seed

    from density_grpo.device import torch_device, torch_dtype
    from density_grpo.embed import Embedder
    from density_grpo.models import load_causal_lm
    from density_grpo.monitor import expect

    g = params["grpo"]
    reward = g["reward"]
    if reward == "rm" and not rm_dir:
        raise UserError("config key grpo.reward: 'rm' needs a trained reward model (no rm_dir); use self_certainty")
    if len(prompts) == 0:
        raise UserError("no training prompts for GRPO")
    n = len(prompts)
    weights = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (n,):
        raise ValueError(f"weights has shape {weights.shape}, expected ({n},) (one per prompt)")

    t0 = time.perf_counter()
    device = torch_device(params["device"])
    dtype = torch_dtype(params["dtype"], device)
    set_seed(params["seed"])
    model, tokenizer = load_causal_lm(model_dir, torch.float32, device)  # fp32 master weights
    set_pad_token(tokenizer, model)
    longest = max(len(x) for x in tokenizer(prompts["text"].astype(str).tolist())["input_ids"])
    expect(predict(memory.model_config(model_dir), params, longest, params["device"]))
    if reward == "rm":
        reward_func = make_rm_reward(rm_dir, device, dtype, params["rm"]["max_length"])
    else:
        reward_func = make_self_certainty_reward(model, tokenizer, g["token_chunk"], g["temperature"])

    metrics = StepMetrics()
    callbacks: list[TrainerCallback] = [metrics]
    curves = None
    if curve_prompts:
        base, base_tok = load_causal_lm(model_dir, dtype, device)
        base.requires_grad_(False)
        e, C = params["eval"], g["max_completion_length"]
        embedder = Embedder(base, base_tok, source="hidden", layer=-1, max_length=4 * C, batch_tokens=4096)
        tp = params["train_precision"]
        autocast = {"device_type": device.type, "dtype": torch.float16 if tp == "fp16" else torch.bfloat16, "enabled": tp != "fp32"}
        curves = CollapseCurves(
            curve_prompts, tokenizer, base, reward_func, embedder, e["every"], e["curve_samples"], C, g["temperature"],
            params["split_seed"], autocast,
        )  # fmt: skip
        callbacks.append(curves)
    with tempfile.TemporaryDirectory() as trainer_dir:  # the Trainer's own output_dir: nothing kept from it
        trainer = WeightedGRPOTrainer(
            model=model,
            reward_funcs=reward_func,
            args=grpo_config(params, trainer_dir, device),
            train_dataset=Dataset.from_dict({"prompt": prompts["text"].astype(str).tolist()}),
            processing_class=tokenizer,
            callbacks=callbacks,
            prompt_weights=weights,
        )
        trainer.train()
    wall_s = time.perf_counter() - t0

    counts = trainer.draw_counts
    draws = pd.DataFrame({"prompt_id": prompts["prompt_id"].astype(str).to_numpy(), "draws": counts})
    with atomic_path(out_model) as tmp:
        tmp.mkdir()
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    rewards = [r["reward"] for r in metrics.rows if r["reward"] is not None]
    summary = {
        "reward": reward,
        "seed": params["seed"],
        "steps": len(metrics.rows),
        "wall_s": wall_s,
        "final_reward": rewards[-1] if rewards else None,
        "mean_reward": float(np.mean(rewards)) if rewards else None,
        "n_prompts": n,
        "n_draws": int(counts.sum()),
        "unique_prompts_drawn": int((counts > 0).sum()),
    }
    log.info("GRPO (%s reward, seed %d): %d steps in %.1fs, final reward %s", reward, params["seed"], summary["steps"], wall_s, summary["final_reward"])
    return {
        "summary": summary,
        "rows": metrics.rows,
        "draws": draws,
        "curves": curves.rows if curves else [],
        "curve_embeddings": np.stack(curves.embeddings) if curves else np.zeros((0, 0, 0, 0), np.float32),
    }


def run(input: dict, output: dict, params: dict) -> dict:
    """Rule grpo: one policy per arm and seed; the density arm draws training prompts by weight, uniform uniformly.

    The held-out pool (eval.pool prompts, by a seeded hash, independent of the weights) is never trained on; the
    collapse curves sample its first eval.curve_prompts prompts.
    """
    from density_grpo.io import write_parquet
    from density_grpo.pairs import holdout_split

    prompts, pool = holdout_split(pd.read_parquet(input["prompts"]), params["eval"]["pool"], params["split_seed"])
    weights = None
    if "weights" in input:
        w = pd.read_parquet(input["weights"]).set_index("prompt_id")["weight"]
        missing = ~prompts["prompt_id"].isin(w.index)
        if missing.any():
            raise UserError(f"{input['weights']}: no weight for {int(missing.sum())} prompts (rerun the weights rule)")
        weights = w.loc[prompts["prompt_id"]].to_numpy(dtype="float64")
        weights = weights / weights.sum()  # renormalised over the training prompts (held-out ones removed)
    curve = pool.head(params["eval"]["curve_prompts"])
    out = train_grpo(input["model"], prompts, weights, params, output["model"], input.get("rm"), curve["text"].tolist())
    with atomic_path(output["metrics"]) as tmp:
        tmp.write_text("".join(json.dumps(row, default=float) + "\n" for row in out["rows"]))
    with atomic_path(output["curves"]) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in out["curves"]))
    with atomic_path(output["curve_embeddings"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=out["curve_embeddings"], steps=np.array([r["step"] for r in out["curves"]]),
                     prompt_ids=curve["prompt_id"].to_numpy(dtype=str))  # fmt: skip
    write_parquet(out["draws"], output["draws"])
    return {k: v for k, v in out["summary"].items() if isinstance(v, (int, float, str))}

"""Stage 6a, reward model: Bradley-Terry on the preference pairs with TRL's RewardTrainer, and no-grad scoring.

The RM is the base causal LM with a scalar head (AutoModelForSequenceClassification, num_labels=1). It reads the
score at the last non-pad token, which (as in TRL's preprocessing) is an EOS appended to prompt + response.

Pad token: SmolLM2 ships pad == eos == "<|im_end|>". The sequence-classification head takes the rightmost token
that is not pad, so with pad == eos the appended EOS would be skipped and every sample scored one token early.
`set_pad_token` picks a pad distinct from eos: the tokenizer's unk token when it has one (SmolLM2:
"<|endoftext|>", already in the vocabulary, never in HH text, so no embedding resize), else a new "<|pad|>" token
(embeddings resized). Pads sit right of every real token, so under causal attention their embedding never matters.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from density_grpo import memory
from density_grpo.config import RMConfig
from density_grpo.distributed import is_main, launch, local_device, must_launch
from density_grpo.errors import UserError
from density_grpo.io import atomic_path, write_json
from density_grpo.models import decoder_layers, load_causal_lm, set_pad_token, tail_chars

log = logging.getLogger(__name__)



def freeze_lower_layers(model, train_layers: int | None) -> None:
    """Train only the top `train_layers` decoder blocks, the final norm and the score head (None: everything).

    On CPU the backward pass dominates a step; stopping it after a few blocks makes a step ~2x cheaper.
    """
    if train_layers is None:
        return
    backbone = model.base_model
    blocks = decoder_layers(model)
    if not 1 <= train_layers <= len(blocks):
        raise UserError(f"config key rm.train_layers: must be 1..{len(blocks)} or null, got {train_layers!r}")
    backbone.requires_grad_(False)
    for block in blocks[len(blocks) - train_layers :]:
        block.requires_grad_(True)
    if getattr(backbone, "norm", None) is not None:
        backbone.norm.requires_grad_(True)


def split_by_prompt(pairs: pd.DataFrame, eval_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(train, held_out, n_dropped): whole prompts are held out (a seeded hash of the prompt id picks them), and a
    held-out pair whose chosen or rejected response also occurs in the training pairs is dropped (counted), so the
    held-out accuracy measures generalisation, not recall of a response seen in training."""
    from density_grpo.pairs import holdout_split, unique_prompts

    prompts = unique_prompts(pairs)
    n_eval = math.ceil(eval_fraction * len(prompts))  # fewer than all: config.check_prompt_counts
    _, held_prompts = holdout_split(prompts, n_eval, seed)
    mask = pairs["prompt"].isin(set(held_prompts["text"]))
    train, held = pairs[~mask], without_ties(pairs[mask])
    seen = set(train["chosen"].str.strip()) | set(train["rejected"].str.strip())
    overlap = held["chosen"].str.strip().isin(seen) | held["rejected"].str.strip().isin(seen)
    return train.reset_index(drop=True), held[~overlap].reset_index(drop=True), int(overlap.sum())


@torch.no_grad()
def score(
    model, tokenizer, prompts: list[str], responses: list[str], max_length: int, batch_size: int = 8
) -> np.ndarray:
    """Rewards r(prompt, response) -> float32 (n,), exactly as the RM was trained: prompt + response + EOS.

    Texts longer than `max_length` tokens keep their last `max_length` tokens (the response end and the EOS the
    score is read at); TRL drops such pairs from training instead. Only a text's tail is tokenized
    (models.tail_chars: the same last tokens), so memory is bounded by max_length, not by the text.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    eos = tokenizer.eos_token
    texts = [p + r if (p + r).endswith(eos) else p + r + eos for p, r in zip(prompts, responses)]
    window = tail_chars(tokenizer, max_length)
    ids = [x[-max_length:] for x in tokenizer([t[-window:] for t in texts])["input_ids"]]
    device = next(model.parameters()).device
    pad_id = model.config.get_text_config().pad_token_id
    was_training = model.training
    model.eval()
    out = np.empty(len(ids), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        longest = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            attention_mask[row, : len(ids[i])] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False).logits
        out[batch] = logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return out


def make_reward_func(model, tokenizer, max_length: int, batch_size: int = 8) -> Callable[..., list[float]]:
    """A TRL reward function (prompts, completions, **kwargs) -> rewards, scoring like training (EOS appended).

    Prefer it over passing the RM model to GRPOTrainer, which scores prompt + completion without the EOS.
    """

    def rm_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return score(model, tokenizer, prompts, completions, max_length, batch_size).tolist()

    return rm_reward


def load_reward_model(rm_dir: str, device=None, dtype=None):
    """(model, tokenizer) of a saved reward model folder, in eval mode on `device`."""
    from transformers import AutoModelForSequenceClassification

    model, tokenizer = load_causal_lm(rm_dir, dtype, device, auto_class=AutoModelForSequenceClassification)
    if model.config.get_text_config().pad_token_id != tokenizer.pad_token_id:
        raise UserError(f"{rm_dir}: config pad_token_id differs from the tokenizer's pad token")
    return model, tokenizer


def surely_short(pairs: pd.DataFrame, window: int) -> pd.DataFrame:
    """The pairs TRL may keep: a text longer than `window` characters (models.tail_chars) has more than max_length
    tokens, and TRL would tokenize it whole only to drop it (a 20 MB pair: gigabytes)."""
    n = pairs["prompt"].str.len() + np.maximum(pairs["chosen"].str.len(), pairs["rejected"].str.len())
    return pairs[n <= window]


def _preference_dataset(pairs: pd.DataFrame):
    """TRL explicit-prompt preference format: prompt, chosen, rejected (responses without the prompt)."""
    from datasets import Dataset

    return Dataset.from_dict({k: pairs[k].astype(str).tolist() for k in ("prompt", "chosen", "rejected")})


def predict(params: Mapping[str, Any], work: memory.Workload) -> dict:
    """Peak memory of one RM training step per process (work.lengths: the tokenized chosen and rejected sequences):
    batch = 2 x rm.batch_size / rm.processes of the longest, fp32 weights, grads and AdamW of the trained blocks
    (rm.train_layers: every data-parallel rank holds them whole), activations in the autocast precision."""
    rm, device = RMConfig.from_params(params["rm"]), params["device"]
    batch = 2 * rm.batch_size // rm.processes
    act = memory.precision_key(params["train_precision"])
    seq = max(work.lengths)
    how = memory.Training(checkpointing=rm.gradient_checkpointing, logit_positions=0, activations=act, train_layers=rm.train_layers)
    c = memory.training_components(work.model, batch, seq, how)
    return memory.prediction(
        device, {**memory.baseline("trl", device), **memory.texts(work, device), **c},
        "baseline + fp32 weights + grads + AdamW (trained blocks) + activations (batch = 2 x rm.batch_size / rm.processes)",
        "rm.batch_size / rm.max_length (or rm.gradient_checkpointing: true)", batch=batch, seq=seq,
        processes=rm.processes,
    )  # fmt: skip


def train_reward_model(model_dir: str, pairs: pd.DataFrame, params: Mapping[str, Any], writer: Any = None) -> dict:
    """Train a Bradley-Terry RM from the base model on `pairs`; returns the model, tokenizer, metrics and step rows.

    params: the rule's (rm, seed, device, train_precision); a TensorBoard `writer` (density_grpo.training.tensorboard)
    gets TRL's logged metrics as they come.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from density_grpo.device import torch_device
    from density_grpo.monitor import expect
    from density_grpo.training import quiet_console, tensorboard_callbacks, trainer_args

    t0 = time.perf_counter()
    rm, seed = RMConfig.from_params(params["rm"]), params["seed"]
    device = torch_device(local_device(params["device"]))
    train, held, n_overlap = split_by_prompt(pairs, rm.eval_fraction, seed)
    if train.empty:
        raise UserError("config key rm.eval_fraction: no training pairs left")

    # fp32 master weights; half precision only as autocast (trainer_args)
    set_seed(seed)  # the scalar head is initialised at random
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    pad = set_pad_token(tokenizer, model)
    freeze_lower_layers(model, rm.train_layers)
    with tempfile.TemporaryDirectory(prefix="rm-trainer-") as scratch:
        args = trainer_args(
            RewardConfig, scratch, device, params["train_precision"], seed, rm.gradient_checkpointing,
            max_steps=rm.max_steps, per_device_train_batch_size=rm.batch_size // rm.processes,
            learning_rate=rm.learning_rate, max_length=rm.max_length,
        )  # fmt: skip
        trainer = RewardTrainer(
            model=model, args=args, processing_class=tokenizer, callbacks=tensorboard_callbacks(writer),
            train_dataset=_preference_dataset(surely_short(train, tail_chars(tokenizer, rm.max_length))),
        )  # fmt: skip
        quiet_console(trainer, ("loss", "accuracy"), log)
        n_train = len(trainer.train_dataset)
        if n_train == 0:
            raise UserError(f"config key rm.max_length: all {len(train)} training pairs are longer than {rm.max_length} tokens")
        if n_train < len(train):
            log.warning(
                "%d of %d training pairs dropped (longer than rm.max_length=%d tokens)",
                len(train) - n_train, len(train), rm.max_length,
            )  # fmt: skip
        ds = trainer.train_dataset
        lengths = (*map(len, ds["chosen_ids"]), *map(len, ds["rejected_ids"]))
        chars = int(sum(pairs[k].str.len().sum() for k in ("prompt", "chosen", "rejected")))
        expect(predict(params, memory.Workload(memory.model_config(model_dir), lengths, text_bytes=chars)))
        result = trainer.train()
    model = trainer.model.eval()
    if not is_main():  # rank 0 alone evaluates and writes
        return {}

    steps = [h for h in trainer.state.log_history if "loss" in h]
    losses = [float(h["loss"]) for h in steps]
    metrics: dict[str, Any] = {
        "n_pairs": len(pairs),
        "n_train": n_train,
        "n_train_dropped_too_long": len(train) - n_train,
        "n_eval": len(held),
        "n_eval_dropped_overlap": n_overlap,
        "n_eval_prompts": int(held["prompt"].nunique()),
        "steps": int(result.global_step),
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "train_loss_mean": float(np.mean(losses)) if losses else None,
        "train_accuracy_last": steps[-1].get("accuracy") if steps else None,
        "pad_token": pad,
        "train_layers": rm.train_layers,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": str(device),
        "max_length": rm.max_length,
        **held_out_metrics(model, tokenizer, held, rm),
        "train_time_s": float(result.metrics.get("train_runtime", 0.0)),
        "wall_time_s": time.perf_counter() - t0,
    }
    log.info(
        "reward model: %d steps, loss %.3f -> %.3f, held-out accuracy %s (%d pairs), %.0fs", metrics["steps"],
        losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"), metrics["eval_accuracy"],
        len(held), metrics["wall_time_s"],
    )  # fmt: skip
    keys = ("step", "loss", "accuracy", "margin", "learning_rate", "grad_norm")
    rows = [{k: h[k] for k in keys if k in h} for h in steps]
    return {"model": model, "tokenizer": tokenizer, "metrics": metrics, "steps": rows}


def without_ties(held: pd.DataFrame) -> pd.DataFrame:
    """The held-out pairs that state a preference: identical responses are a tie no reward model can rank (they
    would count as errors). UserError when only ties are left: the accuracy would silently be n/a."""
    tie = held["chosen"].str.strip() == held["rejected"].str.strip()
    if len(held) and tie.all():
        raise UserError(
            f"all {len(held)} held-out pairs of the reward model have identical chosen and rejected responses: no "
            "pair left to measure its accuracy on (fix the data, or raise rm.eval_fraction)"
        )
    if tie.any():
        log.warning("%d of %d held-out pairs have identical responses: not evaluated", int(tie.sum()), len(held))
    return held[~tie].reset_index(drop=True)


def held_out_metrics(model, tokenizer, held: pd.DataFrame, rm: RMConfig) -> dict[str, float | None]:
    """Accuracy and mean margin on the held-out pairs, and what "prefer the longer response" alone scores there (an
    RM near it may have learned only length); None without held-out pairs."""
    if not len(held):
        return {"eval_accuracy": None, "eval_margin_mean": None, "eval_accuracy_longer_baseline": None}
    prompts = held["prompt"].tolist()
    chosen = score(model, tokenizer, prompts, held["chosen"].tolist(), rm.max_length, rm.batch_size)
    rejected = score(model, tokenizer, prompts, held["rejected"].tolist(), rm.max_length, rm.batch_size)
    return {
        "eval_accuracy": float(np.mean(chosen > rejected)),
        "eval_margin_mean": float(np.mean(chosen - rejected)),
        "eval_accuracy_longer_baseline": float(np.mean(held["chosen"].str.len() > held["rejected"].str.len())),
    }


def run(input: dict, output: dict, params: dict) -> dict:
    """Rule reward_model: pairs -> RM folder, metrics.json and the per-step rows (beside the folder, so reports
    survive deleting the model). With `output["tensorboard"]` (a folder, the rule's named log with
    training.report_to: tensorboard), rank 0 writes TensorBoard events there while it trains."""
    from density_grpo.io import read_json, write_jsonl
    from density_grpo.training import tensorboard

    processes = RMConfig.from_params(params["rm"]).processes
    if must_launch(processes):  # the job's own process: the step runs again on N processes
        launch(run, (input, output), params, processes, "rm.processes")
        return _figures(read_json(output["metrics"]))
    with tensorboard(output.get("tensorboard")) as writer:  # removed again if anything below fails
        out = train_reward_model(input["model"], pd.read_parquet(input["pairs"]), params, writer)
        if not is_main():
            return {}
        with atomic_path(output["model"]) as tmp:
            out["model"].save_pretrained(tmp, safe_serialization=True)
            out["tokenizer"].save_pretrained(tmp)
        write_jsonl(out["steps"], output["steps"])
        write_json(out["metrics"], output["metrics"])
    return _figures(out["metrics"])


def _figures(metrics: Mapping[str, Any]) -> dict:
    """The figures kept in the job's memory record."""
    return {"eval_accuracy": metrics["eval_accuracy"], "steps": metrics["steps"]}

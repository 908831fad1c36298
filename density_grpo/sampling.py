"""The one way the pipeline samples completions (collapse curves during training, the final evaluation).

It samples as TRL's GRPOTrainer generates its training completions (transformers path): pure temperature sampling
(top_k 0, top_p 1, no repetition penalty), left-padded prompts, stopping at every EOS id TRL stops at (the
tokenizer's plus the generation config's), each completion kept up to and including its first EOS. The text of a
completion is then cut at the next "Human:" turn the model starts by itself. Prompts are sampled in batches of
`SEQUENCES_PER_CALL` sequences under one seed, so the same prompts, settings, seed and model give the same
completions wherever they are sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from density_grpo.models import eos_token_ids, pad_token_id, tail_chars
from density_grpo.pairs import HUMAN_TAG

SEQUENCES_PER_CALL = 64  # sequences per generate() call: fewer decode loops, which dominate on CPU


@dataclass(frozen=True)
class Sampling:
    """How completions are sampled: `samples` per prompt, at most `max_new_tokens` tokens, at `temperature`
    (0: greedy)."""

    samples: int
    max_new_tokens: int
    temperature: float

    @property
    def prompts_per_call(self) -> int:
        return max(1, SEQUENCES_PER_CALL // self.samples)


@dataclass
class Completions:
    """Sampled completions, prompt-major: texts[p][s]; ids[p * samples + s] (up to and including the first EOS)
    and prompt_ids[p] (the prompt's tokens as the model read them)."""

    texts: list[list[str]]
    ids: list[list[int]]
    prompt_ids: list[list[int]]

    def flat_texts(self) -> list[str]:
        return [t for group in self.texts for t in group]


def keep_last_tokens(tokenizer, texts: list[str], max_tokens: int) -> tuple[list[str], int]:
    """Each text cut to its last `max_tokens` tokens (a long dialogue keeps its final request), and how many were
    cut. Only a text's last models.tail_chars characters are tokenized: they hold more than `max_tokens` tokens for
    certain, the tokens at the window's cut among those dropped, so a 20 MB prompt costs what those characters cost.
    Decoded back to text: the trainer and the sampler tokenize prompts themselves, which may give a token more or
    less at the cut."""
    window = tail_chars(tokenizer, max_tokens)
    out, n_cut = [], 0
    for text in texts:
        ids = tokenizer(text[-window:], add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            text, n_cut = tokenizer.decode(ids[-max_tokens:]), n_cut + 1
        out.append(text)
    return out, n_cut


def cut_at(text: str, stop: str) -> str:
    """Text before `stop`; also drops a trailing partial `stop` (>= 4 chars) left by the token limit."""
    text = text.split(stop)[0]
    for k in range(len(stop) - 1, 3, -1):
        if text.endswith(stop[:k]):
            return text[:-k]
    return text


def first_eos_cut(ids: list[int], eos: set[int]) -> list[int]:
    """The ids up to and including the first EOS (all of them when none), as TRL masks completions."""
    return ids[: next((j + 1 for j, t in enumerate(ids) if t in eos), len(ids))]


@torch.no_grad()
def sample(
    model, tokenizer, prompts: list[str], how: Sampling, seed: int, progress: Callable[[int], None] | None = None
) -> Completions:
    """`how.samples` completions of each prompt, reproducible for a given seed (the caller's RNG is untouched);
    `progress` is called with the number of prompts done after each generate call."""
    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    greedy = how.temperature == 0
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=how.temperature, top_k=0, top_p=1.0)
    texts: list[list[str]] = []
    ids: list[list[int]] = []
    prompt_ids: list[list[int]] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), how.prompts_per_call):
                batch = prompts[start : start + how.prompts_per_call]
                enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
                seqs = model.generate(
                    **enc, **sampling, max_new_tokens=how.max_new_tokens, num_return_sequences=how.samples,
                    repetition_penalty=1.0, pad_token_id=pad_token_id(tokenizer), eos_token_id=eos,
                )  # fmt: skip
                done = [first_eos_cut(c, set(eos)) for c in seqs[:, enc["input_ids"].shape[1] :].tolist()]
                cut = [cut_at(t, HUMAN_TAG) for t in tokenizer.batch_decode(done, skip_special_tokens=True)]
                texts += [cut[i : i + how.samples] for i in range(0, len(cut), how.samples)]
                ids += done
                prompt_ids += [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
                if progress is not None:
                    progress(start + len(batch))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return Completions(texts, ids, prompt_ids)


def pack(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, eos_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's training layout: left-padded prompts (width P) + right-padded completions (width C), each completion cut
    after its first EOS. Returns input_ids (B, P+C), attention_mask (B, P+C) and completion_mask (B, C)."""
    eos = set(eos_ids)
    completion_ids = [first_eos_cut(list(c), eos) for c in completion_ids]
    P, C = max(map(len, prompt_ids)), max(map(len, completion_ids))
    input_ids = torch.full((len(prompt_ids), P + C), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[i, P - len(p) : P + len(c)] = torch.tensor(list(p) + c, dtype=torch.long)
        attention_mask[i, P - len(p) : P + len(c)] = 1
    return input_ids, attention_mask, attention_mask[:, P:]


class KeyedGumbel:
    """A logits processor for greedy decoding that samples: argmax(z / T + Gumbel noise) is an exact draw from
    softmax(z / T) (the Gumbel-max trick). The noise of row r at its t-th new token is keyed by (seed, generation,
    row_offset + r, t) alone, so a completion does not depend on which other rows share its generate() call, on
    their padding, or on the process that generates it: the same global row gets the same completion whether one
    process generates the whole batch or N processes each generate a slice."""

    def __init__(self, temperature: float, seed: int, generation: int, row_offset: int):
        self.temperature, self.seed, self.generation, self.row_offset = temperature, seed, generation, row_offset
        self.start: int | None = None  # the prompt width: tokens before the first new one

    def key(self, row: int, t: int) -> int:
        import hashlib

        text = f"{self.seed}:{self.generation}:{self.row_offset + row}:{t}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        t = input_ids.shape[1] - self.start
        u = torch.empty(scores.shape, dtype=torch.float64)
        for row in range(scores.shape[0]):
            u[row] = torch.rand(scores.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(self.key(row, t)))
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
        return scores.float() / self.temperature + gumbel.to(scores.device, torch.float32)

"""Prompt embeddings from a causal LM: masked mean pooling of a hidden layer or of the logits.

The model and tokenizer come in already loaded (see density_grpo.models); this module only runs them:
tokenize once (keeping at most max_length tokens, from the end), group prompts into token-budget batches
(longest first), pad right, pool, and write one chunk store per call of `embed_chunk`. A prompt longer than the
budget runs in windows of positions that carry the KV cache: the same hidden states as one pass (a causal LM's
position t only sees positions <= t), with memory bounded by the window instead of the whole prompt.

Pooling (embed.pooling) picks which tokens the mean runs over, while the model always reads the whole prompt:
`mean` every token; `human` the text of every Human turn of an HH dialogue (the "\\n\\nHuman:" /
"\\n\\nAssistant:" tags and the Assistant turns left out); `last_turn` the final Human turn's text; `last` the
last token. The pooling mask is computed at tokenization (offset mapping) and travels with the token ids.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from density_grpo import memory, store
from density_grpo.errors import UserError
from density_grpo.config import EmbedConfig
from density_grpo.models import backbone, decoder_layers, pad_token_id, tail_chars
from density_grpo.monitor import Progress
from density_grpo.pairs import ASSISTANT_TAG, HUMAN_TAG

log = logging.getLogger(__name__)

# config attributes that make logits a non-linear (softcap) or rescaled function of the final hidden state
_LOGIT_SCALE_KEYS = ("logit_scale", "logits_scaling", "lm_head_multiplier")
TOKEN_PIECE = 1 << 16  # characters tokenized at a time when a long prompt's whole length is counted


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) -> (B, D) float32 mean over the positions where attention_mask is 1."""
    mask = attention_mask.to(device=hidden.device, dtype=torch.bool).unsqueeze(-1)
    # masked_fill (not multiply) so that a NaN/inf at a padded position can never leak into the mean
    summed = hidden.to(torch.float32).masked_fill(~mask, 0.0).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1).to(torch.float32)
    return summed / counts


def masked_sums(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D), (B, T) -> sums (B, D) and counts (B, 1) over the positions where mask is 1, in float32 (float64
    for a float64 model). The windows of a long batch add up their sums and counts; sums / counts is mean_pool.
    """
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    m = mask.to(device=hidden.device, dtype=torch.bool).unsqueeze(-1)
    return hidden.to(dtype).masked_fill(~m, 0.0).sum(dim=1), m.sum(dim=1).to(dtype)


def dialogue_spans(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Character spans of an HH dialogue: (its Human/Assistant tags, the text of each Human turn without its tag)."""
    tags = sorted((m.start(), m.end()) for tag in (HUMAN_TAG, ASSISTANT_TAG) for m in re.finditer(re.escape(tag), text))
    human = []
    for i, (start, end) in enumerate(tags):
        if text.startswith(HUMAN_TAG, start):
            human.append((end, tags[i + 1][0] if i + 1 < len(tags) else len(text)))
    return tags, human


def pooling_mask(text: str, offsets: Sequence[tuple[int, int]], pooling: str) -> list[int]:
    """1 at the tokens the embedding averages over, 0 elsewhere (all 0 when the text has none of them).

    offsets: each token's character span in `text` (special tokens: (0, 0), never inside a span). human and
    last_turn keep a token that overlaps a Human turn's text and no tag.
    """
    n = len(offsets)
    if pooling == "mean":
        return [1] * n
    if pooling == "last":
        return [0] * (n - 1) + [1] if n else []
    tags, human = dialogue_spans(text)
    off = np.asarray(offsets, dtype=np.int64).reshape(n, 2)

    def overlaps(spans: list[tuple[int, int]]) -> np.ndarray:
        hit = np.zeros(n, dtype=bool)
        for start, end in spans:
            hit |= (off[:, 0] < end) & (off[:, 1] > start)
        return hit

    return (overlaps(human if pooling == "human" else human[-1:]) & ~overlaps(tags)).astype(int).tolist()


def gram_factor(weight: torch.Tensor, block_rows: int = 8192) -> torch.Tensor:
    """(d, d) float32 R with R^T R = W^T W for an LM head weight W (V, d).

    Why: for a linear, bias-free head, the mean-pooled logits of a prompt are
    mean_t(W h_t) = W mean_t(h_t) = W p. Then ||W a - W b|| = ||R a - R b|| and
    <W a, W b> = <R a, R b> for all a, b, so distances and cosines of the vocab-dim mean-pooled
    logits are exactly those of the d-dim vector R p: we store R p instead (~V/d times smaller).

    W^T W is accumulated in float64 over blocks of rows of W (bounded memory), then factored:
    Cholesky (R = L^T, unique), or, when W^T W is singular, eigh with eigenvalues clipped at 0
    (R = diag(sqrt(lam)) Q^T). The result is on W's device.
    """
    w = weight.detach()
    # float64 where the hardware has it (not MPS); CPU otherwise
    dev = w.device if w.device.type in ("cpu", "cuda") else torch.device("cpu")
    d = w.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=dev)
    for i in range(0, w.shape[0], block_rows):
        blk = w[i : i + block_rows].to(device=dev, dtype=torch.float64)
        gram += blk.T @ blk
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        r = chol.T
    else:
        lam, q = torch.linalg.eigh(gram)
        r = lam.clamp(min=0).sqrt().unsqueeze(1) * q.T
    return r.to(device=w.device, dtype=torch.float32).contiguous()


def head_is_linear(model: nn.Module) -> tuple[bool, str]:
    """(True, "") when logits = W h exactly: a plain bias-free nn.Linear head, no softcapping or logit scaling."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if head is None:
        return False, "model has no output embedding (lm head)"
    if type(head) is not nn.Linear:  # subclasses (e.g. quantized linears) may not compute W h with .weight
        return False, f"lm head is {type(head).__name__}, not a plain nn.Linear"
    if head.bias is not None:
        return False, "lm head has a bias"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "final_logit_softcapping", None) is not None:
        return False, f"final_logit_softcapping={config.final_logit_softcapping}"
    for key in _LOGIT_SCALE_KEYS:
        value = getattr(config, key, None)
        if value is not None and value != 1:
            return False, f"{key}={value}"
    return True, ""


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices, longest first (stable), so that max_len_in_batch * len(batch) <= batch_tokens.

    Sorted descending, the first item of a batch is its longest, so the padded size of a batch is
    lengths[first] * len(batch). An item longer than the budget forms its own batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class _StopForward(Exception):
    """Raised by a forward hook to stop the backbone once the wanted block has run."""

    def __init__(self, output: Any):
        self.output = output


class Embedder:
    """Embeds prompts with an already-loaded causal LM (already on `device`, in `dtype`).

    source="hidden": masked mean of the hidden state of block `layer` (HF hidden_states[layer + 1]);
      the last layer (-1) is the backbone's final output, after the final norm.
    source="logits": masked mean of the logits. With a linear head it is stored exactly as
      gram_factor(W) @ mean(h) (d_model dims, same distances and cosines); otherwise the true
      vocab-dim pooled logits are stored.
    pooling: the tokens the mean runs over (POOLINGS, see the module docstring); a prompt whose mask is
      empty (no Human text) is mean-pooled instead, counted in `n_fallback`.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: EmbedConfig):
        """cfg: source, layer, max_length, batch_tokens and pooling (its allowed values: the schema's)."""
        source, layer, pooling = cfg.source, cfg.layer, cfg.pooling
        if pooling in ("human", "last_turn") and not getattr(tokenizer, "is_fast", False):
            raise UserError(f"embed.pooling={pooling} needs a fast tokenizer (offset mapping); use pooling mean or last")
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.source, self.max_length, self.batch_tokens, self.pooling = source, cfg.max_length, cfg.batch_tokens, pooling
        self.backbone = backbone(model)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.layers = decoder_layers(model)
        n = len(self.layers)
        self.layer = layer + n if layer < 0 else layer
        if not 0 <= self.layer < n:
            raise UserError(f"embed.layer={layer} is out of range for a model with {n} layers (use -{n}..{n - 1})")
        self.is_last = self.layer == n - 1
        if source == "logits" and not self.is_last:
            raise UserError(f"embed.layer={layer}: source 'logits' needs the last layer (embed.layer: -1)")

        hidden_size = model.get_input_embeddings().weight.shape[1]
        self.transform, self.R = "none", None
        self.dim = hidden_size
        if source == "logits":
            linear, reason = head_is_linear(model)
            if linear:
                self.transform = "gram-factor"
                self.R = gram_factor(model.get_output_embeddings().weight).to(self.device)
            else:
                self.transform = f"true-logits (head not linear: {reason})"
                self.dim = int(getattr(config, "vocab_size", 0)) or None  # confirmed from the logits on first batch
        pad = pad_token_id(tokenizer)
        self.pad_id = pad if pad is not None else 0  # value is irrelevant: pads are masked and right of every real token
        self.n_tokens, self.time_s, self.n_truncated, self.longest, self.n_fallback = 0, 0.0, 0, 0, 0
        self._tail_chars: int | None = None

    def window(self, batch_size: int) -> int:
        """Positions per forward for a batch of `batch_size` rows: batch_size x window <= embed.batch_tokens."""
        return max(1, self.batch_tokens // batch_size)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **cache: Any) -> torch.Tensor:
        """Per-position outputs to pool (hidden state of `layer`, or true logits) of one window of a batch.

        cache: nothing (one pass), or past_key_values (a Cache the window extends) and the window's position_ids;
        attention_mask then covers the past and the window.
        """
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=bool(cache), **cache)
        if self.source == "logits" and self.R is None:
            return self.model(**kw).logits
        if self.is_last:
            return self.backbone(**kw)[0]

        # stop right after block `layer`: blocks above it and the final norm never run (nor fill the cache)
        def stop(module: nn.Module, args: Any, output: Any) -> None:
            raise _StopForward(output)

        handle = self.layers[self.layer].register_forward_hook(stop)
        try:
            self.backbone(**kw)
            raise RuntimeError("decoder layer hook did not fire")
        except _StopForward as e:
            return e.output[0] if isinstance(e.output, (tuple, list)) else e.output
        finally:
            handle.remove()

    def _pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One right-padded batch -> (B, dim) float32 embeddings: the mean over pool_mask (default: attention_mask).

        A batch longer than its window runs window by window with a KV cache; every per-token tensor (ids, masks)
        is sliced along, and the pooled sums and counts add up across windows.
        """
        pool_mask = attention_mask if pool_mask is None else pool_mask
        (b, t), w = input_ids.shape, self.window(input_ids.shape[0])
        if t <= w:
            sums, counts = masked_sums(self._forward(input_ids, attention_mask), pool_mask)
        else:
            from transformers import DynamicCache

            cache, sums, counts = DynamicCache(config=self.model.config), 0.0, 0.0
            for s in range(0, t, w):
                e = min(t, s + w)
                pos = torch.arange(s, e, device=input_ids.device).expand(b, -1)
                out = self._forward(input_ids[:, s:e], attention_mask[:, :e], past_key_values=cache, position_ids=pos)
                ws, wc = masked_sums(out, pool_mask[:, s:e])
                sums, counts = sums + ws, counts + wc
        pooled = sums / counts.clamp(min=1)
        return pooled @ self.R.T.to(pooled.dtype) if self.R is not None else pooled

    def _run(self, ids: list[list[int]], masks: list[list[int]]) -> torch.Tensor:
        """Right-pad a batch of token id lists (and their pooling masks) and embed it -> (B, dim) float32 on CPU."""
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        pool_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for row, (x, m) in enumerate(zip(ids, masks)):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            attention_mask[row, : len(x)] = 1
            pool_mask[row, : len(m)] = torch.tensor(m, dtype=torch.long)
        out = self._pooled(input_ids.to(self.device), attention_mask.to(self.device), pool_mask.to(self.device))
        return out.float().cpu()

    def _run_with_retry(self, ids: list[list[int]], masks: list[list[int]]) -> torch.Tensor:
        """_run, and on out-of-memory: free the cache, split the batch in half, retry once."""
        try:
            return self._run(ids, masks)
        except torch.OutOfMemoryError:
            pass  # retry outside the except block so the failed batch's tensors can be freed
        _empty_cache(self.device)
        h = len(ids) // 2
        halves = [(ids[:h], masks[:h]), (ids[h:], masks[h:])] if len(ids) > 1 else [(ids, masks)]
        try:
            return torch.cat([self._run(*half) for half in halves])
        except torch.OutOfMemoryError as e:
            raise UserError(
                f"out of memory embedding a batch of {len(ids)} prompts (longest {max(map(len, ids))} tokens), "
                f"even split in half: lower embed.batch_tokens (now {self.batch_tokens}) or use a smaller "
                f"model.dtype (bfloat16/float16) (or lower embed.max_length)"
            ) from e

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of each text, at most max_length kept from the end, and its pooling mask (1 = pooled).

        Dropping from the left keeps the final request of a long dialogue; leading special tokens (BOS) stay. The
        mask is computed on the whole text (offsets) and truncated with the ids; an empty mask falls back to every
        token (counted in n_fallback); a text with no tokens gets one special token.
        """
        offsets = self.pooling in ("human", "last_turn")
        enc, cut = self._encode_tails(list(texts), offsets)
        spans = enc["offset_mapping"] if offsets else [[(0, 0)] * len(x) for x in enc["input_ids"]]
        spans = [[(a + c, b + c) if b > a else (a, b) for a, b in o] if c else o for o, c in zip(spans, cut)]
        specials = set(self.tokenizer.all_special_ids)
        filler = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.pad_id
        # whole prompts, before truncation (a cut prompt is counted piece by piece)
        self.lengths = [self.count_tokens(t) if c else len(x) for t, x, c in zip(texts, enc["input_ids"], cut)]
        self.n_truncated, self.longest, self.n_fallback = 0, max(self.lengths, default=0), 0
        ids, masks = [], []
        for text, x, o in zip(texts, enc["input_ids"], spans):
            m = pooling_mask(text, o, self.pooling)
            if len(x) > self.max_length:
                head = min(next((j for j, tok in enumerate(x) if tok not in specials), len(x)), self.max_length - 1)
                keep = [*range(head), *range(len(x) - (self.max_length - head), len(x))]
                x, m = [x[j] for j in keep], [m[j] for j in keep]
                self.n_truncated += 1
            if not x:  # a text with no tokens (e.g. "") would pool to nothing
                x, m = [filler], [1]
            if not any(m):
                m, self.n_fallback = [1] * len(x), self.n_fallback + 1
            ids.append(list(x))
            masks.append(m)
        return ids, masks

    def tail_chars(self) -> int:
        """Characters from the end that hold more than max_length tokens for certain (models.tail_chars)."""
        if self._tail_chars is None:
            self._tail_chars = tail_chars(self.tokenizer, self.max_length)
        return self._tail_chars

    def _encode_tails(self, texts: list[str], offsets: bool) -> tuple[Any, list[int]]:
        """Tokenize each text, a long one only its last tail_chars() characters (memory bounded by max_length, not
        by the prompt: a 20 MB prompt would otherwise be tokenized whole); returns the encoding and each text's cut
        (characters dropped from its start; 0: tokenized whole). A tail with no more than max_length tokens (a
        tokenizer whose tokens outgrow the bound) is tokenized whole after all."""
        window = self.tail_chars()
        cut = [max(len(t) - window, 0) for t in texts]
        enc = self.tokenizer([t[c:] for t, c in zip(texts, cut)], verbose=False, return_offsets_mapping=offsets)
        for i, c in enumerate(cut):
            if c and len(enc["input_ids"][i]) <= self.max_length:
                whole = self.tokenizer(texts[i], verbose=False, return_offsets_mapping=offsets)
                for key in enc.keys():
                    enc[key][i] = whole[key]
                cut[i] = 0
        return enc, cut

    def count_tokens(self, text: str) -> int:
        """Tokens of the whole text, tokenized in pieces of TOKEN_PIECE characters cut before whitespace (where
        pre-tokenizers split anyway): memory bounded by the piece, not the text."""
        n, start = len(self.tokenizer("", verbose=False)["input_ids"]), 0  # the special tokens added to every text
        while start < len(text):
            stop = min(start + TOKEN_PIECE, len(text))
            while stop < len(text) and stop > start + 1 and not text[stop].isspace():
                stop -= 1
            stop = stop if stop > start + 1 else min(start + TOKEN_PIECE, len(text))  # no whitespace: cut anyway
            n += len(self.tokenizer(text[start:stop], add_special_tokens=False, verbose=False)["input_ids"])
            start = stop
        return n

    def batches(self, ids: list[list[int]]) -> list[list[int]]:
        """The forward batches `embed_ids` runs (indices into ids)."""
        return token_budget_batches([len(x) for x in ids], self.batch_tokens)

    def embed_ids(self, ids: list[list[int]], masks: list[list[int]] | None = None, progress: bool = True) -> np.ndarray:
        """Embed tokenized texts (pooled over `masks`, default every token) -> float32 (n, dim), rows in input order."""
        masks = masks if masks is not None else [[1] * len(x) for x in ids]
        t0 = time.perf_counter()
        out: np.ndarray | None = None
        bar = Progress("embedded", len(ids), "prompts", lines=4, logger=log) if progress else None
        done = 0
        with torch.inference_mode():
            for batch in self.batches(ids):
                emb = self._run_with_retry([ids[i] for i in batch], [masks[i] for i in batch]).numpy()
                if out is None:
                    out = np.empty((len(ids), emb.shape[1]), dtype=np.float32)
                out[batch] = emb
                done += len(batch)
                if bar is not None:
                    bar.update(done)
        if out is None:
            out = np.empty((0, self.dim or 0), dtype=np.float32)
        self.dim = int(out.shape[1])
        self.n_tokens = int(sum(len(x) for x in ids))
        self.time_s = time.perf_counter() - t0
        return out

    def embed(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """Embed `texts` -> float32 (n, dim), rows in input order."""
        return self.embed_ids(*self.tokenize(texts), progress=progress)

    def attrs(self) -> dict[str, Any]:
        """JSON-able description of the embedding (stored with every chunk)."""
        return {
            "source": self.source,
            "layer": self.layer,
            "pooling": self.pooling,
            "pooling_fallbacks": self.n_fallback,
            "dtype": str(self.dtype).removeprefix("torch."),
            "dim": self.dim,
            "transform": self.transform,
            "max_length": self.max_length,
            "truncation": "left",
            "n_truncated": self.n_truncated,
            "longest_tokens": self.longest,
            "batch_tokens": self.batch_tokens,
            "n_tokens": self.n_tokens,
            "time_s": round(self.time_s, 4),
            "tokens_per_s": round(self.n_tokens / self.time_s, 1) if self.time_s > 0 else None,
        }


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def forward_bytes(model_cfg: dict, batch: int, seq: int, window: int, prec: str) -> int:
    """Activations of a batch of `seq` positions run `window` positions at a time: one window's activations, its
    attention over all earlier positions, and the KV cache that carries them (none in one pass)."""
    d, w = memory.dims(model_cfg), min(seq, window)
    acts = memory.inference_activation_bytes(model_cfg, batch, w, prec)
    if w == seq:
        return acts
    attn = math.ceil(batch * d["heads"] * w * (seq - w) * memory.PRECISION_BYTES[prec])
    return acts + attn + memory.kv_cache_bytes(model_cfg, batch, seq, prec)


def predict(params: Mapping[str, Any], work: memory.Workload) -> dict:
    """Peak memory of embedding one chunk (work.lengths: its prompts' tokens as run): weights + the largest forward
    batch + the output, or the load copy."""
    cfg, device = EmbedConfig.from_params(params["embed"]), params["device"]
    model_cfg, lengths = work.model, list(work.lengths)
    batches = token_budget_batches(lengths, cfg.batch_tokens)
    d = memory.dims(model_cfg)
    n_params = memory.param_count(model_cfg)
    prec = memory.precision_key(params["dtype"])
    stored = memory.precision_key(model_cfg.get("torch_dtype") or model_cfg.get("dtype") or "float32")
    window = [max(1, cfg.batch_tokens // len(b)) for b in batches]
    acts = max(forward_bytes(model_cfg, len(b), lengths[b[0]], w, prec) for b, w in zip(batches, window))
    true_logits = work.true_logits and cfg.source == "logits"
    logits = max(len(b) * min(lengths[b[0]], w) for b, w in zip(batches, window)) * d["V"] * 4 if true_logits else 0
    out = len(lengths) * (d["V"] if true_logits else d["h"]) * 4
    load = memory.weights_bytes(n_params, stored) if stored != prec and device == "cpu" else 0
    c = {
        **memory.baseline("torch", device),
        **memory.texts(work, device),
        "weights": memory.weights_bytes(n_params, prec),
        "max(activations + logits + output, load copy)": max(acts + logits + out, load),
    }
    longest = max(batches, key=lambda b: len(b) * lengths[b[0]])
    return memory.prediction(
        device, c, "baseline + weights + max(largest batch's activations + logits + output, load copy in the stored dtype)",
        "embed.batch_tokens (or model.dtype: bfloat16/float16)", batch=len(longest), seq=lengths[longest[0]],
        source=cfg.source,
    )  # fmt: skip


RESPONSE_BATCH_TOKENS = 4096  # responses are embedded in token-budget batches of this size


def response_embedder(model: nn.Module, tokenizer: Any, max_new_tokens: int) -> Embedder:
    """How sampled responses are embedded (evaluation, collapse curves): the mean over every token of the last
    hidden state. Responses are at most max_new_tokens long; re-tokenized text may differ a little, hence 4x."""
    cfg = EmbedConfig.fixed(
        source="hidden", layer=-1, pooling="mean", max_length=4 * max_new_tokens, batch_tokens=RESPONSE_BATCH_TOKENS
    )
    return Embedder(model, tokenizer, cfg)


def run(input: dict, output: dict, params: dict) -> dict:
    """Rule embed_chunk: rows [start, stop) of prompts.parquet -> one Zarr chunk store; returns throughput figures."""
    import pandas as pd

    from density_grpo.device import torch_device, torch_dtype
    from density_grpo.io import read_parquet_rows
    from density_grpo.models import load_causal_lm
    from density_grpo.monitor import expect
    from density_grpo.pairs import n_turns, texts_hash

    cfg = EmbedConfig.from_params(params["embed"])
    start, stop = params["rows"]
    rows = read_parquet_rows(input["prompts"], start, stop, ["prompt_id", "text"])
    texts = rows["text"].tolist()
    if not texts:
        raise UserError(f"{input['prompts']}: rows {start}..{stop} are empty: the prompts changed, rerun snakemake")
    if texts_hash(texts) != params["content"]:
        raise UserError(f"{input['prompts']}: rows {start}..{stop} changed since the workflow was planned: rerun snakemake")
    device = torch_device(params["device"])
    model, tok = load_causal_lm(input["model"], dtype=torch_dtype(params["dtype"], device), device=device)
    embedder = Embedder(model, tok, cfg)
    ids, masks = embedder.tokenize(texts)
    work = memory.Workload(
        memory.model_config(input["model"]), tuple(map(len, ids)), true_logits=embedder.R is None,
        text_bytes=rows.attrs["bytes_read"],
    )  # fmt: skip
    expect(predict(params, work))
    emb = embedder.embed_ids(ids, masks)
    attrs = embedder.attrs() | {
        "model": input["model"], "model_fingerprint": params["model_fingerprint"], "rows": [start, stop],
        "device": str(device), "content_hash": params["content"],
    }  # fmt: skip
    lengths = {"n_tokens": np.array(embedder.lengths, dtype=np.int64), "turns": n_turns(rows["text"]).to_numpy(np.int64)}
    store.write_chunk(output["chunk"], rows["prompt_id"].tolist(), emb, attrs, columns=lengths)
    log.info("rows %d..%d: %d prompts, %d tokens, %.0f tokens/s (%s, %s)", start, stop, len(texts), embedder.n_tokens, attrs["tokens_per_s"] or 0, device, embedder.dtype)
    if embedder.n_truncated:
        log.warning("%d of %d prompts kept only their last embed.max_length=%d tokens (longest: %d)", embedder.n_truncated, len(texts), embedder.max_length, embedder.longest)
    return {"n_prompts": len(texts), "n_tokens": embedder.n_tokens, "tokens_per_s": attrs["tokens_per_s"], "n_truncated": embedder.n_truncated}

"""Unit tests for density_grpo.embed on a tiny random Llama (no network, CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from density_grpo import store
from density_grpo import embed
from density_grpo.embed import Embedder, gram_factor, head_is_linear, mean_pool, pooling_mask, token_budget_batches
from density_grpo.errors import UserError
from conftest import embed_config, tokenized_lengths
from tiny_model import build_tiny_model

TEXTS = [
    "\n\nHuman: How do I make a good risotto with mushrooms?\n\nAssistant:",
    "Hi",
    "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\nHuman: And of Italy?\n\nAssistant:",
    "Tell me a joke.",
    "Can you help me write an email to my landlord about the heating, which has been broken for a week?",
    "Ünïcode ✓ 你好",
]


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny"), tie=request.param)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def reference(model, tokenizer, texts, index: int | None = None) -> np.ndarray:
    """Masked mean of HF hidden_states[index] (or of the logits when index is None), one text at a time."""
    rows = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            x = out.logits if index is None else out.hidden_states[index]
            rows.append(mean_pool(x, enc["attention_mask"])[0].numpy())
    return np.stack(rows)


def pairwise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.float64)
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return dist, unit @ unit.T


def test_mean_pool_mask():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [float("nan"), 0.0], [1e9, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = mean_pool(hidden.to(torch.bfloat16), mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0], [5.0, 6.0]]))


def test_padding_never_pooled(tiny):
    model, tokenizer = tiny
    embedder = Embedder(model, tokenizer, embed_config(pooling="mean", batch_tokens=10_000))
    together = embedder.embed(TEXTS, progress=False)
    for i, text in enumerate(TEXTS):
        alone = embedder.embed([text], progress=False)
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)


def test_hidden_layer_selection(tiny):
    model, tokenizer = tiny
    layers_before = list(model.model.layers)
    n = len(layers_before)
    last = Embedder(model, tokenizer, embed_config(pooling="mean", layer=-1)).embed(TEXTS, progress=False)
    np.testing.assert_allclose(last, reference(model, tokenizer, TEXTS, -1), atol=1e-5)
    mid = Embedder(model, tokenizer, embed_config(pooling="mean", layer=1))
    expected = reference(model, tokenizer, TEXTS, 2)  # (HF installs its own capture hooks here, once)
    hooks_before = [len(layer._forward_hooks) for layer in model.model.layers]
    np.testing.assert_allclose(mid.embed(TEXTS, progress=False), expected, atol=1e-5)
    assert mid.attrs()["layer"] == 1 and Embedder(model, tokenizer, embed_config(pooling="mean", layer=-1)).attrs()["layer"] == n - 1
    # the model is untouched: same blocks, no hooks left behind
    assert list(model.model.layers) == layers_before
    assert [len(layer._forward_hooks) for layer in model.model.layers] == hooks_before
    with pytest.raises(UserError, match="embed.layer"):
        Embedder(model, tokenizer, embed_config(pooling="mean", layer=n))


def test_computes_only_what_is_needed(tiny):
    model, tokenizer = tiny
    calls = []
    modules = {"block2": model.model.layers[2], "norm": model.model.norm, "lm_head": model.lm_head}
    handles = [m.register_forward_hook(lambda *a, name=name: calls.append(name)) for name, m in modules.items()]
    try:
        Embedder(model, tokenizer, embed_config(pooling="mean", layer=1)).embed(TEXTS, progress=False)
        assert calls == []  # stopped after block 1
        Embedder(model, tokenizer, embed_config(pooling="mean", layer=-1)).embed(TEXTS, progress=False)
        Embedder(model, tokenizer, embed_config(pooling="mean", source="logits")).embed(TEXTS, progress=False)
        assert "lm_head" not in calls and "norm" in calls
    finally:
        for h in handles:
            h.remove()


DIALOGUES = [
    "\n\nHuman: How do I make a good risotto with mushrooms?\n\nAssistant:",
    "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\nHuman: And of Italy?\n\nAssistant:",
    "\n\nHuman: Tell me a joke.\n\nAssistant: Why did the programmer quit? No arrays.\n\nHuman: Another one"
    " please, about computers?\n\nAssistant:",
]
HUMAN_TEXT = [  # what a reader calls the Human turns' text, per dialogue (leading spaces belong to the words)
    [" How do I make a good risotto with mushrooms?"],
    [" What is the capital of France?", " And of Italy?"],
    [" Tell me a joke.", " Another one please, about computers?"],
]


def test_pooling_mask_on_characters():
    """With one token per character, the masks select exactly the Human turns' characters."""
    text = DIALOGUES[1]
    offsets = [(i, i + 1) for i in range(len(text))] + [(0, 0)]  # a trailing special token is never pooled
    chars = lambda mask: "".join(text[a:b] for (a, b), m in zip(offsets, mask) if m)  # noqa: E731
    assert chars(pooling_mask(text, offsets, "human")) == "".join(HUMAN_TEXT[1])
    assert chars(pooling_mask(text, offsets, "last_turn")) == HUMAN_TEXT[1][-1]
    assert pooling_mask(text, offsets, "mean") == [1] * len(offsets)
    assert pooling_mask(text, offsets, "last") == [0] * (len(offsets) - 1) + [1]
    assert not any(pooling_mask("Tell me a joke.", [(0, 4), (4, 15)], "human"))  # no Human tag: nothing to pool


def test_human_pooling_pools_exactly_the_human_tokens(tiny):
    model, tokenizer = tiny
    embedder = Embedder(model, tokenizer, embed_config(pooling="human", batch_tokens=10_000))
    ids, masks = embedder.tokenize(DIALOGUES)
    rows = []
    with torch.inference_mode():
        for text, x, m, human in zip(DIALOGUES, ids, masks, HUMAN_TEXT):
            assert tokenizer.decode([t for t, keep in zip(x, m) if keep]) == "".join(human)  # the human text, nothing else
            hidden = model(input_ids=torch.tensor([x]), output_hidden_states=True).hidden_states[-1][0]
            rows.append(hidden[torch.tensor(m, dtype=torch.bool)].mean(dim=0).numpy())  # the whole dialogue as context
    got = embedder.embed(DIALOGUES, progress=False)
    np.testing.assert_allclose(got, np.stack(rows), atol=1e-5)
    for i, text in enumerate(DIALOGUES):  # right padding: the mask travels with the ids, batch-independent
        np.testing.assert_allclose(embedder.embed([text], progress=False)[0], got[i], atol=1e-5)
    assert embedder.attrs()["pooling"] == "human" and embedder.attrs()["pooling_fallbacks"] == 0
    last_turn = Embedder(model, tokenizer, embed_config(pooling="last_turn")).embed(DIALOGUES, progress=False)
    np.testing.assert_allclose(last_turn[0], got[0], atol=1e-6)  # one turn: the same tokens
    assert not np.allclose(last_turn[1], got[1], atol=1e-3)
    last = Embedder(model, tokenizer, embed_config(pooling="last")).embed(DIALOGUES[:1], progress=False)
    with torch.inference_mode():
        expected = model(**tokenizer(DIALOGUES[:1], return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0, -1]
    np.testing.assert_allclose(last[0], expected.numpy(), atol=1e-5)


def test_human_pooling_falls_back_to_mean(tiny):
    model, tokenizer = tiny
    plain = ["Tell me a joke.", "Hi", ""]
    embedder = Embedder(model, tokenizer, embed_config(pooling="human"))
    np.testing.assert_allclose(embedder.embed(plain, progress=False), Embedder(model, tokenizer, embed_config(pooling="mean")).embed(plain, progress=False))
    assert embedder.attrs()["pooling_fallbacks"] == 2  # "" has no token of its own: one filler token, mean-pooled
    with pytest.raises(UserError, match="embed.pooling"):
        Embedder(model, tokenizer, embed_config(pooling="max"))

    class Slow:
        is_fast = False
        pad_token_id = bos_token_id = eos_token_id = 0

    with pytest.raises(UserError, match="fast tokenizer"):
        Embedder(model, Slow(), embed_config(pooling="human"))


def test_gram_factor_random():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(500, 16, generator=g)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    r = gram_factor(w, block_rows=64)
    assert r.shape == (16, 16) and r.dtype == torch.float32
    torch.testing.assert_close(torch.linalg.norm(r @ (a - b)), torch.linalg.norm(w @ (a - b)), rtol=1e-5, atol=0)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(r @ a, r @ b, dim=0), cos(w @ a, w @ b, dim=0), rtol=1e-5, atol=1e-6)
    # rank-deficient W (V < d): Cholesky fails, eigh fallback still exact
    w_low = torch.randn(8, 16, generator=g)
    r_low = gram_factor(w_low)
    torch.testing.assert_close(torch.linalg.norm(r_low @ a), torch.linalg.norm(w_low @ a), rtol=1e-4, atol=1e-5)


def test_logits_gram_factor_matches_true_logits(tiny):
    model, tokenizer = tiny
    assert head_is_linear(model) == (True, "")
    embedder = Embedder(model, tokenizer, embed_config(pooling="mean", source="logits"))
    emb = embedder.embed(TEXTS, progress=False)
    assert emb.shape == (len(TEXTS), model.config.hidden_size)
    assert embedder.attrs()["transform"] == "gram-factor" and embedder.attrs()["dim"] == model.config.hidden_size
    true_dist, true_cos = pairwise(reference(model, tokenizer, TEXTS, None))
    dist, cos = pairwise(emb)
    np.testing.assert_allclose(dist, true_dist, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(cos, true_cos, rtol=1e-4)


def test_softcapped_head_stores_true_logits(tiny, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
    linear, reason = head_is_linear(model)
    assert not linear and "final_logit_softcapping" in reason
    embedder = Embedder(model, tokenizer, embed_config(pooling="mean", source="logits"))
    emb = embedder.embed(TEXTS, progress=False)
    assert emb.shape == (len(TEXTS), model.config.vocab_size)
    assert embedder.attrs()["transform"].startswith("true-logits (head not linear: final_logit_softcapping")
    np.testing.assert_allclose(emb, reference(model, tokenizer, TEXTS, None), atol=1e-5)


def test_head_with_bias_not_linear(tiny, monkeypatch):
    model, _ = tiny
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    monkeypatch.setattr(model, "get_output_embeddings", lambda: head)
    assert head_is_linear(model) == (False, "lm head has a bias")


def test_token_budget_batches():
    lengths = [5, 1, 9, 3, 3, 40, 2, 9, 7]
    budget = 20
    batches = token_budget_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert flat.index(2) < flat.index(7)  # stable among equal lengths
    assert [5] in batches  # the over-long item is alone
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= budget
    assert batches == token_budget_batches(lengths, budget)
    assert token_budget_batches([], 10) == []


def test_deterministic_and_input_order(tiny):
    model, tokenizer = tiny
    embedder = Embedder(model, tokenizer, embed_config(pooling="mean", batch_tokens=64))
    a = embedder.embed(TEXTS, progress=False)
    b = embedder.embed(TEXTS, progress=False)
    np.testing.assert_array_equal(a, b)
    perm = [3, 0, 5, 1, 4, 2]
    np.testing.assert_allclose(embedder.embed([TEXTS[i] for i in perm], progress=False), a[perm], atol=1e-5)
    attrs = embedder.attrs()
    assert attrs["n_tokens"] == sum(len(x) for x in tokenizer(TEXTS)["input_ids"])
    assert attrs["tokens_per_s"] > 0 and attrs["pooling"] == "mean" and attrs["dtype"] == "float32"


def test_embed_step_writes_the_chunk_store(tmp_path):
    import pandas as pd

    from density_grpo.pairs import prompt_id, texts_hash

    model_dir = build_tiny_model(tmp_path / "model")
    prompts = tmp_path / "prompts.parquet"
    pd.DataFrame({"prompt_id": [prompt_id(t) for t in TEXTS], "text": TEXTS}).to_parquet(prompts)
    params = {
        "content": texts_hash(TEXTS[2:6]), "rows": [2, 6], "device": "cpu", "dtype": "float32", "model_fingerprint": "fp",
        "embed": {"source": "hidden", "layer": -1, "max_length": 64, "batch_tokens": 128, "pooling": "mean"},
    }  # fmt: skip
    out = {"chunk": str(tmp_path / "chunk_1.zarr")}
    figures = embed.run({"prompts": str(prompts), "model": str(model_dir)}, out, params)
    ids, emb, attrs = store.read_chunk(out["chunk"])
    assert ids == [prompt_id(t) for t in TEXTS[2:6]] and emb.shape == (4, 32)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    np.testing.assert_allclose(emb, Embedder(model, tokenizer, embed_config(pooling="mean")).embed(TEXTS[2:6], progress=False), atol=1e-6)
    assert attrs["rows"] == [2, 6] and attrs["content_hash"] == params["content"] and attrs["transform"] == "none"
    assert attrs["model_fingerprint"] == "fp"
    full = [len(x) for x in tokenizer(TEXTS[2:6])["input_ids"]]
    assert store.read_column(out["chunk"], "n_tokens").tolist() == full
    assert store.read_column(out["chunk"], "turns").tolist() == [2, 1, 1, 1]  # a prompt without tags: one turn
    cut = {"chunk": str(tmp_path / "cut.zarr")}
    embed.run({"prompts": str(prompts), "model": str(model_dir)}, cut, {**params, "embed": {**params["embed"], "max_length": 16}})
    assert store.read_column(cut["chunk"], "n_tokens").tolist() == full  # the whole prompt, not the max_length cut
    assert store.read_attrs(cut["chunk"])["n_tokens"] == sum(min(n, 16) for n in full)
    assert figures["n_prompts"] == 4 and figures["tokens_per_s"] > 0
    with pytest.raises(UserError, match="changed since the workflow was planned"):
        embed.run({"prompts": str(prompts), "model": str(model_dir)}, out, {**params, "rows": [1, 5]})


def test_oom_split_and_give_up(tiny, monkeypatch):
    model, tokenizer = tiny
    embedder = Embedder(model, tokenizer, embed_config(pooling="mean", batch_tokens=10_000))
    expected = embedder.embed(TEXTS, progress=False)
    forward = embedder.backbone.forward
    calls = {"oom": 0}

    def oom_once(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 1 and calls["oom"] == 0:
            calls["oom"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(embedder.backbone, "forward", oom_once)
    np.testing.assert_allclose(embedder.embed(TEXTS, progress=False), expected, atol=1e-5)
    assert calls["oom"] == 1

    def oom_always(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(embedder.backbone, "forward", oom_always)
    with pytest.raises(UserError, match="embed.batch_tokens") as err:
        embedder.embed(TEXTS, progress=False)
    assert "model.dtype" in str(err.value)


# -----------------------------------------------------------------------------
# long prompts: windows that carry the KV cache, truncation from the left

LONG = "\n\nHuman: " + " ".join(f"Tell me about item {i} of the list, please." for i in range(8)) + "\n\nAssistant:"


@pytest.mark.parametrize("layer, source", [(-1, "hidden"), (1, "hidden"), (-1, "logits"), (-1, "true-logits")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_windows_match_one_pass(tiny, monkeypatch, layer, source, dtype):
    """A long prompt in windows of 32 positions (KV cache carried) embeds like one pass: exactly, up to rounding."""
    model, tokenizer = tiny
    if source == "true-logits":
        monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
    model = model.to(dtype)
    try:
        kw = dict(source="hidden" if source == "hidden" else "logits", layer=layer, max_length=256)
        one = Embedder(model, tokenizer, embed_config(pooling="mean", batch_tokens=10_000, **kw))
        windowed = Embedder(model, tokenizer, embed_config(pooling="mean", batch_tokens=32, **kw))
        ids, _ = one.tokenize([LONG, TEXTS[0]])
        assert len(ids[0]) > 150 and windowed.window(1) == 32
        batch = torch.tensor(ids[:1])
        with torch.inference_mode():
            a = one._pooled(batch, torch.ones_like(batch))
            b = windowed._pooled(batch, torch.ones_like(batch))
        tol = 1e-5 if dtype == torch.float32 else 1e-12  # float64: only rounding separates the two
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
        np.testing.assert_allclose(windowed.embed_ids(ids, progress=False), one.embed_ids(ids, progress=False), rtol=1e-5, atol=1e-6)
    finally:
        model.to(torch.float32)


def test_windows_slice_every_per_token_mask(tiny):
    """A right-padded batch of several rows in windows: ids, attention mask and a pooling mask slice together."""
    model, tokenizer = tiny
    embedder = Embedder(model, tokenizer, embed_config(pooling="mean", batch_tokens=10_000))
    ids, _ = embedder.tokenize([LONG, TEXTS[2], TEXTS[4]])
    longest = max(map(len, ids))
    input_ids = torch.full((3, longest), embedder.pad_id)
    attention = torch.zeros((3, longest), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)], attention[row, : len(x)] = torch.tensor(x), 1
    pool = attention * (torch.rand(attention.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    pool[:, 0] = 1
    with torch.inference_mode():
        one = embedder._pooled(input_ids, attention, pool)
        embedder.batch_tokens = 3 * 37  # windows of 37 positions
        windowed = embedder._pooled(input_ids, attention, pool)
        full = embedder._pooled(input_ids, attention)
    torch.testing.assert_close(windowed, one, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, one, atol=1e-3)  # the pooling mask mattered


def test_max_length_keeps_the_end(tiny):
    """embed.max_length keeps the last tokens (the final request) and counts the prompts it cut."""
    model, tokenizer = tiny
    embedder = Embedder(model, tokenizer, embed_config(pooling="mean", max_length=12))
    full = tokenizer(LONG)["input_ids"]
    ids, masks = embedder.tokenize([LONG, "Hi"])
    assert [len(m) for m in masks] == [len(x) for x in ids]  # the pooling mask is cut with the ids
    assert ids == [full[-12:], tokenizer("Hi")["input_ids"]]
    assert tokenizer.decode(ids[0]).endswith("please.\n\nAssistant:")
    attrs = embedder.attrs()
    assert (attrs["n_truncated"], attrs["longest_tokens"], attrs["truncation"]) == (1, len(full), "left")
    # a leading special token (BOS) stays in front of the kept tail
    bos = tokenizer.bos_token_id
    monkey = Embedder(model, tokenizer, embed_config(pooling="mean", max_length=5))
    monkey.tokenizer = lambda texts, **kw: {"input_ids": [[bos, 10, 11, 12, 13, 14, 15]]}
    monkey.tokenizer.all_special_ids, monkey.tokenizer.bos_token_id = [bos], bos
    monkey._tail_chars = 10**9  # the fake tokenizer has no vocabulary: every text tokenized whole
    assert monkey.tokenize(["x"])[0] == [[bos, 12, 13, 14, 15]]


def test_human_pooling_mask_survives_left_truncation(tiny):
    """Left truncation cuts the ids and the pooling mask together: the kept tail pools exactly its human tokens."""
    model, tokenizer = tiny
    text = "\n\nHuman: first question here\n\nAssistant: a long answer " + "word " * 40 + "\n\nHuman: final request\n\nAssistant:"
    whole = Embedder(model, tokenizer, embed_config(pooling="human", max_length=10_000))
    cut = Embedder(model, tokenizer, embed_config(pooling="human", max_length=16))
    (ids_w,), (mask_w,) = whole.tokenize([text])
    (ids_c,), (mask_c,) = cut.tokenize([text])
    assert ids_c == ids_w[-16:] and mask_c == mask_w[-16:] and any(mask_c)
    assert "final request" in tokenizer.decode([t for t, m in zip(ids_c, mask_c) if m])


@pytest.mark.parametrize("pooling", ["mean", "human", "last_turn"])
def test_long_prompts_are_tokenized_from_a_bounded_tail(tiny, pooling):
    """A prompt far longer than embed.max_length tokens: only a tail of tail_chars() characters is tokenized (the
    tokenizer never sees the whole text at once), and the kept ids, pooling mask and whole-prompt token count are
    those of tokenizing it whole."""
    model, tokenizer = tiny
    turn = "\n\nHuman: " + " ".join(f"word{i} ünï ✓ 你好" for i in range(400)) + "\n\nAssistant: fine."
    texts = [turn * 40 + "\n\nHuman: the last question?\n\nAssistant:", "Hi", *DIALOGUES]
    bounded = Embedder(model, tokenizer, embed_config(pooling=pooling, max_length=64))
    with tokenized_lengths(tokenizer) as seen:
        ids, masks = bounded.tokenize(texts)
    assert len(texts[0]) > 10 * bounded.tail_chars() and max(seen) <= max(bounded.tail_chars(), embed.TOKEN_PIECE)
    whole = Embedder(model, tokenizer, embed_config(pooling=pooling, max_length=64))
    whole._tail_chars = 10**12  # no tail: every text tokenized whole (the reference)
    ref_ids, ref_masks = whole.tokenize(texts)
    assert ids == ref_ids and masks == ref_masks and bounded.n_truncated == whole.n_truncated >= 1
    assert abs(bounded.lengths[0] - whole.lengths[0]) <= len(texts[0]) // embed.TOKEN_PIECE + 1
    assert bounded.lengths[1:] == whole.lengths[1:]

"""Unit tests for density_grpo.pairs (stages 1-2) and the shipped sample (no network)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np

import huggingface_hub
import pandas as pd
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors

from density_grpo.pairs import (
    ASSISTANT_TAG,
    PAIR_COLUMNS,
    SAMPLE_PATH,
    load_hh_rlhf,
    _hub_download,
    load_pairs,
    pair_from_hh,
    prompt_id,
    read_local,
    run_prompts,
    split_dialogue,
    texts_hash,
    unique_prompts,
)
from density_grpo.config import DataConfig, load_config
from density_grpo.errors import UserError

SINGLE = "\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for 9 minutes."
MULTI = (
    "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?"
    "\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for 9 minutes."
)


def hh_row(q: str, good: str = "Good answer.", bad: str = "Bad answer.") -> dict:
    return {"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"}


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def user_error(fn, *args) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg, "a UserError must be one line"
    return msg


# -----------------------------------------------------------------------------
# dialogues and hashes


def test_split_dialogue_single_turn():
    prompt, response = split_dialogue(SINGLE)
    assert prompt == "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    assert response == " Simmer it for 9 minutes."
    assert prompt + response == SINGLE


def test_split_dialogue_multi_turn_keeps_earlier_turns():
    prompt, response = split_dialogue(MULTI)
    assert prompt.startswith("\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: How do I boil")
    assert prompt.endswith(ASSISTANT_TAG) and prompt.count(ASSISTANT_TAG) == 2
    assert response == " Simmer it for 9 minutes."


def test_split_dialogue_empty_response_and_no_tag():
    assert split_dialogue("\n\nHuman: hi\n\nAssistant:") == ("\n\nHuman: hi\n\nAssistant:", "")
    with pytest.raises(ValueError):
        split_dialogue("\n\nHuman: no assistant here")


def test_pair_from_hh_shared_prefix():
    rejected = MULTI.replace("Simmer it for 9 minutes.", "Google it.")
    assert pair_from_hh(MULTI, rejected) == (split_dialogue(MULTI)[0], " Simmer it for 9 minutes.", " Google it.")


def test_pair_from_hh_rejected_diverges_earlier():
    """A pair that diverges at an earlier Assistant reply (real HH data has a few) is filed under the shared part."""
    rejected = "\n\nHuman: Hi!\n\nAssistant: What?\n\nHuman: How do I boil an egg?\n\nAssistant: No idea."
    prompt, chosen_response, rejected_response = pair_from_hh(MULTI, rejected)
    assert prompt == "\n\nHuman: Hi!\n\nAssistant:"
    assert prompt + chosen_response == MULTI and prompt + rejected_response == rejected
    with pytest.raises(ValueError, match="different prompts \\(they differ at character 9;"):
        pair_from_hh("\n\nHuman: a?\n\nAssistant: x", "\n\nHuman: b?\n\nAssistant: y")
    with pytest.raises(ValueError, match="'rejected' has no"):
        pair_from_hh(MULTI, "\n\nHuman: something else entirely")


def test_prompt_id_stable_and_format():
    assert prompt_id("hello") == "2cf24dba5fb0a30e"  # sha256("hello") = 2cf24dba5fb0a30e26e8...
    text = "\n\nHuman: Crème brûlée?\n\nAssistant:"
    pid = prompt_id(text)
    assert pid == hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    assert re.fullmatch(r"[0-9a-f]{16}", pid) and int(pid, 16) < 2**64
    assert prompt_id(text + " ") != pid


def test_texts_hash_order_and_boundaries():
    h = texts_hash(["a", "b"])
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert h == texts_hash(iter(["a", "b"]))
    assert h != texts_hash(["b", "a"])
    assert texts_hash(["ab", "c"]) != texts_hash(["a", "bc"])
    assert texts_hash([]) != texts_hash([""])


def test_unique_prompts_first_seen_order_and_counts():
    pairs = pd.DataFrame(
        {
            "prompt": ["p2", "p1", "p2", "p3", "p1", "p2"],
            "topic": ["t2", "t1", "other", "t3", "t1", "t2"],
        }
    )
    u = unique_prompts(pairs)
    assert list(u.columns) == ["prompt_id", "text", "n_pairs", "topic"]
    assert u["text"].tolist() == ["p2", "p1", "p3"]
    assert u["n_pairs"].tolist() == [3, 2, 1] and u["n_pairs"].dtype == "int64"
    assert u["topic"].tolist() == ["t2", "t1", "t3"]
    assert u["prompt_id"].tolist() == [prompt_id(t) for t in ["p2", "p1", "p3"]]


def test_appending_pairs_only_appends_prompts():
    pairs = sample_pairs()
    head, full = unique_prompts(pairs.iloc[:200]), unique_prompts(pairs)
    assert len(full) > len(head)
    cols = ["prompt_id", "text", "topic"]
    pd.testing.assert_frame_equal(full.iloc[: len(head)][cols], head[cols])


# -----------------------------------------------------------------------------
# read_local


def test_read_local_jsonl_hh_rows(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [hh_row("q1"), "", hh_row("q2", bad="Nope.")])  # blank line skipped
    df = read_local(path)
    assert list(df.columns) == ["prompt", "chosen", "rejected"]
    assert df["prompt"].tolist() == ["\n\nHuman: q1\n\nAssistant:", "\n\nHuman: q2\n\nAssistant:"]
    assert df["rejected"].tolist() == [" Bad answer.", " Nope."]


def test_read_local_jsonl_gz_explicit_rows_with_metadata(tmp_path):
    rows = [
        {"prompt": "P1", "chosen": "c1", "rejected": "r1", "topic": "bees", "subset": "s"},
        {"prompt": "P2", "chosen": "c2", "rejected": "r2", "extra": 1},
    ]
    df = read_local(write_jsonl(tmp_path / "pairs.jsonl.gz", rows, gz=True))
    assert df[["prompt", "chosen", "rejected"]].values.tolist() == [["P1", "c1", "r1"], ["P2", "c2", "r2"]]
    assert df["topic"].tolist() == ["bees", ""] and df["subset"].tolist() == ["s", ""]


def test_read_local_parquet_both_styles(tmp_path):
    path = tmp_path / "hh.parquet"
    pd.DataFrame([hh_row("q1"), hh_row("q2")]).to_parquet(path)
    assert read_local(path)["chosen"].tolist() == [" Good answer."] * 2
    path = tmp_path / "explicit.parquet"
    pd.DataFrame({"prompt": ["P"], "chosen": ["c"], "rejected": ["r"], "topic": ["t"]}).to_parquet(path)
    assert read_local(path).to_dict("records") == [{"prompt": "P", "chosen": "c", "rejected": "r", "topic": "t"}]


BAD_LINES = {
    "invalid json": ('{"chosen": "x"', "invalid JSON"),
    "missing key": ({"chosen": SINGLE}, "missing key 'rejected'"),
    "missing explicit key": ({"prompt": "p", "chosen": "c"}, "missing key 'rejected'"),
    "non-string": ({"chosen": SINGLE, "rejected": 3}, "'rejected' must be a string"),
    "no assistant tag": ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}, "'chosen' has no"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "empty prompt": ({"prompt": " ", "chosen": "c", "rejected": "r"}, "empty 'prompt'"),
    "different prompts": (
        {"chosen": "\n\nHuman: a?\n\nAssistant: x", "rejected": "\n\nHuman: b?\n\nAssistant: y"},
        "'chosen' and 'rejected' have different prompts (they differ at character 9",
    ),
    "empty human turn": (hh_row(""), "empty Human turn before the last Assistant reply"),
    "whitespace human turn": (hh_row(" \t\n "), "empty Human turn before the last Assistant reply"),
    "no human turn": ({"chosen": "\n\nAssistant: x", "rejected": "\n\nAssistant: y"}, "no '\\n\\nHuman:' turn"),
    "lone surrogate": ('{"chosen": "\\n\\nHuman: a\\ud800\\n\\nAssistant: x", "rejected": "r"}', "'chosen' holds a lone surrogate '\\ud800' at character 10"),
    "lone surrogate topic": ({**hh_row("q"), "topic": "\udfff"}, "'topic' holds a lone surrogate"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_read_local_errors_name_file_and_line(tmp_path, case):
    bad, expected = BAD_LINES[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [hh_row("q1"), hh_row("q2"), bad])
    msg = user_error(read_local, path)
    assert "bad.jsonl:3" in msg and expected in msg


def test_read_local_parquet_error_names_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame([hh_row("q1"), {"chosen": "no tag", "rejected": "no tag"}]).to_parquet(path)
    msg = user_error(read_local, path)
    assert "bad.parquet row 2" in msg and "'chosen' has no" in msg


def test_read_local_file_level_errors(tmp_path):
    assert "empty file" in user_error(read_local, write_jsonl(tmp_path / "empty.jsonl", []))
    assert "empty file" in user_error(read_local, write_jsonl(tmp_path / "blank.jsonl.gz", ["", "  "], gz=True))
    assert "not found" in user_error(read_local, tmp_path / "missing.jsonl")
    (tmp_path / "pairs.csv").write_text("chosen,rejected\n")
    assert "pairs.csv" in user_error(read_local, tmp_path / "pairs.csv")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    assert "broken.jsonl.gz" in user_error(read_local, tmp_path / "broken.jsonl.gz")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    assert "broken.parquet" in user_error(read_local, tmp_path / "broken.parquet")


# -----------------------------------------------------------------------------
# HH-RLHF


def make_mirror(root: Path, split: str = "train") -> Path:
    for subset, n in [("harmless-base", 2), ("helpful-base", 3)]:
        (root / subset).mkdir(parents=True, exist_ok=True)
        write_jsonl(root / subset / f"{split}.jsonl.gz", [hh_row(f"{subset} q{i}") for i in range(n)], gz=True)
    return root


def mirror_files(mirror: Path, subsets: list[str], split: str) -> list[str]:
    return [str(mirror / s / f"{split}.jsonl.gz") for s in subsets]


def test_load_hh_rlhf_from_mirror(tmp_path):
    mirror = make_mirror(tmp_path / "hh")
    subsets = ["helpful-base", "harmless-base"]
    df = load_hh_rlhf(subsets, mirror_files(mirror, subsets, "train"))
    assert df["subset"].tolist() == ["helpful-base"] * 3 + ["harmless-base"] * 2
    assert df["prompt"].iloc[0] == "\n\nHuman: helpful-base q0\n\nAssistant:"


@pytest.mark.parametrize("exc", [hf_errors.LocalEntryNotFoundError("offline"), OSError("network down")])
def test_load_hh_rlhf_offline_error(monkeypatch, exc):
    def fail(**kwargs):
        raise exc

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    msg = user_error(_hub_download, "helpful-base/train.jsonl.gz")
    assert "data.mirror" in msg and "unreachable" in msg and "data.source: local" in msg


def test_load_hh_rlhf_offline_mode_real_call(monkeypatch, tmp_path):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: set the env var and the parsed constant
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert "data.mirror" in user_error(_hub_download, "helpful-base/test.jsonl.gz")


# -----------------------------------------------------------------------------
# load_pairs


def data(source: str, **over) -> DataConfig:
    """The data section of config.yaml with `over` applied, typed."""
    return DataConfig(**{**load_config()["data"], "source": source, **over})


def sample_pairs(max_pairs: int | None = None) -> pd.DataFrame:
    return load_pairs(data("sample", max_pairs=max_pairs), [str(SAMPLE_PATH)])


def test_load_pairs_sample_schema():
    pairs = sample_pairs()
    assert list(pairs.columns) == PAIR_COLUMNS
    assert pairs["pair_id"].is_unique and pairs["pair_id"].iloc[0] == "sample:sample_pairs:0"
    assert (pairs["source"] == "sample").all() and (pairs["topic"] != "").all()
    assert pairs["prompt"].str.startswith("\n\nHuman:").all() and pairs["prompt"].str.endswith(ASSISTANT_TAG).all()
    assert not pairs["chosen"].str.contains(ASSISTANT_TAG, regex=False).any()


def test_load_pairs_max_pairs_is_a_seeded_sample_in_file_order():
    full = sample_pairs()
    kept = sample_pairs(10)
    assert len(kept) == 10 and kept["pair_id"].isin(full["pair_id"]).all()
    rows = full.index[full["pair_id"].isin(kept["pair_id"])]
    pd.testing.assert_frame_equal(kept, full.loc[rows].reset_index(drop=True))  # file order kept
    assert rows.max() >= 10  # not the first 10 rows
    pd.testing.assert_frame_equal(sample_pairs(10), kept)  # the same sample every time
    assert len(sample_pairs(10**9)) == len(full)


def test_max_pairs_samples_every_subset_and_prompts_json_counts_them(tmp_path):
    """Fewer pairs than the first subset holds: the first N of the concatenation would leave the second empty."""
    root = tmp_path / "hh"
    sizes = {"helpful-online": 60, "helpful-rejection-sampled": 40}
    for subset, n in sizes.items():
        (root / subset).mkdir(parents=True)
        write_jsonl(root / subset / "train.jsonl.gz", [hh_row(f"{subset} q{i}") for i in range(n)], gz=True)
    subsets = list(sizes)
    pairs = load_pairs(data("hh-rlhf", subsets=subsets, max_pairs=50), mirror_files(root, subsets, "train"))
    counts = pairs["subset"].value_counts()
    assert len(pairs) == 50 and set(counts.index) == set(subsets)
    assert all(counts[s] >= 10 for s in subsets), counts  # about 30 and 20 expected
    path = tmp_path / "pairs.parquet"
    pairs.to_parquet(path)
    out = {"prompts": str(tmp_path / "prompts.parquet"), "summary": str(tmp_path / "prompts.json")}
    run_prompts({"pairs": str(path)}, out, {})
    summary = json.loads(Path(out["summary"]).read_text())
    assert summary["subsets"] == {s: {"pairs": int(counts[s]), "prompts": int(counts[s])} for s in subsets}


def test_load_pairs_local_and_hh(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl.gz", [hh_row("q1"), hh_row("q2")], gz=True)
    local = load_pairs(data("local", path=str(path)), [str(path)])
    assert local["pair_id"].tolist() == ["local:mine:0", "local:mine:1"]
    assert set(local["subset"]) == {"mine"} and set(local["topic"]) == {""}
    mirror = make_mirror(tmp_path / "hh", split="test")
    subsets = ["harmless-base", "helpful-base"]
    hh = load_pairs(data("hh-rlhf", subsets=subsets, split="test"), mirror_files(mirror, subsets, "test"))
    assert list(hh.columns) == PAIR_COLUMNS and hh["pair_id"].is_unique and len(hh) == 5
    assert hh["pair_id"].iloc[2] == "hh-rlhf:helpful-base/test:0"


def test_unknown_source_names_the_key():
    assert "config key data.source: 'reddit' is not one of" in user_error(data, "reddit")


# -----------------------------------------------------------------------------
# the shipped sample


def test_sample_topic_structure():
    u = unique_prompts(sample_pairs())
    per_topic = u["topic"].value_counts()
    assert (per_topic >= 50).sum() == 3  # dense topics
    assert (per_topic <= 3).sum() >= 20  # rare topics
    assert per_topic[per_topic >= 50].sum() > 0.7 * len(u)
    assert (u["n_pairs"] > 1).any()
    assert u["text"].str.count("Human:").gt(1).any()  # some multi-turn prompts


def test_sample_prompts_unique_ish():
    texts = sample_pairs()["prompt"].drop_duplicates()
    norm = texts.str.lower().str.replace(r"^\s*human:\s*(quick question:|hi!|hey,)?", "", regex=True)
    norm = norm.str.replace(r"[^a-z0-9]+", " ", regex=True).str.strip()
    assert norm.is_unique


def test_sample_rare_prompts_are_lexically_isolated():
    # a model-free proxy of the embedding experiment: mean cosine distance to the 10 nearest TF-IDF neighbours
    u = unique_prompts(sample_pairs())
    docs = [re.findall(r"[a-z']+", t.lower()) for t in u["text"]]
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    x = np.zeros((len(docs), len(vocab)))
    for i, d in enumerate(docs):
        for w in d:
            x[i, vocab[w]] += 1
    x *= np.log(len(docs) / (x > 0).sum(0))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    knn_dist = 1 - np.sort(sim, axis=1)[:, -10:].mean(1)
    dense = u["topic"].isin(u["topic"].value_counts().index[:3]).to_numpy()
    assert knn_dist[~dense].min() > np.median(knn_dist[dense])


def test_sample_length_does_not_predict_preference():
    pairs = sample_pairs()
    chosen_longer = (pairs["chosen"].str.len() > pairs["rejected"].str.len()).mean()
    assert 0.35 <= chosen_longer <= 0.65, f"chosen is longer in {chosen_longer:.1%} of the sample pairs"


def test_read_local_unreadable_file(tmp_path, deny_open):
    """An unreadable file is one line naming it (root ignores chmod, so the open is made to fail)."""
    path = write_jsonl(tmp_path / "pairs.jsonl", [hh_row("q1")])
    deny_open(lambda p: p == str(path))
    assert user_error(read_local, path) == f"{path}: cannot read (Permission denied)"

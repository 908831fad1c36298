"""The bad-input corpus: every case fails with one line naming the file/line/key, no traceback, and the failing
stage leaves no artifact.

Cases run the real stage functions through the real step runner (`cli.run_step`, as the Snakemake scripts do)
in this process, so the whole corpus takes seconds; tests/test_resume.py and test_pipeline.py show the same lines
through Snakemake itself.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_pairs, write_jsonl
from snakemake.iocontainers import Namedlist

from density_grpo import density, embed, evaluate, grpo, models, pairs, reward
from density_grpo.cli import run_step
from density_grpo.config import check_prompt_counts, load_config, schema
from density_grpo.errors import UserError
from density_grpo.store import write_chunk

HH = "\n\nHuman: {q}\n\nAssistant: {a}"
GOOD = {"chosen": HH.format(q="q?", a="yes"), "rejected": HH.format(q="q?", a="no")}
FINGERPRINT = "0" * 64


class Smk:
    """The parts of Snakemake's `snakemake` object that run_step reads."""

    def __init__(self, rule: str, input: dict, output: dict, params: dict, log: Path):
        self.rule, self.threads, self.resources = rule, torch.get_num_threads(), {}
        self.input, self.output, self.params = (Namedlist(fromdict=d) for d in (input, output, params))
        self.log, self.wildcards = Namedlist(fromdict={"log": str(log)}), Namedlist()


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    logging.basicConfig(level=logging.WARNING, handlers=[logging.NullHandler()], force=True)


def run_failing(tmp: Path, rule: str, step: Callable, input: dict, output: dict, params: dict) -> str:
    """Run a step that must fail: exit 1, one ERROR line and no traceback in its log, no output, no temporaries."""
    log = tmp / "logs" / f"{rule}.log"
    log.parent.mkdir(exist_ok=True)
    with pytest.raises(SystemExit) as e:
        run_step(Smk(rule, input, output, params, log), step)
    assert e.value.code == 1
    text = log.read_text()
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in text, text
    for path in output.values():
        assert not Path(path).exists(), f"{rule} left {path}"
    assert not [p for p in tmp.rglob("*") if ".tmp-" in p.name], "temporaries left behind"
    return errors[0].split(" ERROR ", 1)[1]


# -----------------------------------------------------------------------------
# fixtures: good inputs of every stage, each case breaks one


def prompts_file(tmp: Path, n_dense: int = 26) -> Path:
    """prompts.parquet of the tiny pairs (30 prompts by default)."""
    path = tmp / "prompts.parquet"
    prompts = pairs.unique_prompts(pairs.read_local(write_jsonl(tiny_pairs(n_dense), tmp / "ok.jsonl")))
    prompts.to_parquet(path, index=False)
    return path


def chunk_files(tmp: Path, sizes=(10, 10, 10)) -> list[str]:
    """Chunk stores of random embeddings for the tiny prompts, as the embed step writes them."""
    ids = pd.read_parquet(prompts_file(tmp))["prompt_id"].tolist()
    x = np.random.default_rng(0).normal(size=(sum(sizes), 16)).astype(np.float32)
    attrs = {"model": "m", "model_fingerprint": FINGERPRINT, "source": "hidden", "layer": 2, "pooling": "mean-masked"}
    paths, start = [], 0
    for i, n in enumerate(sizes):
        paths.append(str(tmp / "embed" / f"chunk_{i}.zarr"))
        write_chunk(paths[-1], ids[start : start + n], x[start : start + n], attrs)
        start += n
    return paths


def model_copy(tmp: Path, tiny_model: Path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp / "model"))


# -----------------------------------------------------------------------------
# data: rule pairs, one bad line (or file) each


def pairs_case(tmp: Path, lines: list | bytes, name: str = "bad.jsonl") -> tuple:
    path = tmp / name
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in [GOOD, GOOD, *lines]))
    return pairs.run, {"files": [str(path)]}, {"pairs": str(tmp / "out/pairs.parquet")}, {"data": {"source": "local", "max_pairs": None}}


LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 13051\n"


def pairs_dir_case(tmp: Path) -> tuple:
    (tmp / "data.jsonl").mkdir()
    step, inputs, outputs, params = pairs_case(tmp, [])
    return step, {"files": [str(tmp / "data.jsonl")]}, outputs, params


def parquet_case(tmp: Path, frame: pd.DataFrame | None) -> tuple:
    path = tmp / "bad.parquet"
    if frame is None:
        path.write_bytes(b"PAR1 this is not a parquet file")
    else:
        frame.to_parquet(path)
    return pairs.run, {"files": [str(path)]}, {"pairs": str(tmp / "out/pairs.parquet")}, {"data": {"source": "local", "max_pairs": None}}


DATA = {
    "invalid JSON": (lambda t: pairs_case(t, ['{"chosen": "x"']), "bad.jsonl:3: invalid JSON (Expecting"),
    "missing key": (lambda t: pairs_case(t, [{"chosen": GOOD["chosen"]}]), "bad.jsonl:3: missing key 'rejected'"),
    "non-string value": (lambda t: pairs_case(t, [{**GOOD, "rejected": 3}]), "bad.jsonl:3: 'rejected' must be a string, got int"),
    "not an object": (lambda t: pairs_case(t, ["[1, 2]"]), "bad.jsonl:3: expected a JSON object, got list"),
    "no Assistant tag": (
        lambda t: pairs_case(t, [{"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}]),
        "bad.jsonl:3: 'chosen' has no '\\n\\nAssistant:' tag",
    ),
    "different prompts": (
        lambda t: pairs_case(t, [{"chosen": HH.format(q="a?", a="x"), "rejected": HH.format(q="b?", a="y")}]),
        "bad.jsonl:3: 'chosen' and 'rejected' have different prompts (they differ at character 9;",
    ),
    "empty Human turn": (
        lambda t: pairs_case(t, [{"chosen": HH.format(q="", a="x"), "rejected": HH.format(q="", a="y")}]),
        "bad.jsonl:3: empty Human turn before the last Assistant reply",
    ),
    "whitespace Human turn": (
        lambda t: pairs_case(t, [{"chosen": HH.format(q=" \t ", a="x"), "rejected": HH.format(q=" \t ", a="y")}]),
        "bad.jsonl:3: empty Human turn before the last Assistant reply",
    ),
    "no Human turn": (
        lambda t: pairs_case(t, [{"chosen": "\n\nAssistant: x", "rejected": "\n\nAssistant: y"}]),
        "bad.jsonl:3: no '\\n\\nHuman:' turn before the last Assistant reply",
    ),
    "lone surrogate": (
        lambda t: pairs_case(t, ['{"chosen": "\\n\\nHuman: a\\ud800?\\n\\nAssistant: x", "rejected": "r"}']),
        "bad.jsonl:3: 'chosen' holds a lone surrogate '\\ud800' at character 10 (not valid Unicode)",
    ),
    "invalid UTF-8": (
        lambda t: pairs_case(t, json.dumps(GOOD).encode() + b"\n" + b'{"chosen": "\xff\xfe"}\n'),
        "bad.jsonl:2: not valid UTF-8",
    ),
    "empty explicit prompt": (
        lambda t: pairs_case(t, [{"prompt": "  ", "chosen": "c", "rejected": "r"}]),
        "bad.jsonl:3: empty 'prompt'",
    ),
    "empty file": (lambda t: pairs_case(t, b""), "bad.jsonl: no pairs (empty file)"),
    "truncated gzip": (
        lambda t: pairs_case(t, gzip.compress(json.dumps(GOOD).encode() * 50)[:40], "bad.jsonl.gz"),
        "bad.jsonl.gz: not a valid gzip file",
    ),
    "not parquet": (lambda t: parquet_case(t, None), "bad.parquet: cannot read parquet ("),
    "parquet without rejected": (
        lambda t: parquet_case(t, pd.DataFrame({"chosen": [GOOD["chosen"]]})),
        "bad.parquet row 1: missing key 'rejected'",
    ),
    "unsupported file type": (lambda t: pairs_case(t, b"a,b\n", "bad.csv"), "bad.csv: unsupported file type"),
    "null value": (lambda t: pairs_case(t, [{**GOOD, "rejected": None}]), "bad.jsonl:3: 'rejected' must be a string, got null"),
    "number past the parser's limit": (
        lambda t: pairs_case(t, ['{"chosen": ' + "1" * 5000 + ', "rejected": "r"}']),
        "bad.jsonl:3: JSON that Python's parser refuses (Exceeds the limit (4300 digits) for integer string conversion",
    ),
    "nesting past the parser's limit": (
        lambda t: pairs_case(t, ['{"chosen": ' + "[" * 200_000 + "]" * 200_000 + "}"]),
        "bad.jsonl:3: JSON nested too deeply for Python's parser",
    ),
    "Git LFS pointer (.jsonl)": (
        lambda t: pairs_case(t, LFS, "bad.jsonl"), "bad.jsonl: this is a Git LFS pointer, fetch the real file with git lfs pull"
    ),
    "Git LFS pointer (.jsonl.gz)": (
        lambda t: pairs_case(t, LFS, "bad.jsonl.gz"), "bad.jsonl.gz: this is a Git LFS pointer, fetch the real file with git lfs pull"
    ),
    "Git LFS pointer (.parquet)": (
        lambda t: pairs_case(t, LFS, "bad.parquet"), "bad.parquet: this is a Git LFS pointer, fetch the real file with git lfs pull"
    ),
    "gzip bytes under .jsonl": (
        lambda t: pairs_case(t, gzip.compress(json.dumps(GOOD).encode() + b"\n"), "bad.jsonl"),
        "bad.jsonl: gzip-compressed data under a name without .gz (rename it to bad.jsonl.gz)",
    ),
    "a directory as the data file": (
        lambda t: pairs_dir_case(t), "data.jsonl: is a directory, expected a .jsonl, .jsonl.gz or .parquet file"
    ),
}


@pytest.mark.parametrize("case", list(DATA))
def test_bad_data(tmp_path, case):
    make, expected = DATA[case]
    step, inputs, outputs, params = make(tmp_path)
    assert expected in run_failing(tmp_path, "pairs", step, inputs, outputs, params)


def test_hh_rlhf_clone_without_lfs(tmp_path):
    """A mirror made by cloning the hub's dataset repository without Git LFS holds pointer files, not data."""
    path = tmp_path / "hh" / "helpful-base" / "train.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(LFS)
    params = {"data": {"source": "hh-rlhf", "subsets": ["helpful-base"], "split": "train", "max_pairs": None}}
    outputs = {"pairs": str(tmp_path / "out/pairs.parquet")}
    line = run_failing(tmp_path, "pairs", pairs.run, {"files": [str(path)]}, outputs, params)
    assert line == f"{path}: this is a Git LFS pointer, fetch the real file with git lfs pull"


def test_unreadable_data_file(tmp_path, deny_open):
    """Root ignores file modes, so the open is made to fail; tests/test_resume.py shows the config-time check."""
    step, inputs, outputs, params = pairs_case(tmp_path, [])
    deny_open(lambda path: path.endswith("bad.jsonl"))
    assert run_failing(tmp_path, "pairs", step, inputs, outputs, params).endswith("bad.jsonl: cannot read (Permission denied)")


# -----------------------------------------------------------------------------
# the checks that need the number of prompts: run by the rules' input functions right after the prompts checkpoint,
# before any model work (tests/test_resume.py shows what Snakemake prints)

CHECKS = {
    "knn.k >= prompts": ({"k": 30}, {}, {}, "config key knn.k: 30 neighbours need at least 31 prompts, the data has 30"),
    "eval.pool takes all": ({}, {"pool": 30}, {}, "config key eval.pool: 30 held-out prompts leave none of the 30 prompts for training"),
    "rm.eval_fraction takes all": ({}, {}, {"eval_fraction": 0.99}, "config key rm.eval_fraction: 0.99 holds out all 30 prompts from the reward model"),
}


@pytest.mark.parametrize("case", list(CHECKS))
def test_prompt_count_checks(case):
    knn, ev, rm, expected = CHECKS[case]
    small = {"pool": 8, "prompts": 4, "curve_prompts": 2}
    cfg = load_config({"knn": {"k": 3, **knn}, "eval": {**small, **ev}, "rm": {"eval_fraction": 0.1, **rm}})
    with pytest.raises(UserError) as e:
        check_prompt_counts(30, cfg)
    assert str(e.value) == expected
    assert check_prompt_counts(31, load_config({"knn": {"k": 30}, "eval": small})) == {
        "n_prompts": 31, "n_eval": 8, "n_train": 23, "n_rm_eval": 4,
    }  # fmt: skip


# -----------------------------------------------------------------------------
# model folders: rules embed_chunk and model_card


def break_model(kind: str) -> Callable[[Path], None]:
    def apply(model: Path) -> None:
        weights = model / "model.safetensors"
        if kind == "corrupt safetensors header":
            data = bytearray(weights.read_bytes())
            data[:8] = b"\xff" * 8
            weights.write_bytes(bytes(data))
        elif kind == "truncated safetensors":
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        elif kind == "no weights":
            weights.unlink()
        elif kind == "no tokenizer":
            (model / "tokenizer.json").unlink()
        elif kind == "broken tokenizer.json":
            (model / "tokenizer.json").write_text("{not json")
        elif kind == "config without model_type":
            (model / "config.json").write_text("{}")
        elif kind == "no config.json":
            (model / "config.json").unlink()

    return apply


MODELS = {
    "corrupt safetensors header": "cannot load the model (SafetensorError: Error while deserializing header",
    "truncated safetensors": "cannot load the model (SafetensorError: Error while deserializing header",
    "no weights": "cannot load the model (OSError: Error no file named model.safetensors",
    "no tokenizer": "no tokenizer files (expected one of tokenizer.json, tokenizer.model, vocab.json, tiktoken.model)",
    "broken tokenizer.json": "cannot load the tokenizer (JSONDecodeError: Expecting property name",
    "config without model_type": "cannot load the model (ValueError: Unrecognized model",
    "no config.json": "not a Hugging Face model folder (no config.json)",
}


@pytest.mark.parametrize("case", list(MODELS))
def test_bad_model_folder(tmp_path, tiny_model, case):
    model = model_copy(tmp_path, tiny_model)
    break_model(case)(model)
    prompts = prompts_file(tmp_path)
    texts = pd.read_parquet(prompts)["text"].tolist()[:8]
    params = {
        "content": pairs.texts_hash(texts), "rows": [0, 8], "device": "cpu", "dtype": "float32",
        "model_fingerprint": FINGERPRINT, "embed": {"source": "hidden", "layer": -1, "max_length": 64, "batch_tokens": 256, "pooling": "mean"},
    }  # fmt: skip
    inputs, outputs = {"prompts": str(prompts), "model": str(model)}, {"chunk": str(tmp_path / "embed/chunk_0.zarr")}
    line = run_failing(tmp_path, "embed_chunk", embed.run, inputs, outputs, params)
    assert line.startswith(f"{model}: ") and MODELS[case] in line


def test_broken_config_json(tmp_path, tiny_model):
    model = model_copy(tmp_path, tiny_model)
    (model / "config.json").write_text('{"model_type": "llama",')
    inputs, outputs = {"model": str(model)}, {"card": str(tmp_path / "model.json")}
    line = run_failing(tmp_path, "model_card", models.run_card, inputs, outputs, {"name": "m", "model_fingerprint": FINGERPRINT})
    assert line.startswith(f"{model}/config.json: not valid JSON (Expecting")


# -----------------------------------------------------------------------------
# damaged artifacts: chunk stores read by the weights rule, parquet read by the prompts rules


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    data[offset + 1] ^= 0x0F
    path.write_bytes(bytes(data))


def write_old_chunk(path: Path) -> None:
    """A chunk without content hashes, as written before integrity checks."""
    import zarr

    shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("embeddings", shape=(10, 16), dtype="float32")[...] = 1.0
    group.create_array("prompt_id", shape=(10,), dtype="uint64")[...] = np.arange(10, dtype=np.uint64)


def other_model(path: Path) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["model_fingerprint"] = "f" * 64
    (path / "zarr.json").write_text(json.dumps(meta))


CHUNKS = {
    "flipped embedding bytes": (lambda c: flip(c / "embeddings/c/0/0", 200), "'embeddings' does not match its recorded sha256 (corrupted or modified)"),
    "flipped prompt_id bytes": (lambda c: flip(c / "prompt_id/c/0", 20), "'prompt_id' does not match its recorded sha256"),
    "missing array chunk": (lambda c: (c / "embeddings/c/0/0").unlink(), "'embeddings' does not match its recorded sha256"),
    "corrupt zarr.json": (lambda c: (c / "zarr.json").write_text("{not json"), "damaged chunk store (JSONDecodeError: Expecting"),
    "corrupt array metadata": (lambda c: (c / "embeddings/zarr.json").write_text("[]"), "damaged chunk store (embeddings: "),
    "no content hash": (write_old_chunk, "no content hash recorded for 'prompt_id' (written by an older version)"),
    "chunk from another model": (other_model, "embedded with model_fingerprint='ffff"),
}


@pytest.mark.parametrize("case", list(CHUNKS))
def test_damaged_chunk(tmp_path, case):
    damage, expected = CHUNKS[case]
    chunks = chunk_files(tmp_path)
    damage(Path(chunks[1]))
    params = {"knn": {"k": 3, "index": "flat"}, "density": {"alpha": 1.0, "eps": 1e-6, "max_ratio": None, "postprocess": "none", "length_residual": "none"}}
    outputs = {"weights": str(tmp_path / "weights.parquet"), "meta": str(tmp_path / "metadata.json")}
    inputs = {"chunks": chunks, "prompts": str(tmp_path / "prompts.parquet")}
    line = run_failing(tmp_path, "knn_weights", density.run, inputs, outputs, params)
    assert line.startswith(f"{chunks[1]}: ") and expected in line
    if case not in ("chunk from another model", "no content hash"):
        assert line.endswith(f"delete it (rm -r {chunks[1]}) and rerun snakemake to rebuild it")


# -----------------------------------------------------------------------------
# readers verify what they read: chunk ids against prompts.parquet, weights when written and when read

DENSITY_PARAMS = {"knn": {"k": 3, "index": "flat"}, "density": {"alpha": 1.0, "eps": 1e-6, "max_ratio": None, "postprocess": "none", "length_residual": "none"}}


def knn_weights_case(tmp: Path, chunks: list[str]) -> str:
    outputs = {"weights": str(tmp / "weights.parquet"), "meta": str(tmp / "metadata.json")}
    inputs = {"chunks": chunks, "prompts": str(tmp / "prompts.parquet")}
    return run_failing(tmp, "knn_weights", density.run, inputs, outputs, DENSITY_PARAMS)


def foreign_chunk(tmp: Path, chunks: list[str]) -> None:
    """Chunk 1 replaced by a valid store (same model, good hashes) of other prompts."""
    x = np.random.default_rng(1).normal(size=(10, 16)).astype(np.float32)
    attrs = {"model": "m", "model_fingerprint": FINGERPRINT, "source": "hidden", "layer": 2, "pooling": "mean-masked"}
    shutil.rmtree(chunks[1])
    write_chunk(chunks[1], [f"{i:016x}" for i in range(1, 11)], x, attrs)


def swapped_chunks(tmp: Path, chunks: list[str]) -> None:
    """Chunks 0 and 2 swapped (e.g. restored from a listing in the wrong order)."""
    shutil.move(chunks[0], tmp / "c0")
    shutil.move(chunks[2], chunks[0])
    shutil.move(tmp / "c0", chunks[2])


STALE = {
    "chunk of other prompts": (
        foreign_chunk, 1, lambda c: f"{c[1]}: its 10 prompt ids are not rows 10..19 of", lambda c: f"(rm -r {c[1]}) and rerun snakemake"
    ),
    "chunks out of order": (
        swapped_chunks, 0, lambda c: f"{c[0]}: its 10 prompt ids are not rows 0..9 of", lambda c: f"(1 more chunks differ too); delete them (rm -r {c[0]} {c[2]})"
    ),
    "last chunk short": (
        None, 2, lambda c: f"{c[2]}: the chunk stores hold 29 prompts but", lambda c: f"delete it (rm -r {c[2]}) and rerun snakemake"
    ),
}


@pytest.mark.parametrize("case", list(STALE))
def test_chunks_are_the_prompts_in_order(tmp_path, case):
    """A foreign or stale chunk (valid hashes, same model) fails before any search, naming it; deleting what the
    line names lets its embed_chunk job rebuild it (chunk i holds the rows after chunk i-1's)."""
    damage, _, head, tail = STALE[case]
    chunks = chunk_files(tmp_path, (10, 10, 9) if damage is None else (10, 10, 10))
    if damage is not None:
        damage(tmp_path, chunks)
    line = knn_weights_case(tmp_path, chunks)
    assert line.startswith(head(chunks)) and tail(chunks) in line, line


def test_extreme_alpha_weights_are_not_written(tmp_path, monkeypatch):
    """Weights that came out non-finite (here forced: the schema bounds alpha) are refused before they are written."""
    chunks = chunk_files(tmp_path)
    real = density.density_weights
    monkeypatch.setattr(density, "density_weights", lambda *a: (real(*a)[0], np.full(30, np.nan)))
    line = knn_weights_case(tmp_path, chunks)
    assert line.startswith(f"{tmp_path / 'weights.parquet'}: 30 weights are not finite and positive (row 0: nan); not written")


def good_weights(tmp: Path) -> pd.DataFrame:
    ids = pd.read_parquet(prompts_file(tmp))["prompt_id"]
    return pd.DataFrame({"prompt_id": ids, "weight": np.full(len(ids), 1.0 / len(ids))})


WEIGHTS = {
    "NaN weight": (lambda w: w.assign(weight=w["weight"].where(w.index != 3, np.nan)), "1 weights are not finite and positive (row 3: nan)"),
    "negative weight": (lambda w: w.assign(weight=w["weight"].where(w.index != 5, -w["weight"])), "1 weights are not finite and positive (row 5: -0.0333"),
    "infinite weight": (lambda w: w.assign(weight=w["weight"].where(w.index != 0, np.inf)), "1 weights are not finite and positive (row 0: inf)"),
    "zero weight": (lambda w: w.assign(weight=w["weight"].where(w.index != 1, 0.0)), "1 weights are not finite and positive (row 1: 0.0)"),
    "weights not normalised": (lambda w: w.assign(weight=w["weight"] * 2), "the weights sum to 2, not 1"),
    "weight rows missing": (lambda w: w.iloc[:-4].assign(weight=1.0 / 26), "no weight for"),
    "repeated prompt_id": (lambda w: w.assign(prompt_id=w["prompt_id"].where(w.index != 2, w["prompt_id"][1])), "appears more than once"),
}


def weights_reader(tmp: Path, reader: str, weights: Path) -> tuple:
    """The real step of a stage that reads weights.parquet (GRPO's density arm, evaluation), with inputs that would
    load models only after the weights were read."""
    prompts, model = str(tmp / "prompts.parquet"), str(tmp / "model")
    if reader == "grpo":
        params = {
            "grpo": {"processes": 1}, "eval": {"pool": 8, "curve_prompts": 2}, "seed": 0, "policy_seed": 0, "device": "cpu",
            "dtype": "float32", "train_precision": "float32",
        }  # fmt: skip
        names = ("model", "metrics", "curves", "curve_embeddings", "summary", "draws")
        inputs = {"prompts": prompts, "weights": str(weights), "model": model}
        return grpo.run, inputs, {n: str(tmp / "out" / n) for n in names}, params
    params = {
        "eval": {"pool": 8, "prompts": 4, "rare_fraction": 0.5, "rare_quantile": 0.25}, "rm": {}, "name": "base",
        "sets": 2, "seed": 0, "device": "cpu", "dtype": "float32",
    }  # fmt: skip
    inputs = {"prompts": prompts, "weights": str(weights), "policy": model, "base": model, "rm": model}
    return evaluate.run, inputs, {"eval": str(tmp / "out/base.json"), "embeddings": str(tmp / "out/base.npz")}, params


@pytest.mark.parametrize("reader", ["grpo", "evaluate_model"])
@pytest.mark.parametrize("case", list(WEIGHTS))
def test_readers_check_the_weights(tmp_path, case, reader):
    """A hand-edited or damaged weights.parquet stops the density arm and the evaluation before any model is loaded,
    with advice that works (a deleted weights.parquet is rebuilt by its rule)."""
    edit, expected = WEIGHTS[case]
    weights = tmp_path / "weights.parquet"
    edit(good_weights(tmp_path)).to_parquet(weights, index=False)
    step, inputs, outputs, params = weights_reader(tmp_path, "grpo" if reader == "grpo" else "evaluate", weights)
    line = run_failing(tmp_path, reader, step, inputs, outputs, params)
    assert line.startswith(f"{weights}: ") and expected in line, line
    assert line.endswith(f"delete it (rm -r {weights}) and rerun snakemake to rebuild it"), line


# -----------------------------------------------------------------------------
# writing outputs: a full disk or a folder the job may not write names the output


WRITES = {
    "disk full (no file name)": (lambda tmp: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "cannot write (No space left on device)"),
    "read-only results folder": (
        lambda tmp: PermissionError(errno.EACCES, "Permission denied", str(tmp / "out" / ".pairs.parquet.tmp-1")), "cannot write (Permission denied)"
    ),
    "read-only file system": (lambda tmp: OSError(errno.EROFS, os.strerror(errno.EROFS)), "cannot write (Read-only file system)"),
    "disk full inside a library": (lambda tmp: RuntimeError("file write failed: No space left on device (os error 28)"), "cannot write (No space left on device)"),
}


@pytest.mark.parametrize("case", list(WRITES))
def test_write_errors_name_the_output(tmp_path, monkeypatch, case):
    error, expected = WRITES[case]
    step, inputs, outputs, params = pairs_case(tmp_path, [])

    def fail(*args, **kwargs):
        raise error(tmp_path)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fail)
    assert run_failing(tmp_path, "pairs", step, inputs, outputs, params) == f"{outputs['pairs']}: {expected}"


def test_reward_model_needs_held_out_pairs_with_a_preference(tmp_path, caplog):
    """Pairs whose chosen and rejected responses are identical: a warning with their count when the pairs are read;
    when the reward model's held-out pairs are all such ties, a clear failure (not an accuracy of n/a)."""
    rows = [{**r, "rejected": r["chosen"]} for r in tiny_pairs()]
    step, inputs, outputs, params = pairs_case(tmp_path, [])
    write_jsonl(rows, Path(inputs["files"][0]))
    with caplog.at_level(logging.WARNING, logger="density_grpo.pairs"):
        df = pairs.load_pairs(pairs.DataConfig.from_params({"source": "local", "max_pairs": None}), inputs["files"])
    assert f"{len(rows)} of {len(rows)} pairs have identical chosen and rejected responses (no preference)" in caplog.text
    df.to_parquet(tmp_path / "pairs.parquet")
    params = {"rm": {"eval_fraction": 0.2, "processes": 1}, "seed": 0, "device": "cpu", "train_precision": "float32"}
    outputs = {"model": str(tmp_path / "rm/model"), "metrics": str(tmp_path / "rm/metrics.json"), "steps": str(tmp_path / "rm/steps.jsonl")}
    inputs = {"pairs": str(tmp_path / "pairs.parquet"), "model": str(tmp_path / "model")}
    line = run_failing(tmp_path, "reward_model", reward.run, inputs, outputs, params)
    assert line.startswith("all ") and "held-out pairs of the reward model have identical chosen and rejected responses" in line, line


def test_damaged_parquet_artifacts(tmp_path):
    """Parquet the stages wrote, damaged afterwards: the runner names the file (found among the job's inputs)."""
    pairs_path = tmp_path / "pairs.parquet"
    pairs_path.write_bytes(b"PAR1" + b"\0" * 64)
    outputs = {"prompts": str(tmp_path / "p.parquet"), "summary": str(tmp_path / "p.json")}
    line = run_failing(tmp_path, "unique_prompts", pairs.run_prompts, {"pairs": str(pairs_path)}, outputs, {})
    assert line.startswith(f"{pairs_path}: cannot read parquet (ArrowInvalid: ")
    prompts = prompts_file(tmp_path)
    flip(prompts, prompts.stat().st_size - 10)  # the footer: pyarrow raises a bare OSError
    params = {
        "content": "x", "rows": [0, 8], "device": "cpu", "dtype": "float32", "model_fingerprint": FINGERPRINT,
        "embed": {"source": "hidden", "layer": -1, "max_length": 64, "batch_tokens": 256, "pooling": "mean"},
    }  # fmt: skip
    inputs, outputs = {"prompts": str(prompts), "model": str(tmp_path)}, {"chunk": str(tmp_path / "chunk_0.zarr")}
    line = run_failing(tmp_path, "embed_chunk", embed.run, inputs, outputs, params)
    assert line.startswith(f"{prompts}: cannot read parquet (OSError: ")


def test_unknown_errors_keep_their_traceback(tmp_path):
    """A bug is not bad input: it is raised with its traceback, not turned into one line."""

    def buggy(input, output, params):
        return {}["missing"]

    log = tmp_path / "bug.log"
    with pytest.raises(KeyError):
        run_step(Smk("bug", {}, {}, {}, log), buggy)
    assert "Traceback" in log.read_text()


# -----------------------------------------------------------------------------
# config: validated when the workflow is read (before any job), one line naming the key

CONFIG = {
    "float chunk_size": ({"embed": {"chunk_size": 8.0}}, "config key embed.chunk_size: expected an integer, got 8.0"),
    "float batch_tokens": ({"embed": {"batch_tokens": 64.0}}, "config key embed.batch_tokens: expected an integer, got 64.0"),
    "float max_length": ({"embed": {"max_length": 64.0}}, "config key embed.max_length: expected an integer, got 64.0"),
    "float knn.k": ({"knn": {"k": 3.0}}, "config key knn.k: expected an integer, got 3.0"),
    "non-integral seed": ({"seed": 1.5}, "config key seed: expected an integer, got 1.5"),
    "run ..": ({"run": ".."}, "config key run: expected a plain name (letters, digits, '-', '_', '.'; not '.' or '..'), got '..'"),
    "run with a slash": ({"run": "a/b"}, "config key run: expected a plain name"),
    "red-team-attempts": (
        {"data": {"source": "hh-rlhf", "subsets": ["red-team-attempts"]}},
        "config key data.subsets.0: 'red-team-attempts' is not one of",
    ),
    "null integer": ({"knn": {"k": None}}, "config key knn.k: expected an integer, got null"),
    "null number": ({"density": {"alpha": None}}, "config key density.alpha: expected a finite number, got null"),
    "null enum": ({"embed": {"pooling": None}}, "config key embed.pooling: null is not one of ['mean', 'human', 'last_turn', 'last']"),
    "null string": ({"model": {"name_or_path": None}}, "config key model.name_or_path: expected string, got null"),
    "string number": ({"grpo": {"learning_rate": "1e-5"}}, "config key grpo.learning_rate: expected a finite number, got '1e-5'"),
    "data.path a directory": (
        {"data": {"source": "local", "path": str(Path(__file__).parent)}},
        f"config key data.path: '{Path(__file__).parent}' is a directory, expected a .jsonl, .jsonl.gz or .parquet file",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG))
def test_bad_config(case):
    override, expected = CONFIG[case]
    with pytest.raises(UserError) as e:
        load_config(override)
    assert expected in str(e.value) and "\n" not in str(e.value)


def numeric_keys(node: dict | None = None, prefix: str = "") -> list[tuple[str, dict]]:
    """Every key of the schema that takes a number (dotted; an array's items as `key.0`), with its sub-schema."""
    node = schema() if node is None else node
    out = []
    for name, sub in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        types = sub.get("type", [])
        if set([types] if isinstance(types, str) else types) & {"number", "integer"}:
            out.append((key, sub))
        elif sub.get("type") == "array" and isinstance(sub.get("items"), dict) and "type" in sub["items"]:
            out += numeric_keys({"properties": {"0": sub["items"]}}, f"{key}.")
        out += numeric_keys(sub, f"{key}.")
    return out


def out_of_range(sub: dict) -> list[tuple[str, object]]:
    """A value past each bound of a numeric sub-schema (an integer key gets an integer)."""
    step = 1 if "integer" in sub["type"] else 1e-3
    cases = [("below minimum", sub["minimum"] - step)] if "minimum" in sub else []
    cases += [("at exclusiveMinimum", sub["exclusiveMinimum"])] if "exclusiveMinimum" in sub else []
    cases += [("above maximum", sub["maximum"] + step)] if "maximum" in sub else []
    cases += [("at exclusiveMaximum", sub["exclusiveMaximum"])] if "exclusiveMaximum" in sub else []
    return cases


def nested(key: str, value: object) -> dict:
    """{"a": {"b": value}} for "a.b"; an array item ("grpo.seeds.0") becomes a one-item list."""
    parts = key.split(".")
    if parts[-1] == "0":
        parts, value = parts[:-1], [value]
    for part in reversed(parts):
        value = {part: value}
    return value  # type: ignore[return-value]


def numeric_cases() -> dict[str, tuple[str, object, str]]:
    cases = {}
    for key, sub in numeric_keys():
        for what, value in [("NaN", math.nan), ("+inf", math.inf), ("-inf", -math.inf), *out_of_range(sub)]:
            expected = "expected an integer" if "integer" in sub["type"] else "expected a finite number"
            if what not in ("NaN", "+inf", "-inf"):
                expected = "minimum" if "inimum" in what else "maximum"
            cases[f"{key} {what}"] = (key, value, expected)
    return cases


NUMERIC = numeric_cases()


def test_every_numeric_key_is_bounded():
    """A key without a bound takes any huge number; the walk below would then test no range for it."""
    assert len(numeric_keys()) >= 40 and ("grpo.seeds.0", schema()["properties"]["grpo"]["properties"]["seeds"]["items"]) in numeric_keys()
    assert [key for key, sub in numeric_keys() if not out_of_range(sub)] == []


@pytest.mark.parametrize("case", list(NUMERIC))
def test_numbers_are_finite_and_in_range(case):
    """Every numeric key of the schema, with NaN, +inf, -inf and a value past each of its bounds: one line naming it."""
    key, value, expected = NUMERIC[case]
    with pytest.raises(UserError) as e:
        load_config(nested(key, value))
    line = str(e.value)
    assert line.startswith(f"config key {key}: ") and expected in line and "\n" not in line, line


def test_seed_in_params_is_checked_like_the_config():
    """A step's section built from its rule's params checks the seed against the same schema bound (numpy's and
    torch's RNGs take seeds below 2**32)."""
    from density_grpo.config import KNNConfig

    with pytest.raises(UserError, match=r"^config key seed: 4294967296 is greater than the maximum of 4294967295$"):
        KNNConfig.from_params({"k": 3, "index": "flat", "seed": 2**32})


def test_yaml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"knn": {"k": 3}}) + "embed: [\n")
    with pytest.raises(UserError, match=r"bad.yaml:4:1: not valid YAML \(expected the node content"):
        load_config(bad)


def test_unreadable_mirror_file(tmp_path):
    """An hh-rlhf mirror file the user cannot read is named when the workflow is read, not inside the job (root
    ignores file modes: tests/deny/sitecustomize.py makes open fail for the path in DENSITY_GRPO_DENY_OPEN)."""
    from conftest import snakemake

    path = tmp_path / "hh" / "helpful-base" / "train.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(json.dumps(GOOD).encode()))
    cfg = tmp_path / "hh.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "hh-rlhf", "subsets": ["helpful-base"], "mirror": str(tmp_path / "hh")}}))
    env = {"PYTHONPATH": str(Path(__file__).parent / "deny"), "DENSITY_GRPO_DENY_OPEN": str(path)}
    res = snakemake(tmp_path, "-n", "--configfile", str(cfg), check=False, env=env)
    assert res.returncode != 0
    assert f"config key data.mirror: cannot read '{path}' (Permission denied)" in res.stderr + res.stdout

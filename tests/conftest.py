"""Shared fixtures: a tiny random model, tiny HH-format data, and a Snakemake runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest
import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOPICS = {
    "cooking": ["bake sourdough bread", "make a risotto", "cook rice without a cooker", "roast a chicken", "fry eggs"],
    "python": ["sort a list in Python", "read a CSV file in Python", "write a Python decorator", "use Python dataclasses"],
}
RARE = ["train a falcon for hunting", "tune a harpsichord", "say hello in Basque", "repair a medieval manuscript"]


def hh(prompt_text: str, answer: str) -> str:
    return f"\n\nHuman: {prompt_text}\n\nAssistant: {answer}"


def tiny_pairs(n_dense: int = 26, start: int = 0) -> list[dict]:
    """HH pairs: dense topics with varied wording plus a few rare prompts (unique prompts, deterministic)."""
    rows = []
    openers = ["How do I", "What is the best way to", "Can you explain how to", "Please tell me how to", "Quick question: how to"]
    dense = [(t, s) for t, subjects in TOPICS.items() for s in subjects]
    for j in range(start, start + n_dense):
        topic, subject = dense[j % len(dense)]
        text = f"{openers[(j // len(dense)) % len(openers)]} {subject}? (case {j})"
        rows.append({"chosen": hh(text, f"Here is a careful answer about how to {subject}."), "rejected": hh(text, "No idea."), "topic": topic})
    if start == 0:
        for r in RARE:
            rows.append({"chosen": hh(f"How do I {r}?", "Step by step, like this."), "rejected": hh(f"How do I {r}?", "Figure it out."), "topic": r})
    return rows


def embed_config(**over):
    """The embed section of config.yaml with `over` applied, typed (what the embed step builds from its params)."""
    from density_grpo.config import EmbedConfig, load_config

    return EmbedConfig(**{**load_config()["embed"], **over})


@contextmanager
def tokenized_lengths(tokenizer):
    """The character lengths of every text `tokenizer` is called on inside the block (a list filled as it runs)."""
    seen: list[int] = []
    cls, real = type(tokenizer), type(tokenizer).__call__

    def spy(self, text, *args, **kwargs):
        seen.extend(len(t) for t in ([text] if isinstance(text, str) else text))
        return real(self, text, *args, **kwargs)

    cls.__call__ = spy
    try:
        yield seen
    finally:
        cls.__call__ = real


def write_jsonl(rows: list[dict], path: Path, mode: str = "w") -> Path:
    with open(path, mode) as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture()
def deny_open(monkeypatch):
    """deny_open(match): make open() raise PermissionError for paths match(path) accepts, as for a file the user
    may not read (root, which runs CI, ignores file modes)."""
    import builtins

    real_open = builtins.open

    def deny(match):
        def fake(file, *args, **kwargs):
            if match(str(file)):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake)

    return deny


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder `build` fills once per test session, shared by pytest-xdist's workers (`make test` runs 2): the first
    worker to ask builds it under a file lock, the others wait for it. Readers copy it before they change it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_model

    return built_once(tmp_path_factory, "models", lambda folder: build_tiny_model(folder / "tiny-llama")) / "tiny-llama"


def tiny_config(workdir: Path, model: Path, pairs: Path, **extra) -> Path:
    """A partial config for a tiny end-to-end run; extra top-level sections are merged in."""
    path = os.path.relpath(pairs, workdir) if Path(pairs).is_relative_to(workdir) else str(pairs)  # copies stay whole
    cfg = {
        "run": "tiny",
        "device": "cpu",
        "data": {"source": "local", "path": path},
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "embed": {"chunk_size": 8, "batch_tokens": 512, "max_length": 64},
        "knn": {"k": 3, "recall_sample": 50},
        "rm": {"max_steps": 2, "batch_size": 4, "max_length": 64, "train_layers": 2},
        "grpo": {"seeds": [0, 1], "steps": 2, "prompts_per_step": 2, "num_generations": 2, "micro_batch": 4, "max_completion_length": 8, "token_chunk": 16},
        "eval": {"pool": 8, "prompts": 6, "samples": 2, "max_new_tokens": 8, "every": 1, "curve_prompts": 2, "curve_samples": 2, "bootstrap": 200},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = workdir / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model) -> Path:
    """The folder of one full run of the tiny config (30 prompts in 4 chunks of 8; 2 arms x 2 seeds), shared by the
    end-to-end tests: they work on a copy (`copy_run`), never in it. Its steps recorded the params they read
    (audit/)."""

    def run(workdir: Path) -> None:
        pairs = write_jsonl(tiny_pairs(), workdir / "pairs.jsonl")
        config = tiny_config(workdir, tiny_model, pairs)
        snakemake(workdir, "--configfile", str(config), env={"DENSITY_GRPO_AUDIT_PARAMS": str(workdir / "audit")})

    return built_once(tmp_path_factory, "finished", run)


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run's folder (mtimes and Snakemake's metadata kept: nothing is out of date in it)."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("audit"))
    return dst


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the repo's workflow in `workdir` (results/ and logs/ go there)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}")
    return res


def planned_jobs(output: str) -> dict[str, int]:
    """Jobs a dry run (-n) would execute, by rule, from Snakemake's 'Job stats' table ({} when nothing to do)."""
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return {}
    counts = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """A TensorBoard run folder's scalars, read back with tensorboard's EventAccumulator: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

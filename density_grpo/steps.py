"""One function per pipeline stage: explicit paths and config in, artifacts out (atomically).

The Snakemake scripts are thin wrappers around these; tests call them directly.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from density_grpo.errors import UserError
from density_grpo.io import write_json, write_parquet

log = logging.getLogger(__name__)


def make_pairs(data_cfg: dict, out: str) -> None:
    """Stage 1: preference pairs -> pairs.parquet."""
    from density_grpo.data import load_pairs

    pairs = load_pairs(data_cfg)
    log.info("%d pairs from %s", len(pairs), data_cfg["source"])
    write_parquet(pairs, out)


def make_prompts(pairs_path: str, out: str) -> None:
    """Stage 2: unique prompts in first-seen order -> prompts.parquet."""
    from density_grpo.data import unique_prompts

    prompts = unique_prompts(pd.read_parquet(pairs_path))
    log.info("%d unique prompts", len(prompts))
    write_parquet(prompts, out)


def make_model(name_or_path: str, out: str) -> None:
    """Stage 3: fetch/convert the model to a safetensors folder."""
    from density_grpo.models import fetch_model

    t = time.perf_counter()
    fetch_model(name_or_path, out)
    log.info("model %s ready at %s in %.1fs", name_or_path, out, time.perf_counter() - t)


def chunk_rows(n_prompts: int, chunk_size: int, i: int) -> slice:
    """Rows of prompts.parquet held by chunk `i`."""
    return slice(i * chunk_size, min((i + 1) * chunk_size, n_prompts))


def embed_chunk(prompts_path: str, model_dir: str, i: int, cfg: dict, out: str) -> dict:
    """Stage 4: embed chunk `i` of the prompts into a Zarr store; returns throughput figures."""
    from density_grpo.data import texts_hash
    from density_grpo.device import resolve
    from density_grpo.embed import Embedder, embed_chunk as write_embeddings
    from density_grpo.models import load_causal_lm

    e = cfg["embed"]
    prompts = pd.read_parquet(prompts_path, columns=["prompt_id", "text"])
    rows = prompts.iloc[chunk_rows(len(prompts), e["chunk_size"], i)]
    if rows.empty:
        raise UserError(f"{prompts_path}: chunk {i} is empty ({len(prompts)} prompts, embed.chunk_size={e['chunk_size']})")
    device, dtype = resolve(cfg)
    model, tok = load_causal_lm(model_dir, dtype=dtype, device=device)
    embedder = Embedder(
        model, tok, source=e["source"], layer=e["layer"], max_length=e["max_length"], batch_tokens=e["batch_tokens"], device=device, dtype=dtype
    )
    texts = rows["text"].tolist()
    attrs = write_embeddings(
        texts,
        rows["prompt_id"].tolist(),
        embedder,
        out,
        {"model": cfg["model"]["name_or_path"], "chunk": i, "device": str(device), "content_hash": texts_hash(texts)},
    )
    log.info("chunk %d: %d prompts, %s tokens, %.0f tokens/s (%s, %s)", i, len(texts), attrs.get("n_tokens"), attrs.get("tokens_per_s", 0), device, dtype)
    return {"n_prompts": len(texts), "n_tokens": attrs.get("n_tokens"), "tokens_per_s": attrs.get("tokens_per_s")}


def make_weights(chunk_paths: list[str], cfg: dict, out_weights: str, out_meta: str) -> None:
    """Stage 5: streamed FAISS k-NN over all chunks -> weights.parquet + metadata.json."""
    from density_grpo.density import compute_weights

    t = time.perf_counter()
    weights, meta = compute_weights(list(chunk_paths), cfg["knn"], cfg["density"], seed=cfg["seed"])
    meta["time_total_s"] = time.perf_counter() - t
    meta["chunks"] = [str(p) for p in chunk_paths]
    meta["provenance"] = provenance(cfg)
    write_parquet(weights, out_weights)
    write_json(meta, out_meta)
    stats = meta.get("weight_stats", {})
    log.info("weights for %d prompts: max/min %.2f, ESS/n %.2f", len(weights), stats.get("max_min_ratio", float("nan")), stats.get("ess_fraction", float("nan")))


def provenance(cfg: dict) -> dict[str, Any]:
    """Config, package versions and git commit: enough to reproduce an artifact."""
    pkgs = {}
    for name in ("density-grpo", "torch", "transformers", "faiss-cpu", "zarr", "numpy", "pandas", "snakemake"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {"config": json.loads(json.dumps(cfg, default=str)), "packages": pkgs, "python": platform.python_version(), "git_commit": git_commit()}


def git_commit() -> str | None:
    """The repo's HEAD commit (with '-dirty' if there are local changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _copy_out(src_dir: str, names: dict[str, str]) -> None:
    """Copy small files out of a checkpoint folder, so reports survive deleting the checkpoint."""
    import shutil

    from density_grpo.io import atomic_path

    for name, dest in names.items():
        with atomic_path(dest) as tmp:
            shutil.copyfile(Path(src_dir) / name, tmp)


def make_reward_model(pairs_path: str, model_dir: str, cfg: dict, out_model: str, out_metrics: str) -> dict:
    """Stage 6a: Bradley-Terry reward model (TRL RewardTrainer) -> HF folder + metrics.json."""
    from density_grpo.reward import train_reward_model

    metrics = train_reward_model(model_dir, pd.read_parquet(pairs_path), cfg, out_model)
    _copy_out(out_model, {"metrics.json": out_metrics})
    return {k: metrics[k] for k in ("eval_accuracy", "steps") if k in metrics}


def train_prompts(prompts_path: str, cfg: dict) -> pd.DataFrame:
    """The prompts GRPO may train on: all but the held-out evaluation prompts."""
    from density_grpo.data import eval_split

    train, _ = eval_split(pd.read_parquet(prompts_path), cfg["eval"]["prompts"], cfg["seed"])
    return train


def make_grpo(prompts_path: str, model_dir: str, sampler: str, cfg: dict, out_model: str, out_metrics: str, out_draws: str, weights_path: str | None = None, rm_dir: str | None = None) -> dict:
    """Stage 6b: one GRPO policy; `density` draws prompts by weight, `uniform` uniformly (same code path)."""
    from density_grpo.grpo import train_grpo

    prompts = train_prompts(prompts_path, cfg)
    weights = None
    if sampler == "density":
        w = pd.read_parquet(weights_path).set_index("prompt_id")["weight"]
        missing = ~prompts["prompt_id"].isin(w.index)
        if missing.any():
            raise UserError(f"{weights_path}: no weight for {int(missing.sum())} prompts (rerun the weights rule)")
        weights = w.loc[prompts["prompt_id"]].to_numpy(dtype="float64")
        weights = weights / weights.sum()  # renormalised over the training prompts (held-out ones removed)
    summary = train_grpo(model_dir, prompts, weights, cfg, out_model, rm_dir=rm_dir)
    _copy_out(out_model, {"metrics.jsonl": out_metrics, "draws.parquet": out_draws})
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}


def make_eval(prompts_path: str, base_dir: str, policy_dir: str, rm_dir: str | None, name: str, cfg: dict, out: str) -> None:
    """Stage 7: diversity and reward of one model's samples on the held-out prompts."""
    from density_grpo.data import eval_split
    from density_grpo.evaluate import evaluate_policy

    _, held = eval_split(pd.read_parquet(prompts_path), cfg["eval"]["prompts"], cfg["seed"])
    result = evaluate_policy(policy_dir, base_dir, held["text"].tolist(), cfg, rm_dir, name)
    write_json(result, out)


def make_comparison(eval_paths: list[str], out_json: str, out_png: str) -> None:
    """Stage 7b: base vs density vs uniform side by side (JSON + PNG)."""
    from density_grpo.evaluate import compare, plot_comparison

    results = {}
    for p in eval_paths:
        r = json.loads(Path(p).read_text())
        results[r.get("model", Path(p).stem)] = r
    comparison = compare(results)
    write_json(comparison, out_json)
    plot_comparison(comparison, out_png)

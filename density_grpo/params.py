"""What each rule declares in `params`: exactly the config keys its step reads, and the values resolved when the
workflow is planned (device, dtype, the FAISS index `auto` picks).

A config change reruns exactly the jobs whose params hold the changed key, so a key appears only where its step
reads it (tests/test_contract.py audits that). rules/common.smk calls these functions; tools/predict_run.py calls
the same ones, so a prediction sees the params a job would. Torch-free: imported when the workflow is parsed.
"""

from __future__ import annotations

from typing import Any, Mapping

from density_grpo.device import plan, plan_train_precision
from density_grpo.index_plan import choose_index

Config = Mapping[str, Any]


def runtime(config: Config) -> dict[str, str]:
    """The device and inference dtype `device` and `model.dtype` resolve to here, and the training precision."""
    device, dtype = plan(config["device"], config["model"]["dtype"])
    return {"device": device, "dtype": dtype, "train_precision": plan_train_precision(device)}


def pairs(config: Config) -> dict:
    data = config["data"]
    keys = ["source", "max_pairs"] + (["subsets", "split"] if data["source"] == "hh-rlhf" else [])
    return {"data": {k: list(dict.fromkeys(data[k])) if k == "subsets" else data[k] for k in keys}}


def embed(config: Config) -> dict:
    return {"embed": {k: config["embed"][k] for k in ("source", "layer", "max_length", "batch_tokens", "pooling")}}


def weights(config: Config, n_prompts: int, dim: int) -> dict:
    """k and the resolved index; the IVF knobs and the seed of IVF's samples only for IVF kinds, each kind's own
    knobs only for it; the density section, `components` only where the post-processing reads it."""
    knn = config["knn"]
    index = choose_index(knn["index"], n_prompts, dim, knn["exact_max"], knn["max_index_gb"])
    out = {"k": knn["k"], "index": index}
    if index != "flat":
        out.update(nlist=knn["nlist"], nprobe=knn["nprobe"], recall_sample=knn["recall_sample"], seed=config["seed"])
    if index == "ivfpq":
        out.update(pq_m=knn["pq_m"], rerank=knn["rerank"])
    if index == "ivfjoin":
        out.update(fix_fraction=knn["fix_fraction"], fix_nprobe=knn["fix_nprobe"])
    density = dict(config["density"])
    if density["postprocess"] not in ("abtt", "whiten"):
        del density["components"]
    return {"knn": out, "density": density}


def reward_model(config: Config) -> dict:
    """The whole rm section (rm.processes included: see `grpo`) and the seed."""
    return {"rm": dict(config["rm"]), "seed": config["seed"]}


def grpo(config: Config) -> dict:
    """The grpo section but the arms and seeds (the wildcards), token_chunk only for the self-certainty reward and
    rm.max_length only for the rm reward; the held-out pool and the curve settings; the config seed (held-out split
    and curve sampling; the run's own seed is the wildcard `policy_seed`).

    grpo.processes is a param, so changing it reruns the job. By design the global batch, the prompt stream and the
    update are the same on any number of processes, but TRL samples each rank's completions from its own seed, so
    a different layout samples other (equally likely) completions: a different policy, not only float reduction
    order. With grpo.keyed_sampling the completions do not depend on the layout either (tests/test_distributed.py:
    the same rewards and weights within float32 noise); the rerun is kept then too, as provenance (the artifact
    records how it was made) and because nothing cheaper than retraining shows the reordered sums were harmless."""
    g = {k: v for k, v in config["grpo"].items() if k not in ("samplers", "seeds")}
    if g["reward"] != "self_certainty":
        del g["token_chunk"]
    out = {"grpo": g, "eval": {k: config["eval"][k] for k in ("pool", "every", "curve_prompts", "curve_samples")}}
    if g["reward"] == "rm":
        out["rm"] = {"max_length": config["rm"]["max_length"]}
    return {**out, "seed": config["seed"]}


EVAL_KEYS = ("pool", "prompts", "rare_fraction", "rare_quantile", "samples", "max_new_tokens", "max_prompt_length")


def evaluate(config: Config, model: str) -> dict:
    """One model's evaluation: `base` (two sample sets: the noise floor), `control` (the base model at
    eval.control_temperature: the positive control) or a policy; sampled at eval.temperature unless the control."""
    ev = {k: config["eval"][k] for k in EVAL_KEYS}
    ev["temperature"] = config["eval"]["control_temperature" if model == "control" else "temperature"]
    rm = {k: config["rm"][k] for k in ("max_length", "batch_size")}
    return {"eval": ev, "rm": rm, "seed": config["seed"], "name": model, "sets": 2 if model == "base" else 1}


def compare(config: Config, runs: list[tuple[str, int]]) -> dict:
    control = config["eval"]["control_temperature"] is not None
    models = [["base", None], *([["control", None]] if control else []), *[[a, s] for a, s in runs]]
    return {
        "models": models,
        "runs": [[a, s] for a, s in runs],
        "eval": {"bootstrap": config["eval"]["bootstrap"], "control_temperature": config["eval"]["control_temperature"]},
        "seed": config["seed"],
    }


def report(config: Config, runs: list[tuple[str, int]]) -> dict:
    """The reference tables of the memory report read the chunk size, the knn section and the GRPO batch shape."""
    rt = runtime(config)
    g = config["grpo"]
    return {
        "run": config["run"],
        "runs": [f"{a}/seed{s}" for a, s in runs],
        "device": rt["device"],
        "dtype": rt["dtype"],
        "warn_fraction": config["memory"]["warn_fraction"],
        "embed": {k: config["embed"][k] for k in ("chunk_size", "batch_tokens")},
        "knn": {k: v for k, v in config["knn"].items() if k != "rerank"},  # all but ivfpq's re-ranking factor
        "grpo": {k: g[k] for k in ("prompts_per_step", "num_generations", "max_completion_length", "token_chunk")},
    }

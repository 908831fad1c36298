"""GRPO step rate and peak memory: the project's train_grpo vs plain TRL GRPOTrainer, same everything else.

    python benchmarks/grpo_step.py [--steps 6] [--repeats 3] [--threads N] [--quick]

Both sides: the real default model (SmolLM2-135M-Instruct) in fp32 (CPU: fp32 master weights, no autocast), the
sample data's prompts, config.yaml's grpo settings (prompts_per_step, num_generations, max_completion_length,
temperature, learning rate, loss) and the same GRPOConfig (density_grpo.grpo.grpo_config), the same reward
function (self-certainty of the policy, make_self_certainty_reward: needs no trained reward model), the same
pad-token setup and the same torch threads.
- project: density_grpo.grpo.train_grpo (WeightedGRPOTrainer with the weighted sampler, here weights from a
  seeded Dirichlet draw so the sampler really weighs), collapse curves off (curve_prompts None);
- TRL: GRPOTrainer with its own sampler;
- project + curves: train_grpo with eval.curve_prompts held-out prompts, every eval.every steps (reported apart).
Each run is a fresh subprocess (its peak RSS is its own: VmHWM); runs alternate project / TRL / project + curves,
`--repeats` times; medians. steps/s: median over steps 2.. of the per-step wall time (step 1 includes warm-up).
The last line is machine-readable: RESULT grpo speed_vs_trl=<project steps/s / TRL's> memory_vs_trl=<peak ratio>
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from common import ROOT, default_model, machine, peak_rss_bytes, result, table


def config() -> dict:
    with open(os.path.join(ROOT, "config.yaml")) as f:
        return yaml.safe_load(f)


def params(steps: int, curves: bool) -> dict:
    """The grpo rule's params (rules/common.smk _grpo_params + rules/train.smk) with the self-certainty reward."""
    cfg = config()
    g = {k: v for k, v in cfg["grpo"].items() if k not in ("samplers", "seeds")}
    g.update(reward="self_certainty", steps=steps)
    ev = {k: cfg["eval"][k] for k in ("pool", "every", "curve_prompts", "curve_samples")}
    if not curves:
        ev["curve_prompts"] = 0
    return {"grpo": g, "eval": ev, "seed": 0, "split_seed": cfg["seed"], "device": "cpu", "dtype": "float32", "train_precision": "fp32"}


def prompts():
    from density_grpo.pairs import holdout_split, load_pairs, unique_prompts

    path = os.path.join(ROOT, "density_grpo", "data", "sample_pairs.jsonl")
    return holdout_split(unique_prompts(load_pairs("sample", [path], None)), config()["eval"]["pool"], config()["seed"])


def worker(variant: str, steps: int, threads: int) -> None:
    """One training run; print one JSON line: per-step wall times, wall, peak RSS."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from density_grpo import grpo

    p = params(steps, curves=variant == "project+curves")
    train, pool = prompts()
    model_dir = default_model()
    t = time.perf_counter()
    if variant.startswith("project"):
        weights = np.random.default_rng(0).dirichlet(np.ones(len(train)))
        curve = pool.head(p["eval"]["curve_prompts"])["text"].tolist() or None
        with tempfile.TemporaryDirectory() as out:
            res = grpo.train_grpo(model_dir, train, weights, p, os.path.join(out, "policy"), curve_prompts=curve)
        rows = res["rows"]
    else:
        from datasets import Dataset
        from transformers import set_seed
        from trl import GRPOTrainer

        from density_grpo.models import load_causal_lm, set_pad_token

        set_seed(p["seed"])
        model, tok = load_causal_lm(model_dir, torch.float32, torch.device("cpu"))
        set_pad_token(tok, model)
        reward = grpo.make_self_certainty_reward(model, tok, p["grpo"]["token_chunk"], p["grpo"]["temperature"])
        metrics = grpo.StepMetrics()
        with tempfile.TemporaryDirectory() as out:
            trainer = GRPOTrainer(
                model=model, reward_funcs=reward, args=grpo.grpo_config(p, out, torch.device("cpu")),
                train_dataset=Dataset.from_dict({"prompt": train["text"].astype(str).tolist()}),
                processing_class=tok, callbacks=[metrics],
            )  # fmt: skip
            trainer.train()
        rows = metrics.rows
    wall = time.perf_counter() - t
    peak = peak_rss_bytes()
    print(json.dumps({"step_s": [r["step_wall_s"] for r in rows], "wall_s": wall, "peak_gb": peak / 1e9}))


def run(variant: str, steps: int, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--steps", str(steps), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{variant} failed:\n{res.stderr[-4000:]}")
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    rec["steps_per_s"] = 1.0 / statistics.median(rec["step_s"][1:] or rec["step_s"])
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="median of 3 runs: one disturbed run does not count")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="3 steps, 1 repeat, no curves run")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # worker mode
    args = ap.parse_args()
    if args.variant:
        return worker(args.variant, args.steps, args.threads)
    if args.quick:
        args.steps, args.repeats = 3, 1
    g = config()["grpo"]
    print(machine())
    print(f"SmolLM2-135M-Instruct fp32, {args.threads} threads, {args.steps} steps x {g['prompts_per_step']} prompts x "
          f"{g['num_generations']} completions x {g['max_completion_length']} tokens, self-certainty reward; "
          f"{args.repeats} interleaved repeats", flush=True)  # fmt: skip
    runs: dict[str, list[dict]] = {"project": [], "trl": []} if args.quick else {"project": [], "trl": [], "project+curves": []}
    for _ in range(args.repeats):
        for variant in runs:
            runs[variant].append(run(variant, args.steps, args.threads))
            print(f"  {variant}: {runs[variant][-1]['steps_per_s']:.4f} steps/s, peak {runs[variant][-1]['peak_gb']:.2f} GB", flush=True)
    med = {v: {key: statistics.median(r[key] for r in rs) for key in ("steps_per_s", "peak_gb", "wall_s")} for v, rs in runs.items()}
    rows = [{"variant": v, "steps/s": m["steps_per_s"], "s/step": 1 / m["steps_per_s"], "peak GB": m["peak_gb"], "wall s": m["wall_s"]} for v, m in med.items()]
    print(table(rows))
    if "project+curves" in med:
        c, p = med["project+curves"], med["project"]
        ev = config()["eval"]
        print(f"collapse curves: {c['wall_s'] / p['wall_s'] - 1:+.1%} wall time, {c['peak_gb'] - p['peak_gb']:+.2f} GB peak "
              f"({ev['curve_prompts']} prompts x {ev['curve_samples']} samples at step 0 and every {ev['every']} steps; "
              "they run between steps, so steps/s does not include them)")  # fmt: skip
    print(result("grpo", speed_vs_trl=med["project"]["steps_per_s"] / med["trl"]["steps_per_s"],
                 memory_vs_trl=med["project"]["peak_gb"] / med["trl"]["peak_gb"]))  # fmt: skip


if __name__ == "__main__":
    main()

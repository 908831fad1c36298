"""Predict every job's peak memory and wall time for a config, before running anything.

Memory comes from each stage's own `predict` (the code the jobs record their prediction with); shapes that only the
data decides are assumed from prompt-length statistics of HH-RLHF (measured on 1,700 HH prompts with the SmolLM2
tokenizer: median 112 tokens, p99 787) unless given. Wall time is arithmetic with stated assumptions: matrix work at
`--mfu` of the GPU's bf16 peak, and token-by-token generation bound by a per-step overhead (`--decode-ms`, Python and
kernel launches of HF generate, which dominate for small models) or by reading the weights from memory.

  python tools/predict_run.py --configfile configs/hh-1gpu.yaml [--n-prompts 80000] [--gpu h100|h200|a100]
                               [--processes N]

--processes N (default: the config's grpo.processes and rm.processes) runs the reward model and each GRPO job on
N data-parallel GPUs: the peak shown is per GPU (every GPU holds the whole weights, grads and AdamW state; the
activations and the generation batch shrink to its share), and the job's matrix work splits N ways (ideal scaling:
no communication or straggler time counted); the per-token overhead of generation and the collapse curves (rank 0)
do not shrink.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from density_grpo import density, embed, evaluate, grpo, memory, reward  # noqa: E402
from density_grpo import params as P  # noqa: E402
from density_grpo.compare import detectable_at  # noqa: E402
from density_grpo.config import load_config  # noqa: E402
from density_grpo.errors import UserError  # noqa: E402
from density_grpo.sampling import Sampling  # noqa: E402

GPUS = {  # dense bf16 TFLOP/s, HBM TB/s, memory GiB (public spec sheets)
    "h100": (989, 3.35, 80),
    "h200": (989, 4.8, 141),
    "a100": (312, 2.0, 80),
}
HH_PROMPT_TOKENS = {"median": 112, "p99": 787}
HH_RESPONSE_TOKENS = {"median": 46, "p99": 260}


def lognormal_lengths(n: int, median: int, p99: int, cap: int) -> list[int]:
    """n deterministic lengths whose median and 99th percentile match, capped at `cap` (quantiles of a lognormal)."""
    sigma = math.log(p99 / median) / 2.326
    q = (np.arange(n) + 0.5) / n
    from statistics import NormalDist

    z = np.array([NormalDist().inv_cdf(x) for x in q])
    return [int(min(cap, max(1, round(median * math.exp(sigma * v))))) for v in z]


def per_gpu(processes: int) -> str:
    """A job row's note when it trains on several GPUs (its peak is then per GPU)."""
    return f"per GPU of {processes}" if processes > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", nargs="*", default=[], help="partial configs merged over config.yaml")
    ap.add_argument("--n-prompts", type=int, default=80_000, help="unique prompts (HH helpful+harmless train: ~80k)")
    ap.add_argument("--n-pairs", type=int, default=86_372, help="preference pairs (helpful-base + harmless-base train)")
    ap.add_argument("--model-config", help="a config.json (default: a local model folder's, else SmolLM2-135M's)")
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h200")
    ap.add_argument("--mfu", type=float, default=0.3, help="fraction of bf16 peak reached by training/scoring matmuls")
    ap.add_argument("--decode-ms", type=float, default=25.0, help="per-token overhead of HF generate (small models)")
    ap.add_argument("--processes", type=int, help="data-parallel GPUs per training job (default: the config's)")
    ap.add_argument("--measured", default=str(REPO / "studies/study-cpu/results/study-cpu/eval/comparison.json"),
                    help="a measured run's comparison.json: scales its standard errors to this design")
    args = ap.parse_args()

    overrides = [] if args.processes is None else [{"grpo": {"processes": args.processes}, "rm": {"processes": args.processes}}]
    try:  # checked like the config: the batches must split over the processes
        cfg = load_config(*args.configfile, *overrides)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    name = cfg["model"]["name_or_path"]
    if args.model_config:
        model_cfg, where = json.loads(Path(args.model_config).read_text()), args.model_config
    elif Path(name, "config.json").exists():  # a local model folder (hub and embedded models are converted later)
        model_cfg, where = memory.model_config(name), f"{name}/config.json"
    else:
        model_cfg, where = dict(memory.SMOLLM2_135M), "SmolLM2-135M defaults"
    d = memory.dims(model_cfg)
    n_params = memory.param_count(model_cfg)
    tflops, hbm, gib = GPUS[args.gpu]
    flops = tflops * 1e12 * args.mfu
    rt = {"device": "cuda", "dtype": "bfloat16", "train_precision": "bf16"}  # what device.plan gives on an H100/H200
    e, g, ev, rm = cfg["embed"], cfg["grpo"], cfg["eval"], cfg["rm"]
    n = args.n_prompts
    lengths = lognormal_lengths(min(n, e["chunk_size"]), HH_PROMPT_TOKENS["median"], HH_PROMPT_TOKENS["p99"], e["max_length"])
    work = memory.Workload(model_cfg, tuple(lengths))
    longest, mean_len = max(lengths), float(np.mean(lengths))
    decode = max(args.decode_ms / 1e3, memory.weights_bytes(n_params, "bf16") / (hbm * 1e12))  # s per generated token

    rows = []  # job, count, predicted peak bytes, seconds per job
    p = embed.predict({**P.embed(cfg), **rt}, work)
    batches = embed.token_budget_batches(lengths, e["batch_tokens"])
    t = 2 * n_params * sum(lengths) / flops + 0.01 * len(batches) + 20
    rows.append(("embed_chunk", math.ceil(n / e["chunk_size"]), p["total_bytes"], t))

    weights = P.weights(cfg, n, d["h"])
    index = weights["knn"]["index"]
    p = density.predict(weights, memory.Workload(model_cfg, n_prompts=n, dim=d["h"], chunk_rows=e["chunk_size"]))
    cpu_flops = 16 * 50e9  # faiss-cpu on the box's 16 cores at ~50 GFLOP/s each
    t = 2 * n * n * d["h"] / cpu_flops if index == "flat" else 600
    rows.append((f"knn_weights ({index}, CPU)", 1, p["total_bytes"], t))

    seq = min(rm["max_length"], HH_PROMPT_TOKENS["p99"] + HH_RESPONSE_TOKENS["p99"])
    p = reward.predict({**P.reward_model(cfg), **rt}, memory.Workload(model_cfg, (seq,)))
    mean_seq = min(rm["max_length"], HH_PROMPT_TOKENS["median"] * 1.4 + HH_RESPONSE_TOKENS["median"] * 1.4)
    trained = n_params if rm["train_layers"] is None else n_params * rm["train_layers"] / d["L"]
    step = 2 * rm["batch_size"] * mean_seq * (2 * n_params + 4 * trained) / flops / rm["processes"] + 0.15
    rows.append((f"reward_model ({per_gpu(rm['processes'])})".replace(" ()", ""), 1, p["total_bytes"], rm["max_steps"] * step + 60))

    p = grpo.predict({**P.grpo(cfg), **rt, "policy_seed": 0}, work)
    B, C = g["prompts_per_step"] * g["num_generations"], g["max_completion_length"]
    S = mean_len + C
    per_step = C * decode + (6 * n_params * B * S / flops + 2 * n_params * B * S / flops) / g["processes"]  # generate, train, RM score
    curve = C * decode + 3 * 2 * n_params * ev["curve_prompts"] * ev["curve_samples"] * S / flops
    t = g["steps"] * per_step + (g["steps"] // ev["every"] + 1) * curve + 120
    rows.append((f"grpo (per arm x seed, {per_gpu(g['processes'])})".replace(", )", ")"), len(g["samplers"]) * len(g["seeds"]), p["total_bytes"], t))

    p = evaluate.predict({**P.evaluate(cfg, "base"), **rt}, work)
    calls = math.ceil(ev["prompts"] / Sampling(ev["samples"], ev["max_new_tokens"], ev["temperature"]).prompts_per_call)
    t = calls * ev["max_new_tokens"] * decode + 60
    n_eval = 1 + (ev["control_temperature"] is not None) + len(g["samplers"]) * len(g["seeds"])
    rows.append(("evaluate_model (base: 2 sample sets)", n_eval, p["total_bytes"], t))

    total = sum(count * t for _, count, _, t in rows)
    print(f"config: {', '.join(['config.yaml', *args.configfile])}; model {name} "
          f"({n_params / 1e6:.0f}M params, config from {where}); {n:,} prompts, {args.n_pairs:,} pairs")
    print(f"GPU: {args.gpu} ({tflops} bf16 TFLOP/s, {hbm} TB/s, {gib} GiB); matmuls at {args.mfu:.0%} of peak; "
          f"generation {decode * 1e3:.0f} ms per token step")
    print()
    print("| job | jobs | predicted peak (GPU) | time per job | total |")
    print("|---|---|---|---|---|")
    for job, count, peak, t in rows:
        print(f"| {job} | {count} | {memory.human_bytes(peak)} | {t / 3600:.2f} h | {count * t / 3600:.2f} h |")
    print(f"| **all, one job at a time** | | | | **{total / 3600:.1f} h** |")
    fits = all(peak < gib * 2**30 for _, _, peak, _ in rows)
    print(f"\nEvery job fits on one {args.gpu} ({gib} GiB): {fits}.")
    if Path(args.measured).exists():
        print_detectable(json.loads(Path(args.measured).read_text()), args.measured, ev["prompts"], len(g["seeds"]))


def print_detectable(comparison: dict, where: str, n_prompts: int, n_seeds: int) -> None:
    """The smallest density - uniform difference this design could detect (95% interval, 80% power), scaled from
    a measured run's bootstrap standard errors (prompt part by prompts, seed part by seeds)."""
    seeds0 = min(len(s) for s in comparison["seeds"].values())
    measured = (comparison["n_prompts"], seeds0)
    print(f"\nSmallest detectable density - uniform difference with {n_prompts} prompts x {n_seeds} seeds per arm, "
          f"scaled from {where} ({measured[0]} prompts x {seeds0} seeds; {comparison['samples']} samples per prompt "
          "in both):")
    for key in comparison["headline"]:
        m = comparison["metrics"][key]
        d = m.get("density_minus_uniform")
        if d is None or "se_prompts" not in d:
            continue
        planned = detectable_at(d, measured, (n_prompts, n_seeds))
        print(f"- {m['label']}: {planned:.3g} (measured design: {d['detectable']:.3g})")


if __name__ == "__main__":
    main()

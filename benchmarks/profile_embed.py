"""Where the embedding forward spends its time on CPU: torch.profiler over the project's Embedder on the sample prompts.

Prints the top operators by self CPU time and the share spent in matrix multiplies (what the GEMM ceiling bounds);
the rest (attention softmax, norms, activations, rotary, copies) is memory-bound. Used to explain embed's
gemm_fraction in benchmarks/embed_throughput.py.
The last line is machine-readable: RESULT profile_embed matmul_share=<s> seconds=<t>
"""

from __future__ import annotations

import argparse
import os

import torch
import yaml
from common import ROOT, default_model, machine, result, set_threads
from embed_throughput import sample_prompts

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_dot_product_flash_attention_for_cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="first 64 prompts")
    args = ap.parse_args()
    from density_grpo.embed import Embedder
    from density_grpo.models import load_causal_lm

    with open(os.path.join(ROOT, "config.yaml")) as f:
        cfg = yaml.safe_load(f)["embed"]
    set_threads(args.threads)
    texts = sample_prompts()[: 64 if args.quick else None]
    model, tok = load_causal_lm(default_model(), dtype=torch.float32, device=torch.device("cpu"))
    model.eval()
    e = Embedder(model, tok, source="hidden", layer=-1, max_length=cfg["max_length"], batch_tokens=cfg["batch_tokens"])
    e.embed(texts[:16], progress=False)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        e.embed(texts, progress=False)
    events = prof.key_averages()
    total = sum(ev.self_cpu_time_total for ev in events)
    mm = sum(ev.self_cpu_time_total for ev in events if ev.key in MATMUL_OPS)
    print(machine())
    print(f"{len(texts)} prompts, {args.threads} threads, float32; self CPU time by operator (top 12)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"matrix multiplies: {mm / total:.1%} of {total / 1e6:.2f} s self CPU time")
    print(result("profile_embed", matmul_share=mm / total, seconds=total / 1e6))


if __name__ == "__main__":
    main()

"""Self-certainty through the LM head: chunked (density_grpo.grpo.self_certainty) vs naive full logits.

    python benchmarks/self_certainty_memory.py [--T 2048] [--V 49152] [--hidden 576] [--batch 1] [--token-chunk N]

Each variant runs in a fresh subprocess on the same seeded inputs (hidden states, LM head, a mask with ~10%
padding), `--repeats` times, alternating naive and chunked; the table shows medians. Peak memory is the growth
over the memory held after building the inputs and a warm-up call on 8 positions (thread pools, BLAS buffers): on
CUDA torch.cuda.max_memory_allocated, on CPU the peak RSS seen
by a psutil thread sampling every 0.5 ms (torch's CPU allocations are invisible to tracemalloc). The naive variant
holds the B x T x V float32 logits plus logsumexp's temporaries; the chunked one token_chunk x V floats at a time
(token_chunk defaults to config.yaml's grpo.token_chunk). Both use the same torch threads.
The last line is machine-readable: RESULT self_certainty memory_ratio=<naive/chunked> max_rel_err=<e>
time_ratio=<chunked/naive>
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import yaml
from common import PeakRSS

try:
    import density_grpo  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker(args: argparse.Namespace) -> None:
    """Run one variant; print one JSON line: peak_mb, time_s, values."""
    import gc

    import psutil
    import torch

    from density_grpo.grpo import self_certainty, self_certainty_naive

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.batch, args.T, args.hidden, generator=g).to(device)
    head = torch.nn.Linear(args.hidden, args.V, bias=False)
    torch.nn.init.normal_(head.weight, std=0.02, generator=g)
    head = head.to(device)
    mask = (torch.rand(args.batch, args.T, generator=g) > 0.1).long().to(device)
    if args.variant == "naive":
        run = lambda: self_certainty_naive(hidden, head, mask)  # noqa: E731
    else:
        run = lambda: self_certainty(hidden, head, mask, token_chunk=args.token_chunk)  # noqa: E731
    # warm-up on 8 positions: thread pools and BLAS buffers start here, outside the measured growth (both variants)
    self_certainty_naive(hidden[:, :8], head, mask[:, :8])
    self_certainty(hidden[:, :8], head, mask[:, :8], token_chunk=args.token_chunk)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = run()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = psutil.Process().memory_info().rss
        with PeakRSS(interval=0.0005) as rss:
            t = time.perf_counter()
            out = run()
            elapsed = time.perf_counter() - t
        peak = rss.peak - base
    print(json.dumps({"peak_mb": peak / 2**20, "time_s": elapsed, "values": out.cpu().tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=2048, help="positions per sequence")
    ap.add_argument("--V", type=int, default=49152, help="vocab size (SmolLM2)")
    ap.add_argument("--hidden", type=int, default=576, help="hidden size (SmolLM2-135M)")
    ap.add_argument("--batch", type=int, default=1)
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config.yaml")) as f:
        default_chunk = yaml.safe_load(f)["grpo"]["token_chunk"]
    ap.add_argument("--token-chunk", type=int, default=default_chunk, help="default: config.yaml grpo.token_chunk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)  # worker mode
    args = ap.parse_args()
    if args.variant:
        return worker(args)

    runs = {"naive": [], "chunked": []}
    for _ in range(args.repeats):
        for variant in runs:
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant]
            cmd += ["--T", str(args.T), "--V", str(args.V), "--hidden", str(args.hidden), "--batch", str(args.batch)]
            cmd += ["--token-chunk", str(args.token_chunk), "--device", args.device, "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"{variant} failed:\n{res.stderr[-3000:]}")
            runs[variant].append(json.loads(res.stdout.strip().splitlines()[-1]))
    med = {v: {key: statistics.median(r[key] for r in rs) for key in ("peak_mb", "time_s")} for v, rs in runs.items()}

    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}; {args.threads} torch threads")
    print(f"device={args.device} batch={args.batch} hidden={args.hidden} token_chunk={args.token_chunk}, median of {args.repeats}")
    print(f"| variant | T | V | peak MB | time s |\n|---|---|---|---|---|")
    for variant, r in med.items():
        print(f"| {variant} | {args.T} | {args.V} | {r['peak_mb']:.1f} | {r['time_s']:.3f} |")
    naive, chunked = runs["naive"][0]["values"], runs["chunked"][0]["values"]
    max_rel_err = max(abs(c - n) / abs(n) for c, n in zip(chunked, naive))
    ratio = med["naive"]["peak_mb"] / max(med["chunked"]["peak_mb"], 1e-9)
    time_ratio = med["chunked"]["time_s"] / med["naive"]["time_s"]
    print(f"RESULT self_certainty memory_ratio={ratio:.2f} max_rel_err={max_rel_err:.2e} time_ratio={time_ratio:.3f}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()

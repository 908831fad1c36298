"""How much an embedding depends on the batch it was computed in (embed.chunk_size, embed.batch_tokens).

    python benchmarks/batch_shape.py [--model resources/models/smollm2-135m-instruct] [--n 128]

Embeds the first n sample prompts (real model, float32, CPU, 1 thread as the embed rule runs) under several
(chunk_size, batch_tokens) pairs, and each prompt alone in its own forward (no padding, no neighbours) as the
reference. Per setting: rows that differ from the reference, max |difference|, max relative difference of the
vector, and seconds. The same setting twice must be byte-identical. The last line is machine-readable:
RESULT batch_shape n=... max_abs=... max_rel=... rows_differing=... same_config_identical=...
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

try:
    import density_grpo  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from density_grpo.embed import Embedder
from density_grpo.models import load_causal_lm
from density_grpo.pairs import SAMPLE_PATH, load_pairs, unique_prompts

SETTINGS = [(128, 4096), (32, 4096), (128, 1024), (128, 512), (16, 256)]  # (chunk_size, batch_tokens); first: default


def embed(model, tok, texts: list[str], chunk_size: int, batch_tokens: int) -> tuple[np.ndarray, float]:
    embedder = Embedder(model, tok, max_length=512, batch_tokens=batch_tokens)
    t = time.perf_counter()
    out = np.concatenate([embedder.embed(texts[i : i + chunk_size], progress=False) for i in range(0, len(texts), chunk_size)])
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resources/models/smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=128)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    model, tok = load_causal_lm(args.model)
    texts = unique_prompts(load_pairs("sample", [str(SAMPLE_PATH)], None))["text"].tolist()[: args.n]

    t = time.perf_counter()
    alone = np.concatenate([embed(model, tok, [x], 1, 10**9)[0] for x in texts])
    alone_s = time.perf_counter() - t
    print(f"{'chunk_size':>10} {'batch_tokens':>12} {'rows differing':>15} {'max |diff|':>11} {'max rel':>9} {'seconds':>8}")
    print(f"{'alone':>10} {'-':>12} {'(reference)':>15} {'':>11} {'':>9} {alone_s:8.1f}")
    worst_abs = worst_rel = 0.0
    worst_rows = 0
    first = None
    for chunk_size, batch_tokens in SETTINGS:
        out, secs = embed(model, tok, texts, chunk_size, batch_tokens)
        first = out if first is None else first
        diff = np.abs(out - alone)
        rows = int((diff.max(axis=1) > 0).sum())
        rel = float((np.linalg.norm(out - alone, axis=1) / np.linalg.norm(alone, axis=1)).max())
        worst_abs, worst_rel, worst_rows = max(worst_abs, float(diff.max())), max(worst_rel, rel), max(worst_rows, rows)
        print(f"{chunk_size:>10} {batch_tokens:>12} {f'{rows}/{len(texts)}':>15} {diff.max():11.2e} {rel:9.2e} {secs:8.1f}")
    again, _ = embed(model, tok, texts, *SETTINGS[0])
    same = again.tobytes() == first.tobytes()
    print(f"same setting twice ({SETTINGS[0][0]}, {SETTINGS[0][1]}): {'byte-identical' if same else 'DIFFERENT'}")
    print(
        f"RESULT batch_shape n={len(texts)} max_abs={worst_abs:.2e} max_rel={worst_rel:.2e} "
        f"rows_differing={worst_rows}/{len(texts)} same_config_identical={same}"
    )


if __name__ == "__main__":
    main()

"""Incremental rebuild: append 1% new pairs to a local source and rerun `snakemake weights`.

    python benchmarks/incremental.py [--pairs 960] [--chunk-size 32] [--quick]

A local .jsonl of HH pairs (the sample data's pairs, each prompt made unique by a numbered suffix) embedded in
chunks of --chunk-size prompts (>= 20 chunks) with the real default model (a local folder, used in place), then
`snakemake weights` twice: once from scratch, once after appending 1% more pairs (new prompts). Counts the
embed_chunk jobs Snakemake ran in the second run (its "rule embed_chunk:" job headers) and the wall time of each run.
The last line is machine-readable:
RESULT incremental reembedded_chunks=<c> total_chunks=<t> seconds_ratio=<second run / first run>
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import yaml

from common import ROOT, default_model, machine, result, table


def pairs(n: int, start: int = 0) -> list[dict]:
    """n HH pairs from the sample data, cycled, each prompt made unique by a numbered suffix (rows start..start+n)."""
    with open(os.path.join(ROOT, "density_grpo", "data", "sample_pairs.jsonl")) as f:
        base = [json.loads(line) for line in f if line.strip()]
    out = []
    for i in range(start, start + n):
        row = base[i % len(base)]
        tag = f" (request {i})"
        out.append({key: row[key].replace("\n\nAssistant:", f"{tag}\n\nAssistant:", 1) for key in ("chosen", "rejected")})
    return out


def write_jsonl(rows: list[dict], path: str, mode: str) -> None:
    with open(path, mode) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def snakemake(workdir: str, config: str, cores: int) -> tuple[float, dict[str, int]]:
    """Run `snakemake weights`; (wall seconds, jobs run by rule: Snakemake's "rule NAME:" job headers, which also
    count the embed_chunk jobs planned after the prompts checkpoint, absent from the first "Job stats")."""
    cmd = [sys.executable, "-m", "snakemake", "-s", os.path.join(ROOT, "Snakefile"), "--directory", workdir]
    cmd += ["weights", "--cores", str(cores), "--configfile", config]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"snakemake failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    jobs: dict[str, int] = {}
    for rule in re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", res.stdout + res.stderr, flags=re.M):
        jobs[rule] = jobs.get(rule, 0) + 1
    return wall, jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=960)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="640 pairs in chunks of 32 (20 chunks)")
    args = ap.parse_args()
    if args.quick:
        args.pairs = 640
    new = max(1, round(0.01 * args.pairs))
    print(machine())
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as work:
        data = os.path.join(work, "pairs.jsonl")
        write_jsonl(pairs(args.pairs), data, "w")
        config = os.path.join(work, "bench.yaml")
        cfg = {
            "run": "bench", "device": "cpu", "data": {"source": "local", "path": data},
            "model": {"name_or_path": default_model(), "dtype": "float32"},
            "embed": {"chunk_size": args.chunk_size},
        }  # fmt: skip
        with open(config, "w") as f:
            yaml.safe_dump(cfg, f)
        first_s, first_jobs = snakemake(work, config, args.cores)
        write_jsonl(pairs(new, start=args.pairs), data, "a")  # 1% more pairs, new prompts
        second_s, second_jobs = snakemake(work, config, args.cores)
    total = math.ceil((args.pairs + new) / args.chunk_size)
    print(f"{args.pairs} pairs (+{new}), chunks of {args.chunk_size} prompts, SmolLM2-135M-Instruct fp32, {args.cores} cores")
    rows = [
        {"run": "first (from scratch)", "seconds": first_s, "embed_chunk jobs": first_jobs.get("embed_chunk", 0), "jobs": sum(first_jobs.values())},
        {"run": f"second (+{new} pairs)", "seconds": second_s, "embed_chunk jobs": second_jobs.get("embed_chunk", 0), "jobs": sum(second_jobs.values())},
    ]  # fmt: skip
    print(table(rows, ".1f"))
    print("second run's jobs: " + ", ".join(f"{k} {v}" for k, v in second_jobs.items()))
    print(result("incremental", reembedded_chunks=second_jobs.get("embed_chunk", 0), total_chunks=total, seconds_ratio=second_s / first_s))


if __name__ == "__main__":
    main()

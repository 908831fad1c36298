# The one place for artifact paths, and the helpers that turn config into each rule's params.
# A rule's params hold exactly what its step reads (config subtrees plus resolved values), so a config
# change reruns exactly the jobs whose code reads it.
import functools
import json
import os

import pandas as pd
import pyarrow.parquet as pq

from density_grpo.config import check_prompt_counts
from density_grpo.device import is_gpu, plan, plan_train_precision
from density_grpo.index_plan import choose_index
from density_grpo.models import fingerprint, model_kind, model_slug
from density_grpo.pairs import SAMPLE_PATH, texts_hash
from density_grpo.report import PLOT_CAPTIONS, PLOTS

RUN = config["run"]
RES = f"results/{RUN}"
LOGS = f"logs/{RUN}"
BENCH = f"{RES}/bench"
MEM = f"{RES}/memory"

PAIRS = f"{RES}/data/pairs.parquet"
PROMPTS = f"{RES}/data/prompts.parquet"
PROMPTS_SUMMARY = f"{RES}/data/prompts.json"
MODEL_CARD = f"{RES}/model.json"
CHUNK = f"{RES}/embed/chunk_{{i}}.zarr"
WEIGHTS = f"{RES}/density/weights.parquet"
WEIGHTS_META = f"{RES}/density/metadata.json"
RM_MODEL = f"{RES}/rm/model"
RM_METRICS = f"{RES}/rm/metrics.json"
GRPO = f"{RES}/grpo/{{sampler}}/seed{{seed}}"
GRPO_MODEL = f"{GRPO}/model"
GRPO_METRICS = f"{GRPO}/metrics.jsonl"
GRPO_DRAWS = f"{GRPO}/draws.parquet"
GRPO_CURVES = f"{GRPO}/curves.jsonl"
GRPO_CURVE_EMB = f"{GRPO}/curves.npz"
EVAL = f"{RES}/eval/{{model}}.json"
EVAL_EMB = f"{RES}/eval/{{model}}.npz"
COMPARISON = f"{RES}/eval/comparison.json"
COMPARISON_PNG = f"{RES}/eval/comparison.png"
CURVES_PNG = f"{RES}/eval/curves.png"
REPORTS = f"{RES}/reports"
SUMMARY = f"{REPORTS}/summary.md"

SAMPLERS = config["grpo"]["samplers"]
SEEDS = config["grpo"]["seeds"]
RUNS = [(sampler, seed) for sampler in SAMPLERS for seed in SEEDS]  # one GRPO policy per arm and seed
EVAL_MODELS = ["base", *[f"{sampler}_seed{seed}" for sampler, seed in RUNS]]


def runs(pattern):
    """`pattern` for every GRPO run (arm x seed)."""
    return [pattern.format(sampler=sampler, seed=seed) for sampler, seed in RUNS]


MODEL_NAME = config["model"]["name_or_path"]
try:
    MODEL_KIND = model_kind(MODEL_NAME)
except UserError as e:
    raise WorkflowError(str(e)) from None
MODEL_SLUG = model_slug(MODEL_NAME)
MODEL_DIR = MODEL_NAME if MODEL_KIND == "local" else f"resources/models/{MODEL_SLUG}"
FINGERPRINTS = "resources/models/fingerprints.json"  # a cache of model file digests by (path, size, mtime)

DEVICE, DTYPE = plan(config["device"], config["model"]["dtype"])
TRAIN_PRECISION = plan_train_precision(DEVICE)
GPU = 1 if is_gpu(DEVICE) else 0
WARN = str(config["memory"]["warn_fraction"])  # a resource: a warning threshold must not rerun anything


def model_fingerprint(wildcards):
    """The model folder's content identity, a param of every job that reads the model: a model rebuilt in place
    reruns them. Snakemake evaluates params lazily (when a job runs, or when its outputs exist), so a folder the
    model rule builds in this run is fingerprinted after it exists."""
    return fingerprint(MODEL_DIR, FINGERPRINTS)


def mem_mb(base):
    """Attempt-scaled memory: a retried job gets twice the memory."""
    return lambda wildcards, attempt: base * 2 ** (attempt - 1)


def job_files(rule, wildcards=None):
    """(memory record, benchmark TSV) of one job: both named after the job, {rule}[_{wildcard values}]."""
    job = "_".join([rule, *(wildcards or [])])
    return f"{MEM}/{job}.json", f"{BENCH}/{job}.tsv"


# -----------------------------------------------------------------------------
# prompts checkpoint: chunks


@functools.lru_cache(maxsize=8)
def _chunk_hashes(path, mtime_ns, chunk_size):
    texts = pd.read_parquet(path, columns=["text"])["text"].tolist()
    return tuple(texts_hash(texts[i : i + chunk_size]) for i in range(0, len(texts), chunk_size))


def checked_prompts(wildcards=None):
    """The prompts file, once the prompts checkpoint has run and the config checks that need the number of prompts
    (knn.k, eval.prompts, rm.eval_fraction) pass: the input functions of the model jobs call it, so a bad value fails
    right after the checkpoint, before any model work (and in every dry run after it)."""
    path = checkpoints.unique_prompts.get().output.prompts
    problem = _count_problem(path, os.stat(path).st_mtime_ns)
    if problem:
        raise WorkflowError(problem)  # Snakemake shows it as the InputFunctionException of the job that asked
    return ancient(path)


@functools.lru_cache(maxsize=8)
def _count_problem(path, mtime_ns):
    try:
        check_prompt_counts(pq.ParquetFile(path).metadata.num_rows, config)
    except UserError as e:
        return str(e)


def chunk_hashes():
    """Content hash of every chunk's prompts (available once the prompts checkpoint has run)."""
    path = checkpoints.unique_prompts.get().output.prompts
    return _chunk_hashes(path, os.stat(path).st_mtime_ns, config["embed"]["chunk_size"])


def chunk_ids():
    return range(len(chunk_hashes()))


def all_chunks(wildcards):
    checked_prompts()
    return [CHUNK.format(i=i) for i in chunk_ids()]


# -----------------------------------------------------------------------------
# params: exactly what each step reads


def pairs_input(wildcards):
    data = config["data"]
    if data["source"] == "sample":
        return [str(SAMPLE_PATH)]
    if data["source"] == "local":
        return [data["path"]]
    if data["mirror"] is not None:  # hh-rlhf from a local copy of the hub's tree
        return [f"{data['mirror']}/{s}/{data['split']}.jsonl.gz" for s in dict.fromkeys(data["subsets"])]
    return []  # hh-rlhf from the hub: downloaded by the job


def _pairs_params():
    data = config["data"]
    params = {"source": data["source"], "max_pairs": data["max_pairs"]}
    if data["source"] == "hh-rlhf":
        params.update(subsets=list(dict.fromkeys(data["subsets"])), split=data["split"])
    return params


PAIRS_PARAMS = _pairs_params()
EMBED_PARAMS = {k: config["embed"][k] for k in ("source", "layer", "max_length", "batch_tokens", "pooling")}


def chunk_hash(wildcards):
    """A chunk reruns when its own prompts change: their content hash is a param."""
    return chunk_hashes()[int(wildcards.i)]


def chunk_rows(wildcards):
    size = config["embed"]["chunk_size"]
    return [int(wildcards.i) * size, (int(wildcards.i) + 1) * size]


def embed_dim():
    """Width of the stored embeddings: the model's hidden size (0 while the model folder does not exist yet)."""
    try:
        with open(f"{MODEL_DIR}/config.json") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return 0
    return int((cfg.get("text_config") or cfg).get("hidden_size", 0))


def knn_params(wildcards):
    """k and the resolved index; the IVF knobs and the seed of IVF's samples only for IVF indexes, and each
    index's own knobs only for it."""
    knn = config["knn"]
    n = pq.ParquetFile(checkpoints.unique_prompts.get().output.prompts).metadata.num_rows
    index = choose_index(knn["index"], n, embed_dim(), knn["exact_max"], knn["max_index_gb"])
    params = {"k": knn["k"], "index": index}
    if index != "flat":
        params.update(nlist=knn["nlist"], nprobe=knn["nprobe"], recall_sample=knn["recall_sample"], seed=config["seed"])
    if index == "ivfpq":
        params.update(pq_m=knn["pq_m"], rerank=knn["rerank"])
    if index == "ivfjoin":
        params.update(fix_fraction=knn["fix_fraction"], fix_nprobe=knn["fix_nprobe"])
    return params


def _density_params():
    """The density section; components only where the post-processing reads it (abtt, whiten)."""
    d = dict(config["density"])
    if d["postprocess"] not in ("abtt", "whiten"):
        del d["components"]
    return d


DENSITY_PARAMS = _density_params()


def _grpo_params():
    g = {k: v for k, v in config["grpo"].items() if k not in ("samplers", "seeds")}  # arm and seed: the wildcards
    if g["reward"] != "self_certainty":
        del g["token_chunk"]
    params = {"grpo": g, "eval": {k: config["eval"][k] for k in ("pool", "every", "curve_prompts", "curve_samples")}}
    if g["reward"] == "rm":
        params["rm"] = {"max_length": config["rm"]["max_length"]}
    return params


GRPO_PARAMS = _grpo_params()
EVAL_PARAMS = {
    k: config["eval"][k]
    for k in ("pool", "prompts", "rare_fraction", "rare_quantile", "samples", "max_new_tokens", "temperature")
}
RM_SCORING = {k: config["rm"][k] for k in ("max_length", "batch_size")}


def grpo_inputs(wildcards):
    """The density arm reads the weights; both arms read the same prompts (held-out ones excluded)."""
    inputs = {"prompts": PROMPTS, "model": ancient(MODEL_DIR)}
    if wildcards.sampler == "density":
        inputs["weights"] = WEIGHTS
    if config["grpo"]["reward"] == "rm":
        inputs["rm"] = RM_MODEL
    return inputs


def eval_inputs(wildcards):
    """Base model or a policy (`{sampler}_seed{seed}`), scored by the reward model, on the evaluated prompts (drawn
    from the held-out pool stratified by density weight)."""
    if wildcards.model == "base":
        policy = MODEL_DIR
    else:
        sampler, seed = wildcards.model.split("_seed")
        policy = GRPO_MODEL.format(sampler=sampler, seed=seed)
    return {"prompts": PROMPTS, "weights": WEIGHTS, "base": ancient(MODEL_DIR), "policy": policy, "rm": RM_MODEL}


# -----------------------------------------------------------------------------
# reports: every job's memory record and benchmark, in one order


def report_jobs(wildcards):
    jobs = [("pairs", []), ("unique_prompts", []), ("model_card", [])]
    jobs += [("embed_chunk", [str(i)]) for i in chunk_ids()]
    jobs += [("knn_weights", []), ("reward_model", [])]
    jobs += [("grpo", [s, str(k)]) for s, k in RUNS] + [("evaluate_model", [m]) for m in EVAL_MODELS]
    jobs += [("compare", [])]
    files = [job_files(rule, wc) for rule, wc in jobs]
    if MODEL_KIND != "local":
        files.append((f"resources/models/memory/{MODEL_SLUG}.json", f"resources/models/bench/{MODEL_SLUG}.tsv"))
    return files


def report_memory(wildcards):
    return [m for m, _ in report_jobs(wildcards)]


def report_bench(wildcards):
    return [b for _, b in report_jobs(wildcards)]


REPORT_PARAMS = {
    "run": RUN,
    "runs": [f"{sampler}/seed{seed}" for sampler, seed in RUNS],
    "device": DEVICE,
    "dtype": DTYPE,
    "warn_fraction": config["memory"]["warn_fraction"],
    "embed": {k: config["embed"][k] for k in ("chunk_size", "batch_tokens")},
    "knn": {k: v for k, v in config["knn"].items() if k != "rerank"},  # all but ivfpq's re-ranking factor
    "grpo": {
        k: config["grpo"][k] for k in ("prompts_per_step", "num_generations", "max_completion_length", "token_chunk")
    },
}

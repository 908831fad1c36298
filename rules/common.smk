# The one place for artifact paths, job names, resources and the small input functions. What each rule declares
# in `params` comes from density_grpo.params: exactly the config its step reads (plus resolved values), so a
# config change reruns exactly the jobs whose code reads it.
import functools
import json
import os

import pandas as pd
import pyarrow.parquet as pq
from snakemake.io import IOFile
from snakemake.logging import logger

from density_grpo import params as P
from density_grpo.config import check_prompt_counts, readable
from density_grpo.device import is_gpu
from density_grpo.io import refresh_stamp
from density_grpo.models import fingerprint, model_kind, model_slug
from density_grpo.monitor import job_name
from density_grpo.pairs import SAMPLE_PATH, texts_hash
from density_grpo.report import PLOTS

# Library progress bars (transformers' weight loading, GGUF conversion, datasets) are off in every job: they fill the
# console with carriage-return lines; the jobs log short progress lines with time left instead (monitor.Progress).
for _var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
    os.environ.setdefault(_var, "1")

RUN = config["run"]
RES = f"results/{RUN}"
LOGS = f"logs/{RUN}"

PAIRS = f"{RES}/data/pairs.parquet"
PROMPTS = f"{RES}/data/prompts.parquet"
PROMPTS_SUMMARY = f"{RES}/data/prompts.json"
MODEL_CARD = f"{RES}/model.json"
CHUNK = f"{RES}/embed/chunk_{{i}}.zarr"
EMBED_RECORDS = f"{RES}/embed/jobs.json"
WEIGHTS = f"{RES}/density/weights.parquet"
WEIGHTS_META = f"{RES}/density/metadata.json"
RM_MODEL = f"{RES}/rm/model"
RM_METRICS = f"{RES}/rm/metrics.json"
RM_STEPS = f"{RES}/rm/steps.jsonl"
GRPO = f"{RES}/grpo/{{sampler}}/seed{{seed}}"
GRPO_MODEL = f"{GRPO}/model"
GRPO_METRICS = f"{GRPO}/metrics.jsonl"
GRPO_SUMMARY = f"{GRPO}/summary.json"
GRPO_DRAWS = f"{GRPO}/draws.parquet"
GRPO_CURVES = f"{GRPO}/curves.jsonl"
GRPO_CURVE_EMB = f"{GRPO}/curves.npz"
EVAL = f"{RES}/eval/{{model}}.json"
EVAL_EMB = f"{RES}/eval/{{model}}.npz"
COMPARISON = f"{RES}/eval/comparison.json"
DIVERSITY_PNG = f"{RES}/eval/diversity.png"
CURVES_PNG = f"{RES}/eval/curves.png"
REPORTS = f"{RES}/reports"
SUMMARY = f"{REPORTS}/summary.md"
MODELS = "resources/models"
FINGERPRINTS = f"{MODELS}/fingerprints.json"  # a cache of model file digests by (path, size, mtime)

SAMPLERS = config["grpo"]["samplers"]
SEEDS = config["grpo"]["seeds"]
RUNS = [(sampler, seed) for sampler in SAMPLERS for seed in SEEDS]  # one GRPO policy per arm and seed
CONTROL = ["control"] if config["eval"]["control_temperature"] is not None else []
EVAL_MODELS = ["base", *CONTROL, *[f"{sampler}_seed{seed}" for sampler, seed in RUNS]]


def runs(pattern):
    """`pattern` for every GRPO run (arm x seed)."""
    return [pattern.format(sampler=sampler, seed=seed) for sampler, seed in RUNS]


MODEL_NAME = config["model"]["name_or_path"]
try:
    MODEL_KIND = model_kind(MODEL_NAME)
except UserError as e:
    raise WorkflowError(str(e)) from None
MODEL_SLUG = model_slug(MODEL_NAME)
MODEL_DIR = MODEL_NAME if MODEL_KIND == "local" else f"{MODELS}/{MODEL_SLUG}"

RUNTIME = P.runtime(config)  # device, dtype and training precision as resolved on this machine
GPU = 1 if is_gpu(RUNTIME["device"]) else 0
INFER = {k: RUNTIME[k] for k in ("device", "dtype")}  # model jobs that only run the models
TRAIN = {k: RUNTIME[k] for k in ("device", "train_precision")}  # model jobs that train (fp32 master weights)


def model_fingerprint(wildcards):
    """The model folder's content identity, a param of every job that reads the model: a model rebuilt in place
    reruns them. Snakemake evaluates params lazily (when a job runs, or when its outputs exist), so a folder the
    model rule builds in this run is fingerprinted after it exists."""
    return fingerprint(MODEL_DIR, FINGERPRINTS)


# -----------------------------------------------------------------------------
# per job: memory record, log, benchmark, resources

JOBS = []  # (files, wildcard values) of every job the report shows, registered by its rule


def job(rule, *wildcards, each=None, name=None, folder=RES, logs=LOGS, report=True):
    """A job's memory record, log and benchmark paths, named after the job (density_grpo.monitor.job_name) unless
    `name` is given. `each` lists the values of `wildcards`; report=False: the report gets the job's records another
    way (the embed chunks': rule embed_records collects them, as their number depends on the prompts checkpoint)."""
    name = name or job_name(rule, [f"{{{w}}}" for w in wildcards])
    files = {
        "memory": f"{folder}/memory/{name}.json",
        "log": f"{logs}/{name}.log",
        "bench": f"{folder}/bench/{name}.tsv",
        "stamp": f"{folder}/params/{name}.json",
        "tensorboard": f"{folder}/tensorboard/{name}",
    }
    if report:
        JOBS.append((files, each))
    return files


def stamped_params(name, wildcards):
    """The params a job of rule `name` gets, evaluated as its step sees them; the model's identity stands for its
    fingerprint (a hub or embedded model's folder may not exist yet when the DAG is built)."""
    out = {}
    for key, value in workflow.get_rule(name).params.items():
        if key == "model_fingerprint":
            out["model"] = model_fingerprint(wildcards) if MODEL_KIND == "local" else MODEL_NAME
        elif callable(value):
            out[key] = value(wildcards)
        else:
            out[key] = value.format(**wildcards) if isinstance(value, str) else value
    return out


_UNSTAMPED = set()  # rules already warned about


def _recorded_without(record, stamp):
    """Snakemake's metadata records the job's inputs without its stamp: results made before params stamps, whose
    params Snakemake's own trigger guards; adding the stamp would rerun them for a new input."""
    try:
        recorded = workflow.persistence.input(IOFile(record))
    except Exception:  # no persistence (snakemake --lint) or another Snakemake API: use the stamp
        return False
    return recorded is not None and stamp not in recorded


def params_stamp(name, files, inputs=None):
    """Input function: the job's params stamp (io.refresh_stamp), so a params change reruns the job and its
    dependants even when .snakemake/ is missing or damaged (a restored or copied run folder). The job records the
    stamp's digest in its memory record; a stamp matching that digest is ancient (it never outdates the job).
    `inputs`: an input function whose files' names are part of the job's identity (the data files of the pairs)."""

    def stamp(wildcards):
        path, record = files["stamp"].format(**wildcards), files["memory"].format(**wildcards)
        if _recorded_without(record, path):
            return []
        params = stamped_params(name, wildcards)
        if inputs is not None:
            params["input_files"] = [str(f) for f in inputs(wildcards)]
        state = refresh_stamp(path, params, record)
        if state == "unknown":
            if name not in _UNSTAMPED:
                _UNSTAMPED.add(name)
                logger.warning(
                    f"{record} holds no params digest (made before params stamps): trusted as built with the "
                    f"current config; snakemake --forcerun {name} rebuilds it"
                )
            return []
        return ancient(path) if state == "built" else path

    return stamp


def training_logs(files):
    """A training job's TensorBoard folder with training.report_to: tensorboard (none otherwise), as a named log:
    Snakemake empties it before the job runs and, unlike a missing output, a missing log reruns nothing, so
    switching the key reruns no training (a job writes its events the next time it trains)."""
    if config["training"]["report_to"] != "tensorboard":
        return {}
    return {"tensorboard": directory(files["tensorboard"])}


def resources(mem_mb, runtime, gpu=False, processes=1):
    """mem_mb doubles on each retry; GPU rules ask for the GPU when `device` resolves to CUDA. A training rule on N
    data-parallel processes (`processes`) asks for N GPUs and N times the memory (every rank holds the weights)."""
    out = {"mem_mb": lambda wildcards, attempt: processes * mem_mb * 2 ** (attempt - 1), "runtime": runtime}
    out["warn_fraction"] = str(config["memory"]["warn_fraction"])  # a resource: a threshold must not rerun anything
    return {**out, "gpu": GPU * processes} if gpu else out


def each_run():
    return [{"sampler": sampler, "seed": seed} for sampler, seed in RUNS]


def each_model():
    return [{"model": m} for m in EVAL_MODELS]


def report_files(kind):
    """Every registered job's memory record or benchmark, in the order the rules registered them; the report shows exactly these jobs."""
    return [files[kind].format(**v) for files, each in JOBS for v in (each() if each else [{}])]


# -----------------------------------------------------------------------------
# data: hh-rlhf files, the prompts checkpoint and its chunks


def hh_file(subset):
    """An hh-rlhf file: its path in the hub dataset and in a mirror of it."""
    return f"{subset}/{config['data']['split']}.jsonl.gz"


def pairs_input(wildcards):
    data = config["data"]
    if data["source"] == "sample":
        return [str(SAMPLE_PATH)]
    if data["source"] == "local":
        return [data["path"]]
    if data["mirror"] is not None:  # hh-rlhf from a local copy of the hub's tree
        return [f"{data['mirror']}/{hh_file(s)}" for s in dict.fromkeys(data["subsets"])]
    return []  # hh-rlhf from the hub: downloaded by the job


def data_files(wildcards):
    """The data files the user named (data.path, data.mirror's files): their names are part of the pairs' identity
    (the packaged sample is not: its path is wherever the checkout is)."""
    return [] if config["data"]["source"] == "sample" else pairs_input(wildcards)


def _check_mirror():
    """A mirror file the user cannot read is named when the workflow is read (Snakemake checksums a job's inputs
    and would blame .snakemake instead)."""
    if config["data"]["source"] != "hh-rlhf" or config["data"]["mirror"] is None:
        return
    for path in pairs_input(None):
        if os.path.exists(path):
            readable("data.mirror", path)


try:
    _check_mirror()
except UserError as e:
    raise WorkflowError(str(e)) from None


def check_checkpoint_outputs(prompts, *others):
    """A run folder copied or restored in part (the prompts file without the checkpoint's other outputs) would leave
    the jobs after it with unresolved inputs ('<TBD>'): Snakemake does not rerun a checkpoint whose requested output
    exists, and resolves it only when all its outputs do. One line naming what is missing and what to do instead.
    Without the prompts file nothing is wrong: the checkpoint reruns when a job needs it (frozen studies)."""
    missing = [p for p in others if not os.path.exists(p)]
    if os.path.exists(prompts) and missing:
        raise WorkflowError(
            f"{missing[0]} is missing beside {prompts} (a run folder copied in part?): copy it from the original "
            f"run, or rebuild the prompts: rm {prompts}, then rerun snakemake"
        )


def hub_files():
    """The hh-rlhf files the pairs job downloads from the hub (none when they come from a mirror)."""
    data = config["data"]
    if data["source"] != "hh-rlhf" or data["mirror"] is not None:
        return {}
    return {"hub_files": [hh_file(s) for s in dict.fromkeys(data["subsets"])]}


@functools.lru_cache(maxsize=8)
def _chunk_hashes(path, mtime_ns, chunk_size):
    texts = pd.read_parquet(path, columns=["text"])["text"].tolist()
    return tuple(texts_hash(texts[i : i + chunk_size]) for i in range(0, len(texts), chunk_size))


@functools.lru_cache(maxsize=32)
def _count_problem(path, mtime_ns, keys):
    try:
        check_prompt_counts(pq.ParquetFile(path).metadata.num_rows, config, keys)
    except UserError as e:
        return str(e)


def checked_prompts(*keys, mtime=False):
    """An input function giving the prompts file once the prompts checkpoint has run and the config checks on `keys`
    that need the number of prompts (knn.k, eval.pool, rm.eval_fraction) pass. Each rule names the keys its job
    reads, so `snakemake weights` is not stopped by an evaluation pool it does not need; every job's input is
    evaluated when the DAG is updated after the checkpoint, so a bad value fails before any model work. With
    mtime=False the file's mtime does not count (the job's other inputs carry prompt changes)."""

    def prompts(wildcards=None):
        path = checkpoints.unique_prompts.get().output.prompts
        problem = _count_problem(path, os.stat(path).st_mtime_ns, keys)
        if problem:
            raise WorkflowError(problem)  # Snakemake shows it as the InputFunctionException of the job that asked
        return path if mtime else ancient(path)

    return prompts


def n_prompts():
    return pq.ParquetFile(checkpoints.unique_prompts.get().output.prompts).metadata.num_rows


def chunk_hashes():
    """Content hash of every chunk's prompts (available once the prompts checkpoint has run)."""
    path = checkpoints.unique_prompts.get().output.prompts
    return _chunk_hashes(path, os.stat(path).st_mtime_ns, config["embed"]["chunk_size"])


def chunk_ids():
    return range(len(chunk_hashes()))


def all_chunks(wildcards):
    return [CHUNK.format(i=i) for i in chunk_ids()]


def chunk_files(kind):
    """Every chunk's memory record or benchmark (rule embed_records collects them for the report)."""
    return lambda wildcards: [EMBED_JOB[kind].format(i=i) for i in chunk_ids()]


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


def weights_params(key):
    """The knn or density section of the weights job (the index `auto` picks depends on the number of prompts)."""
    return lambda wildcards: P.weights(config, n_prompts(), embed_dim())[key]


# -----------------------------------------------------------------------------
# training and evaluation inputs


def grpo_inputs(wildcards):
    """The density arm reads the weights; both arms read the same prompts (held-out ones excluded)."""
    inputs = {"prompts": checked_prompts("eval.pool", mtime=True)(wildcards), "model": ancient(MODEL_DIR)}
    if wildcards.sampler == "density":
        inputs["weights"] = WEIGHTS
    if config["grpo"]["reward"] == "rm":
        inputs["rm"] = RM_MODEL
    return inputs


def eval_inputs(wildcards):
    """Base model (also the control) or a policy (`{sampler}_seed{seed}`), scored by the reward model, on the
    evaluated prompts (drawn from the held-out pool stratified by density weight)."""
    if wildcards.model in ("base", "control"):
        policy = MODEL_DIR
    else:
        sampler, seed = wildcards.model.split("_seed")
        policy = GRPO_MODEL.format(sampler=sampler, seed=seed)
    prompts = checked_prompts("eval.pool", mtime=True)(wildcards)
    return {"prompts": prompts, "weights": WEIGHTS, "base": ancient(MODEL_DIR), "policy": policy, "rm": RM_MODEL}

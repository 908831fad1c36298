# Paths, resources and checkpoint helpers shared by all rules: the one place for artifact paths.
import functools
import os

import pandas as pd

from density_grpo.data import SAMPLE_PATH, texts_hash
from density_grpo.device import wants_gpu
from density_grpo.models import model_kind, model_slug
from density_grpo.report import REPORT_FILES

RUN = config["run"]
RES = f"results/{RUN}"
LOGS = f"logs/{RUN}"
BENCH = f"{RES}/bench"

PAIRS = f"{RES}/data/pairs.parquet"
PROMPTS = f"{RES}/data/prompts.parquet"
CHUNK = f"{RES}/embed/chunk_{{i}}.zarr"
WEIGHTS = f"{RES}/density/weights.parquet"
WEIGHTS_META = f"{RES}/density/metadata.json"
RM_MODEL = f"{RES}/rm/model"
RM_METRICS = f"{RES}/rm/metrics.json"
GRPO_MODEL = f"{RES}/grpo/{{sampler}}/model"
GRPO_METRICS = f"{RES}/grpo/{{sampler}}/metrics.jsonl"
GRPO_DRAWS = f"{RES}/grpo/{{sampler}}/draws.parquet"
EVAL = f"{RES}/eval/{{model}}.json"
COMPARISON = f"{RES}/eval/comparison.json"
REPORTS = f"{RES}/reports"
REPORT_PLOTS = [f for f in REPORT_FILES if f.endswith(".png")]

SAMPLERS = config["grpo"]["samplers"]
EVAL_MODELS = ["base", *SAMPLERS]

MODEL_NAME = config["model"]["name_or_path"]
try:
    MODEL_KIND = model_kind(MODEL_NAME)
except UserError as e:
    raise WorkflowError(str(e)) from None
MODEL_DIR = MODEL_NAME if MODEL_KIND == "local" else f"resources/models/{model_slug(MODEL_NAME)}"

GPU = 1 if wants_gpu(config["device"]) else 0


def mem_mb(base):
    """Attempt-scaled memory: a retried job gets twice the memory."""
    return lambda wildcards, attempt: base * 2 ** (attempt - 1)


@functools.lru_cache(maxsize=8)
def _chunk_hashes(path, mtime_ns, chunk_size):
    texts = pd.read_parquet(path, columns=["text"])["text"].tolist()
    return tuple(texts_hash(texts[i : i + chunk_size]) for i in range(0, len(texts), chunk_size))


def chunk_hashes():
    """Content hash of every chunk's prompts (available once the prompts checkpoint has run)."""
    path = checkpoints.unique_prompts.get().output[0]
    return _chunk_hashes(path, os.stat(path).st_mtime_ns, config["embed"]["chunk_size"])


def chunk_hash(wildcards):
    """Params of an embedding job: it reruns only when its own prompts change."""
    return chunk_hashes()[int(wildcards.i)]


def all_chunks(wildcards):
    return [CHUNK.format(i=i) for i in range(len(chunk_hashes()))]


def pairs_input(wildcards):
    source = config["data"]["source"]
    if source == "sample":
        return [SAMPLE_PATH]
    if source == "local":
        return [config["data"]["path"]]
    return []  # hh-rlhf: downloaded (or read from data.mirror) by the job


def grpo_inputs(wildcards):
    """The density arm reads the weights; both arms read the same prompts (held-out ones excluded)."""
    inputs = {"prompts": PROMPTS, "model": ancient(MODEL_DIR)}
    if wildcards.sampler == "density":
        inputs["weights"] = WEIGHTS
    if config["grpo"]["reward"] == "rm":
        inputs["rm"] = RM_MODEL
    return inputs


def eval_inputs(wildcards):
    """Base model or a policy, scored by the reward model, on the held-out prompts."""
    policy = MODEL_DIR if wildcards.model == "base" else GRPO_MODEL.format(sampler=wildcards.model)
    return {"prompts": PROMPTS, "base": ancient(MODEL_DIR), "policy": policy, "rm": RM_MODEL}

"""Config: loading, merging, validation, and one typed config per section (the TRL `GRPOConfig` pattern).

config.yaml holds every default and the JSON schema (schemas/config.schema.yaml) every allowed value and range;
the dataclasses below hold neither. A section's dataclass documents its fields, checks each declared value against
the schema and runs the cross-field checks, with messages naming the config key. The Snakefile validates the whole
config once (`validate_config`); a step rebuilds its sections from its rule's params (`Section.from_params`), which
hold only the keys the step reads: a field its rule did not declare raises on access instead of reading a default.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from density_grpo.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
DEFAULT = ROOT / "config.yaml"


# -----------------------------------------------------------------------------
# files


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge (override wins), as Snakemake merges --configfile over configfile."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if nested else copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML config file as a dict; UserError naming the file (and line) when it is not valid YAML."""
    try:
        cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: not valid YAML ({problem})") from None
    if cfg is not None and not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {type(cfg).__name__}")
    return cfg or {}


def load_config(*overrides: str | os.PathLike | dict) -> dict:
    """config.yaml merged with partial YAML files/dicts, validated."""
    cfg = read_yaml(DEFAULT)
    for o in overrides:
        cfg = merge(cfg, o if isinstance(o, dict) else read_yaml(o))
    validate_config(cfg)
    return cfg


# -----------------------------------------------------------------------------
# the schema


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _finite_number(_, x: Any) -> bool:
    """JSON Schema's number, without NaN and infinity (YAML's .nan and .inf parse to floats)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@functools.lru_cache(maxsize=1)
def _validator_class():
    """Draft 2020-12 with a strict integer (JSON Schema accepts 8.0, which crashes range() later) and a finite number."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine_many(
        {"integer": lambda _, x: isinstance(x, int) and not isinstance(x, bool), "number": _finite_number}
    )
    return jsonschema.validators.extend(base, type_checker=strict)


def _shown(x: Any) -> str:
    """A config value as the user wrote it in YAML: null for None (Python's repr otherwise)."""
    return "null" if x is None else repr(x)


def _message(e) -> str:
    """A schema error in plain words for the cases users hit most (integers, non-finite numbers, nulls, run name)."""
    types = [e.validator_value] if isinstance(e.validator_value, str) else e.validator_value
    if e.validator == "type" and "integer" in types:
        return f"expected an integer{' or null' if 'null' in types else ''}, got {_shown(e.instance)}"
    if e.validator == "type" and "number" in types:
        return f"expected a finite number{' or null' if 'null' in types else ''}, got {_shown(e.instance)}"
    if e.validator == "type":
        return f"expected {' or '.join(types)}, got {_shown(e.instance)}"
    if e.validator == "enum":
        return f"{_shown(e.instance)} is not one of {e.validator_value}"
    if list(e.absolute_path) == ["run"] and e.validator in ("pattern", "not"):
        return f"expected a plain name (letters, digits, '-', '_', '.'; not '.' or '..'), got {e.instance!r}"
    return e.message


def _schema_error(instance: Any, sub: dict, prefix: str) -> str | None:
    """The first schema error of `instance` against the sub-schema `sub`, as 'config key ...: ...' (None: valid)."""
    errors = sorted(_validator_class()(sub).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    e = errors[0]
    key = ".".join([prefix, *map(str, e.absolute_path)] if prefix else map(str, e.absolute_path)) or "(top level)"
    return f"config key {key}: {_message(e)}"


def allowed(key: str) -> tuple:
    """The allowed values of a config key (`section.name`) from the schema's enum, e.g. allowed("embed.pooling")."""
    node = schema()
    for part in key.split("."):
        node = node["properties"][part]
    return tuple(node.get("enum") or node["items"]["enum"])


# -----------------------------------------------------------------------------
# typed sections


class _Undeclared:
    """The value of a field its rule did not declare: reading it is a bug (the step would read an undeclared key)."""

    def __repr__(self) -> str:
        return "UNDECLARED"


UNDECLARED: Any = _Undeclared()
AUDIT: set[str] | None = None  # when a set: every field read is recorded as "section.field" (tests/test_contract.py)


def section(cls):
    """A typed config section: a frozen dataclass (repr and eq from Section: they must not read undeclared fields)."""
    return dataclass(frozen=True, repr=False, eq=False)(cls)


class Section:
    """Base of the typed config sections: schema checks per declared field, then `check()`; reads are audited."""

    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        global AUDIT
        audit, AUDIT = AUDIT, None  # the checks read fields; only the step's own reads count
        try:
            props = schema()["properties"][self.SECTION]["properties"]
            for f in dataclasses.fields(self):
                value = object.__getattribute__(self, f.name)
                if value is not UNDECLARED and f.name in props:
                    problem = _schema_error(value, props[f.name], f"{self.SECTION}.{f.name}")
                    if problem:
                        raise UserError(problem)
            self.check()
        finally:
            AUDIT = audit

    def values(self) -> dict[str, Any]:
        """The declared fields and their values."""
        return {f.name: v for f in dataclasses.fields(self) if (v := object.__getattribute__(self, f.name)) is not UNDECLARED}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.values().items())})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.values() == other.values()  # type: ignore[union-attr]

    def check(self) -> None:
        """Cross-field checks (UserError naming the key); only declared fields take part."""

    def declared(self, *names: str) -> bool:
        return all(object.__getattribute__(self, n) is not UNDECLARED for n in names)

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if value is UNDECLARED:
            raise KeyError(f"{object.__getattribute__(self, 'SECTION')}.{name} is not declared in this rule's params")
        if AUDIT is not None and name in object.__getattribute__(self, "__dataclass_fields__") and not object.__getattribute__(self, "__dict__").get("_fixed"):
            AUDIT.add(f"{object.__getattribute__(self, 'SECTION')}.{name}")
        return value

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        """The section from a rule's params (the keys its step reads); undeclared fields stay UNDECLARED."""
        # dict.items: building the section is not reading its fields (cli.RecordingParams would count every key as
        # read); the audit counts the step's reads of the fields
        given = dict(dict.items(params) if isinstance(params, dict) else params.items())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(given) - names
        if unknown:
            raise ValueError(f"{cls.SECTION}: params {sorted(unknown)} are not fields of {cls.__name__}")
        return cls(**{n: given.get(n, UNDECLARED) for n in names})

    @classmethod
    def fixed(cls, **values: Any):
        """A section with values the code fixes itself, not config (e.g. how responses are embedded): reading it is
        not reading a rule's params, so the params audit does not count it."""
        obj = cls.from_params(values)
        object.__setattr__(obj, "_fixed", True)
        return obj



@section
class DataConfig(Section):
    """`data`: where the preference pairs come from (rule pairs)."""

    SECTION: ClassVar[str] = "data"
    source: str
    """sample (the shipped generated pairs), hh-rlhf (Anthropic HH-RLHF) or local (one file)."""
    path: str | None
    """local: a .jsonl, .jsonl.gz or .parquet file of HH pairs."""
    subsets: list[str]
    """hh-rlhf: the subsets to read, in order."""
    split: str
    """hh-rlhf: train or test."""
    mirror: str | None
    """hh-rlhf: a local folder with the hub dataset's tree (null: download from the hub)."""
    max_pairs: int | None
    """keep this many pairs, a seeded sample across the selected subsets in file order (null: all; pairs.load_pairs)."""

    def check(self) -> None:
        if self.declared("source", "path") and self.source == "local" and not self.path:
            raise UserError("config key data.path: required when data.source is 'local'")


@section
class EmbedConfig(Section):
    """`embed`: how a prompt becomes a vector (rule embed_chunk; evaluation embeds responses the same way)."""

    SECTION: ClassVar[str] = "embed"
    source: str
    """hidden (masked mean of a hidden state) or logits (mean-pooled logits, stored as the exact d_model transform)."""
    layer: int
    """the hidden layer pooled; -1 = the last (after the final norm)."""
    chunk_size: int
    """prompts per Zarr chunk store (the rules cut prompts.parquet into chunks)."""
    batch_tokens: int
    """token budget of one forward batch (padded tokens); longer prompts run in windows of this many tokens."""
    max_length: int
    """tokens kept per prompt, from the end (the final request stays)."""
    pooling: str
    """the tokens averaged: human (Human-turn text), mean (every token), last_turn (the final Human turn), last."""


@section
class KNNConfig(Section):
    """`knn`: the k-nearest-neighbour search over all prompt embeddings (rule knn_weights).

    `index` is the resolved kind (the rules resolve `auto`); the IVF knobs are declared only for IVF kinds, each
    kind's own knobs only for it, and `seed` (the config's seed) only where a sample is drawn.
    """

    SECTION: ClassVar[str] = "knn"
    k: int
    """neighbours per prompt, self excluded."""
    index: str
    """flat (exact), ivf, ivfpq (PQ codes, re-ranked) or ivfjoin (IVF self-join); auto is resolved by the rules."""
    exact_max: int
    """auto: exact search up to this many prompts, ivfjoin beyond."""
    nlist: int | None
    """IVF lists (null: about 4 sqrt(n); ivfjoin about 2 sqrt(n))."""
    nprobe: int
    """IVF lists probed per query."""
    pq_m: int
    """ivfpq: sub-quantizers (must divide the embedding dim)."""
    rerank: int
    """ivfpq: rerank x (k+1) PQ candidates per row are re-ranked with float16 copies of the vectors."""
    fix_fraction: float
    """ivfjoin: this fraction of rows (largest mean distance) is searched again with fix_nprobe lists."""
    fix_nprobe: int
    """ivfjoin: lists probed in that second pass."""
    recall_sample: int
    """approximate kinds: rows whose neighbours are checked against exact search."""
    max_index_gb: float
    """auto: ivfpq when ivfjoin's float32 vectors would exceed this."""
    seed: int = UNDECLARED
    """the config's seed: IVF training and recall samples (not a key of the knn section)."""

    def check(self) -> None:
        problem = _schema_error(self.seed, schema()["properties"]["seed"], "seed") if self.declared("seed") else None
        if problem:
            raise UserError(problem)


@section
class DensityConfig(Section):
    """`density`: k-NN distance -> density -> sampling weight (rule knn_weights)."""

    SECTION: ClassVar[str] = "density"
    alpha: float
    """weight ∝ (1 / density)^alpha."""
    eps: float
    """density = 1 / (mean k-NN distance + eps)."""
    max_ratio: float | None
    """clip weights to max_ratio x the median (null: no clip)."""
    postprocess: str
    """none, center, abtt (centre, drop the top principal directions) or whiten; fitted on streamed moments."""
    components: int | None
    """abtt: directions removed (null: 1); whiten: top directions kept (null: all). Declared only for those two."""
    length_residual: str
    """none, tokens or tokens_turns: remove the trend of log k-NN distance in log prompt length."""


@section
class RMConfig(Section):
    """`rm`: the Bradley-Terry reward model (rule reward_model; evaluation and GRPO score with it)."""

    SECTION: ClassVar[str] = "rm"
    max_steps: int
    """optimizer steps."""
    batch_size: int
    """pairs per step (chosen + rejected: twice as many sequences); also the scoring batch."""
    learning_rate: float
    """AdamW learning rate."""
    max_length: int
    """prompt + response tokens (training drops longer pairs; scoring keeps the last max_length tokens)."""
    eval_fraction: float
    """fraction of the prompts held out (whole prompts) for accuracy and margin."""
    gradient_checkpointing: bool
    """recompute activations in the backward pass."""
    train_layers: int | None
    """train only the top N decoder blocks + head (null: all)."""
    processes: int
    """data-parallel processes of the job (GPUs on CUDA); each takes batch_size / processes pairs of every step."""

    def check(self) -> None:
        if self.declared("batch_size", "processes") and self.batch_size % self.processes:
            raise UserError(
                f"config key rm.processes: {self.processes} processes cannot share rm.batch_size = {self.batch_size} "
                "pairs per step evenly"
            )


@section
class GRPOConfig(Section):
    """`grpo`: one TRL GRPOTrainer policy per arm (sampler) and seed (rule grpo).

    Each optimizer step draws `prompts_per_step` prompts and samples `num_generations` completions of each (the
    group whose rewards are normalised together), trained on in micro-batches of `micro_batch` sequences.
    """

    SECTION: ClassVar[str] = "grpo"
    samplers: list[str]
    """the arms: density (prompts drawn by weights.parquet) and/or uniform."""
    seeds: list[int]
    """every arm is trained once per seed."""
    reward: str
    """rm (the trained reward model) or self_certainty (Intuitor: the policy's own confidence)."""
    steps: int
    """optimizer steps."""
    prompts_per_step: int
    """unique prompts drawn per optimizer step."""
    num_generations: int
    """completions per prompt (the GRPO group)."""
    micro_batch: int
    """sequences per forward/backward, at most (per process: gradient accumulation over the step's sequences)."""
    processes: int
    """data-parallel processes of the job (GPUs on CUDA); the global batch keeps its meaning for any number."""
    keyed_sampling: bool
    """each completion's sampling noise keyed by (policy seed, generation, global row): the same completions for
    any number of processes (false: TRL's own sampling, whose random stream depends on the process layout)."""
    max_completion_length: int
    """completion tokens sampled at most."""
    max_prompt_length: int
    """prompt tokens kept, from the end (the final request stays): training and the collapse curves."""
    temperature: float
    """sampling temperature of the completions."""
    learning_rate: float
    """AdamW learning rate."""
    beta: float
    """KL coefficient to the reference model (0: no reference model)."""
    epsilon: float
    """PPO clip range."""
    loss_type: str
    """TRL loss type: grpo, bnpo, dr_grpo or dapo."""
    gradient_checkpointing: bool
    """recompute activations in the backward pass."""
    token_chunk: int
    """self_certainty: completion tokens per LM-head chunk (never the full B x T x V logits); declared only then."""

    @property
    def batch(self) -> int:
        """Sequences per optimizer step: prompts_per_step x num_generations."""
        return self.prompts_per_step * self.num_generations

    @property
    def process_micro_batch(self) -> int:
        """Sequences per forward/backward on each process: micro_batch, or less when each process has fewer."""
        return min(self.micro_batch, self.batch // self.processes)

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step on each process (the global batch: micro x processes x this)."""
        return self.batch // (self.process_micro_batch * self.processes)

    def check(self) -> None:
        if self.declared("prompts_per_step", "num_generations", "micro_batch") and self.batch % self.micro_batch:
            raise UserError(
                f"config key grpo.micro_batch: {self.micro_batch} must divide grpo.prompts_per_step x "
                f"grpo.num_generations = {self.batch}"
            )
        if self.declared("prompts_per_step", "num_generations", "micro_batch", "processes"):
            share = self.batch // self.processes
            if self.batch % self.processes or share % self.process_micro_batch:
                raise UserError(
                    f"config key grpo.processes: {self.processes} processes cannot share grpo.prompts_per_step x "
                    f"grpo.num_generations = {self.batch} sequences in whole micro-batches of at most "
                    f"grpo.micro_batch = {self.micro_batch}"
                )


@section
class EvalConfig(Section):
    """`eval`: held-out prompts, the final evaluation (rule evaluate_model), the collapse curves and the comparison."""

    SECTION: ClassVar[str] = "eval"
    pool: int
    """prompts held out from training (a seeded hash of the prompt id, independent of the weights)."""
    prompts: int
    """evaluated per model, drawn from the pool stratified by density weight."""
    rare_fraction: float
    """share of the evaluated prompts from the rare stratum."""
    rare_quantile: float
    """rare stratum: prompts in this top fraction of density weights (over all prompts)."""
    samples: int
    """completions per prompt and model (the base model gets two such sets: the noise floor)."""
    max_new_tokens: int
    """completion tokens sampled at most."""
    max_prompt_length: int
    """prompt tokens kept, from the end (the final request stays)."""
    temperature: float
    """sampling temperature of the evaluation (in the control's job: eval.control_temperature)."""
    control_temperature: float | None
    """the positive control: the base model sampled at this (lower) temperature must come out less diverse than
    at eval.temperature (null: no control)."""
    every: int
    """collapse curves: a point every this many GRPO steps (and at step 0)."""
    curve_prompts: int
    """collapse curves: a fixed set of this many pool prompts ..."""
    curve_samples: int
    """... with this many completions each (sampled like GRPO: grpo.max_completion_length, grpo.temperature)."""
    bootstrap: int
    """resamples of the 95% intervals."""

    def check(self) -> None:
        for key in ("prompts", "curve_prompts"):
            if self.declared(key, "pool") and getattr(self, key) > self.pool:
                raise UserError(f"config key eval.{key}: {getattr(self, key)} is more than the held-out pool eval.pool = {self.pool}")


@section
class TrainingConfig(Section):
    """`training`: what the training jobs (rules reward_model and grpo) report while they run. The rules read it
    (rules/common.smk: training_logs), no step does: it decides which logs a job gets, not how it trains."""

    SECTION: ClassVar[str] = "training"
    report_to: str
    """none, or tensorboard: TRL's logged metrics (and GRPO's collapse curves) as TensorBoard event files in each
    job's folder results/{run}/tensorboard/{job}/."""


class Job:
    """Base of a stage's typed job (a dataclass built from its rule's params): a field typed as a Section is built
    from the params of the same name (None where the rule declares none: a section the step does not read), any
    other field is the param itself (a value the rules resolved: device, dtype, seeds, the model's name)."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        import typing

        hints, values = typing.get_type_hints(cls), {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            section = next((t for t in (hint, *typing.get_args(hint)) if isinstance(t, type) and issubclass(t, Section)), None)
            if section is None:
                values[f.name] = params[f.name]
            else:
                values[f.name] = section.from_params(params[f.name]) if f.name in params else None
        return cls(**values)


SECTIONS: dict[str, type[Section]] = {
    cls.SECTION: cls
    for cls in (DataConfig, EmbedConfig, KNNConfig, DensityConfig, RMConfig, GRPOConfig, EvalConfig, TrainingConfig)
}


# -----------------------------------------------------------------------------
# validation


def validate_config(cfg: dict) -> None:
    """Check `cfg` against the JSON schema, then every section's cross-field checks; UserError names the key."""
    problem = _schema_error(cfg, schema(), "")
    if problem:
        raise UserError(problem)
    for name, cls in SECTIONS.items():
        cls(**cfg[name])
    data = cfg["data"]
    if data["source"] == "local":
        if Path(data["path"]).is_dir():
            expected = "expected a .jsonl, .jsonl.gz or .parquet file"
            raise UserError(f"config key data.path: {data['path']!r} is a directory, {expected}")
        if not Path(data["path"]).is_file():
            raise UserError(f"config key data.path: no such file {data['path']!r}")
        readable("data.path", data["path"])
    if data["source"] == "hh-rlhf" and data["mirror"] and not Path(data["mirror"]).is_dir():
        raise UserError(f"config key data.mirror: no such folder {data['mirror']!r}")


def readable(key: str, path: str | os.PathLike) -> None:
    """Checked at planning time, not in the job: Snakemake checksums a job's inputs and blames .snakemake for an
    unreadable one."""
    try:
        open(path, "rb").close()
    except OSError as e:
        raise UserError(f"config key {key}: cannot read {str(path)!r} ({e.strerror})") from None


PROMPT_COUNT_KEYS = ("knn.k", "eval.pool", "rm.eval_fraction")


def check_prompt_counts(n: int, cfg: dict, keys: tuple[str, ...] = PROMPT_COUNT_KEYS) -> dict:
    """The config checks that need the number of unique prompts `n`, for the given keys only (a job checks the keys
    it reads: the weights need no evaluation pool); the rules run them right after the prompts checkpoint, before any
    model work. Returns the counts they imply."""
    k, n_eval, fraction = cfg["knn"]["k"], cfg["eval"]["pool"], cfg["rm"]["eval_fraction"]
    if "knn.k" in keys and k >= n:
        raise UserError(f"config key knn.k: {k} neighbours need at least {k + 1} prompts, the data has {n}")
    if "eval.pool" in keys and n_eval >= n:
        raise UserError(f"config key eval.pool: {n_eval} held-out prompts leave none of the {n} prompts for training")
    n_rm = math.ceil(fraction * n)
    if "rm.eval_fraction" in keys and n_rm >= n:
        raise UserError(f"config key rm.eval_fraction: {fraction} holds out all {n} prompts from the reward model")
    return {"n_prompts": n, "n_eval": n_eval, "n_train": n - n_eval, "n_rm_eval": n_rm}


def main(argv: list[str] | None = None) -> int:
    """`python -m density_grpo.config [partial.yaml ...]`: validate config.yaml merged with the given files.

    Snakemake parses --configfile files itself before the workflow runs, and its YAML error does not name the
    file; this names the file, line and key.
    """
    import sys

    try:
        load_config(*(sys.argv[1:] if argv is None else argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("config ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

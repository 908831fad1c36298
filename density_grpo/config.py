"""Config: loading, recursive merging and validation with one-line errors naming the key."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import yaml

from density_grpo.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
DEFAULT = ROOT / "config.yaml"


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge (override wins), as Snakemake merges --configfile over configfile."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
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


def _validator(schema: dict):
    """Draft 2020-12 with a strict integer: JSON Schema accepts 8.0 as an integer, which crashes range() later."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine("integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(base, type_checker=strict)(schema)


def _message(e) -> str:
    """A schema error in plain words for the cases users hit most (integers, the run name)."""
    types = [e.validator_value] if isinstance(e.validator_value, str) else e.validator_value
    if e.validator == "type" and "integer" in types:
        return f"expected an integer{' or null' if 'null' in types else ''}, got {e.instance!r}"
    if list(e.absolute_path) == ["run"] and e.validator in ("pattern", "not"):
        return f"expected a plain name (letters, digits, '-', '_', '.'; not '.' or '..'), got {e.instance!r}"
    return e.message


def validate_config(cfg: dict, schema_path: str | os.PathLike = SCHEMA) -> None:
    """Check `cfg` against the JSON schema and cross-key rules; UserError names the offending key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(_validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UserError(f"config key {key}: {_message(e)}")
    g = cfg["grpo"]
    if (g["prompts_per_step"] * g["num_generations"]) % g["micro_batch"]:
        raise UserError(
            f"config key grpo.micro_batch: {g['micro_batch']} must divide grpo.prompts_per_step x grpo.num_generations "
            f"= {g['prompts_per_step'] * g['num_generations']}"
        )
    ev = cfg["eval"]
    for key in ("prompts", "curve_prompts"):
        if ev[key] > ev["pool"]:
            raise UserError(f"config key eval.{key}: {ev[key]} is more than the held-out pool eval.pool = {ev['pool']}")
    data = cfg["data"]
    if data["source"] == "local":
        if not data["path"]:
            raise UserError("config key data.path: required when data.source is 'local'")
        if not Path(data["path"]).is_file():
            raise UserError(f"config key data.path: no such file {data['path']!r}")
        _readable("data.path", data["path"])
    if data["source"] == "hh-rlhf" and data["mirror"]:
        if not Path(data["mirror"]).is_dir():
            raise UserError(f"config key data.mirror: no such folder {data['mirror']!r}")
        for subset in data["subsets"]:
            if (path := Path(data["mirror"]) / subset / f"{data['split']}.jsonl.gz").exists():
                _readable("data.mirror", path)


def _readable(key: str, path: str | os.PathLike) -> None:
    """Checked here, not in the job: Snakemake checksums a job's inputs and blames .snakemake for an unreadable one."""
    try:
        open(path, "rb").close()
    except OSError as e:
        raise UserError(f"config key {key}: cannot read {str(path)!r} ({e.strerror})") from None


def check_prompt_counts(n: int, cfg: dict) -> dict:
    """The config checks that need the number of unique prompts `n` (read: knn.k, eval.pool, rm.eval_fraction);
    the rules run them right after the prompts checkpoint, before any model work. Returns the counts they imply."""
    k, n_eval, fraction = cfg["knn"]["k"], cfg["eval"]["pool"], cfg["rm"]["eval_fraction"]
    if k >= n:
        raise UserError(f"config key knn.k: {k} neighbours need at least {k + 1} prompts, the data has {n}")
    if n_eval >= n:
        raise UserError(f"config key eval.pool: {n_eval} held-out prompts leave none of the {n} prompts for training")
    n_rm = math.ceil(fraction * n)
    if n_rm >= n:
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

"""Config: loading, recursive merging and validation with one-line errors naming the key."""

from __future__ import annotations

import copy
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


def load_config(*overrides: str | os.PathLike | dict) -> dict:
    """config.yaml merged with partial YAML files/dicts, validated."""
    cfg = yaml.safe_load(DEFAULT.read_text())
    for o in overrides:
        cfg = merge(cfg, o if isinstance(o, dict) else yaml.safe_load(Path(o).read_text()) or {})
    validate_config(cfg)
    return cfg


def validate_config(cfg: dict, schema_path: str | os.PathLike = SCHEMA) -> None:
    """Check `cfg` against the JSON schema and cross-key rules; UserError names the offending key."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UserError(f"config key {key}: {e.message}")
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
    if data["source"] == "hh-rlhf" and data["mirror"] and not Path(data["mirror"]).is_dir():
        raise UserError(f"config key data.mirror: no such folder {data['mirror']!r}")

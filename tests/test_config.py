"""Config merging and validation: errors name the offending key."""

from __future__ import annotations

import pytest
import yaml

from density_grpo.config import load_config, merge, validate_config
from density_grpo.errors import UserError


def test_merge_is_recursive_and_typed():
    base = {"knn": {"k": 10, "index": "auto"}, "run": "default"}
    out = merge(base, {"knn": {"k": 5}})
    assert out == {"knn": {"k": 5, "index": "auto"}, "run": "default"}
    assert base["knn"]["k"] == 10  # the base is not mutated


def test_default_config_is_valid():
    cfg = load_config()
    assert cfg["data"]["source"] == "sample" and cfg["model"]["name_or_path"] == "smollm2-135m-instruct"


def test_partial_yaml_override(tmp_path):
    p = tmp_path / "over.yaml"
    p.write_text(yaml.safe_dump({"run": "x", "knn": {"k": 3}}))
    cfg = load_config(p)
    assert cfg["run"] == "x" and cfg["knn"]["k"] == 3 and cfg["knn"]["index"] == "auto"


@pytest.mark.parametrize(
    "override, message",
    [
        ({"knn": {"k": "5"}}, "config key knn.k: expected an integer, got '5'"),
        ({"embed": {"chunk_size": 8.0}}, "config key embed.chunk_size: expected an integer, got 8.0"),
        ({"embed": {"max_length": 64.5}}, "config key embed.max_length: expected an integer, got 64.5"),
        ({"data": {"max_pairs": 10.0}}, "config key data.max_pairs: expected an integer or null, got 10.0"),
        ({"knn": {"k": True}}, "config key knn.k: expected an integer, got True"),
        ({"run": ".."}, "config key run: expected a plain name"),
        ({"run": "."}, "config key run: expected a plain name"),
        ({"run": "a/b"}, "config key run: expected a plain name"),
        ({"data": {"subsets": ["red-team-attempts"]}}, "config key data.subsets.0: 'red-team-attempts' is not one of"),
        ({"knn": {"extra": 1}}, "config key knn: Additional properties are not allowed ('extra' was unexpected)"),
        ({"typo": 1}, "config key (top level): Additional properties are not allowed ('typo' was unexpected)"),
        ({"embed": {"source": "vocab"}}, "config key embed.source: 'vocab' is not one of ['hidden', 'logits']"),
        ({"data": {"source": "local"}}, "config key data.path: required when data.source is 'local'"),
        ({"data": {"source": "local", "path": "/no/such.jsonl"}}, "config key data.path: no such file '/no/such.jsonl'"),
        ({"data": {"source": "hh-rlhf", "mirror": "/no/such/dir"}}, "config key data.mirror: no such folder"),
        ({"grpo": {"samplers": []}}, "config key grpo.samplers"),
        ({"training": {"report_to": "wandb"}}, "config key training.report_to: 'wandb' is not one of ['none', 'tensorboard']"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(UserError) as e:
        load_config(override)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_validate_rejects_missing_section():
    cfg = load_config()
    del cfg["knn"]
    with pytest.raises(UserError, match="'knn' is a required property"):
        validate_config(cfg)


def test_yaml_syntax_error_names_the_file(tmp_path, capsys):
    from density_grpo.config import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("knn: {k: 3\nrun: x\n")
    with pytest.raises(UserError, match=r"bad.yaml:2:4: not valid YAML \(expected ',' or '}'"):
        load_config(bad)
    assert main([str(bad)]) == 1 and "bad.yaml:2:4" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("knn: {k: 3}\n")
    assert main([str(good)]) == 0
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="bad.yaml: expected a mapping of config keys, got list"):
        load_config(bad)

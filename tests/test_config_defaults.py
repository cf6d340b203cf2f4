"""One home for each setting's default: the schema's ``default:`` values (per kind where they differ), filled
by grpo_vqa.config.fill_defaults, are what the data generators, the model builder and the tables read."""

from __future__ import annotations

import copy

import pytest
import yaml
from config_helpers import REPO

from grpo_vqa.config import (
    deep_merge,
    entry_defaults,
    fill_defaults,
    load_schema,
    tiny_spec_defaults,
    validate_config,
)
from grpo_vqa.models.tiny import DEFAULT_SPEC, resolve_spec

SPLITS = {"train": 4}


def _embedded() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("counting", {"min_count": 1, "max_count": 5, "image_size": 112, "style": "flat"}),
        ("math", {"max_count": 9, "image_size": 112, "style": "flat"}),
        ("grounding", {"prompt_style": "vsr", "image_size": 112, "style": "flat"}),
        (
            "relation",
            {"bias": 0.5, "radius": [14, 22], "tied_colors": False, "layout": "free", "prompt_style": "vsr"},
        ),
    ],
)
def test_dataset_defaults_by_kind(kind, expected):
    cfg = _embedded()
    cfg["datasets"]["extra"] = {"kind": kind, "source": "synthetic", "splits": SPLITS}
    validate_config(cfg)
    got = cfg["datasets"]["extra"]
    assert {k: got[k] for k in expected} == expected
    assert entry_defaults("datasets", {"kind": kind, "source": "synthetic", "splits": SPLITS}) == got


def test_per_kind_defaults_apply_only_to_their_kind_and_never_override():
    counting = entry_defaults("datasets", {"kind": "counting", "max_count": 7})
    assert counting["max_count"] == 7 and counting["min_count"] == 1
    grounding = entry_defaults("datasets", {"kind": "grounding"})
    assert not {"max_count", "min_count", "bias", "radius", "tied_colors", "layout"} & set(grounding)
    entry = {"kind": "math"}
    entry_defaults("datasets", entry)
    assert entry == {"kind": "math"}  # a copy is filled


def test_fill_defaults_applies_else_branches():
    schema = {
        "type": "object",
        "if": {"properties": {"a": {"const": 1}}, "required": ["a"]},
        "then": {"properties": {"b": {"default": "then"}}},
        "else": {"properties": {"b": {"default": "else"}}},
    }
    assert fill_defaults({"a": 1}, schema) == {"a": 1, "b": "then"}
    assert fill_defaults({"a": 2}, schema) == {"a": 2, "b": "else"}


def test_default_spec_is_the_schemas_tiny_defaults():
    props = load_schema()["$defs"]["model"]["properties"]["tiny"]["properties"]
    assert all("default" in sub for sub in props.values()), "every tiny spec key needs a schema default"
    assert DEFAULT_SPEC == tiny_spec_defaults() == {k: sub["default"] for k, sub in props.items()}
    assert resolve_spec(None) == DEFAULT_SPEC


def test_tiny_models_get_full_spec_and_pretrain_pretrained_get_neither():
    cfg = _embedded()
    cfg["models"]["bare"] = {"source": "tiny", "arch": "idefics3"}
    cfg["models"]["hub"] = {"source": "pretrained", "arch": "idefics3", "path": str(REPO / "tests")}
    filled = copy.deepcopy(cfg)
    fill_defaults(filled)
    bare = filled["models"]["bare"]
    assert bare["tiny"] == DEFAULT_SPEC and resolve_spec(bare["tiny"]) == DEFAULT_SPEC
    assert bare["pretrain"] == {"steps": 0}
    assert "tiny" not in filled["models"]["hub"] and "pretrain" not in filled["models"]["hub"]
    # config.yaml writes only the sizes that differ from the defaults; the build sees the same spec as before
    qwen = filled["models"]["qwen"]["tiny"]
    assert resolve_spec(qwen) == DEFAULT_SPEC | {"rope_theta": 100.0, "mrope_section": [0, 2, 14]}
    assert filled["models"]["smolvlm"]["tiny"] == DEFAULT_SPEC


def test_config_yaml_tiny_keys_differ_from_the_defaults():
    for name, model in _embedded()["models"].items():
        same = {k for k, v in (model.get("tiny") or {}).items() if DEFAULT_SPEC[k] == v}
        assert not same, (
            f"config/config.yaml models.{name}.tiny repeats the schema's default of {sorted(same)}"
        )


def test_tables_read_the_filled_defaults():
    from grpo_vqa.reporting.bias_table import bias_level
    from grpo_vqa.reporting.shape_counting_table import train_max_count

    overlay = {
        "datasets": {
            "shapes": {"kind": "counting", "source": "synthetic", "splits": SPLITS},
            "rel": {
                "kind": "relation",
                "source": "synthetic",
                "splits": SPLITS,
                "relations": ["above", "below"],
            },
        },
        "experiments": {
            "c": {"model": "qwen", "dataset": "shapes"},
            "r": {"model": "qwen", "dataset": "rel"},
        },
    }
    cfg = validate_config(deep_merge(_embedded(), overlay))
    assert train_max_count(cfg, "c") == 5
    assert bias_level(cfg, "r") == 0.5

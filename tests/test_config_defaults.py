"""One home for each setting's default: the schema's ``default:`` values (per kind where they differ), filled
by grpo_vqa.config.fill_defaults, are what the data generators, the model builder and the tables read."""

from __future__ import annotations

import copy

import pytest
import yaml
from config_helpers import REAL_FIXTURES, REPO, loader_cfg

from grpo_vqa.config import (
    ConfigError,
    deep_merge,
    entry_defaults,
    fill_defaults,
    load_schema,
    tiny_spec_defaults,
    validate_config,
)
from grpo_vqa.data.real import LOADERS, DataQuality, load_items
from grpo_vqa.models.tiny import DEFAULT_SPEC, resolve_spec

SPLITS = {"train": 4}
#: The warm start's scene mix: make_pretrain_items's arguments before the schema held them (unchanged).
PRETRAIN_SCENE_DEFAULTS = {
    "layout": "free",
    "relation_share": 0.8,
    "proximity_share": 0.2,
    "textured_share": 0.2,
    "tied_colors": True,
    "radius": [14, 22],
    "max_count": 5,
    "single_share": 0.0,
    "compare_share": 0.0,
}
#: The settings of every loader's real: block, and each loader's own (the loaders' former fallbacks).
REAL_COMMON_DEFAULTS = {
    "hub_id": None,
    "local_dir": None,
    "cache_dir": None,
    "max_skipped_fraction": 0.05,
    "ids": None,
}
REAL_LOADER_DEFAULTS = {
    "vsr": {
        "data_files": {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"},
        "images_dir": None,
    },
    "rel3d": {"images_dir": None, "split_file": "c_0.9_c_0.1"},
    "spatialsense": {"images_dir": None},
    "drivingvqa": {
        "images_subdir": "images",
        "single_question_only": True,
        "max_pixels": 3_686_400,
        "reasoning": "interleaved",
    },
    "aokvqa": {"rationales": "first", "coco_split": None, "coco_dir": None, "version": "v1p0"},
    "mm_open_r1": {},
}


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
    assert bare["pretrain"] == {"steps": 0, "gate": None} | PRETRAIN_SCENE_DEFAULTS
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


def test_config_yaml_pretrain_keys_differ_from_the_defaults():
    props = load_schema()["$defs"]["model"]["properties"]["pretrain"]["properties"]
    for name, model in _embedded()["models"].items():
        same = {k for k, v in (model.get("pretrain") or {}).items() if props[k].get("default", object()) == v}
        assert not same, (
            f"config/config.yaml models.{name}.pretrain repeats the schema's default of {sorted(same)}"
        )


def test_make_pretrain_items_takes_the_scene_mix_without_defaults():
    import inspect

    from grpo_vqa.data.pretrain import SCENE_KEYS, default_warm_start, make_pretrain_items, scene_mix

    params = inspect.signature(make_pretrain_items).parameters
    assert {k for k, p in params.items() if p.default is not inspect.Parameter.empty} == {"with_images"}
    assert set(SCENE_KEYS) | {"size"} <= set(params)
    pretrain, size = default_warm_start()
    assert size == DEFAULT_SPEC["image_size"] == 112
    assert {k: pretrain[k] for k in SCENE_KEYS} == PRETRAIN_SCENE_DEFAULTS
    assert scene_mix(pretrain) == PRETRAIN_SCENE_DEFAULTS | {"radius": (14, 22)}
    with pytest.raises(KeyError, match="single_share"):
        scene_mix({k: v for k, v in pretrain.items() if k != "single_share"})
    # config.yaml's tiny models: their own mix, the rest from the schema
    qwen = validate_config(_embedded())["models"]["qwen"]["pretrain"]
    assert scene_mix(qwen) == scene_mix(pretrain) | {
        "layout": "apart",
        "relation_share": 0.85,
        "proximity_share": 0.0,
        "textured_share": 0.1,
    }


def test_schema_loaders_are_the_loaders():
    schema = load_schema()
    assert set(schema["$defs"]["dataset"]["properties"]["loader"]["enum"]) == set(LOADERS)
    assert {k.removeprefix("real_") for k in schema["$defs"] if k.startswith("real_")} == set(LOADERS)


def _real_entry(loader: str, **real) -> dict:
    return {
        "kind": "grounding",
        "source": "hub",
        "loader": loader,
        "splits": SPLITS,
        "real": {"splits": {}} | real,
    }


@pytest.mark.parametrize("loader", sorted(REAL_LOADER_DEFAULTS))
def test_real_defaults_by_loader_only_for_that_loader(loader):
    filled = entry_defaults("datasets", _real_entry(loader))
    assert filled["real"] == {"splits": {}} | REAL_COMMON_DEFAULTS | REAL_LOADER_DEFAULTS[loader]
    assert filled["bias_keep_ratio"] is None
    given = entry_defaults("datasets", _real_entry(loader, max_skipped_fraction=0.5))["real"]
    assert given["max_skipped_fraction"] == 0.5  # a default never overrides
    # validate_config fills the same, and refuses another loader's key
    cfg = deep_merge(_embedded(), {"datasets": {"real": _real_entry(loader, splits={"train": "train"})}})
    assert validate_config(cfg)["datasets"]["real"]["real"] == {"splits": {"train": "train"}} | (
        REAL_COMMON_DEFAULTS | REAL_LOADER_DEFAULTS[loader]
    )
    other = "rationales" if loader != "aokvqa" else "images_subdir"
    bad = deep_merge(
        _embedded(), {"datasets": {"real": _real_entry(loader, splits={"train": "t"}, **{other: "x"})}}
    )
    with pytest.raises(ConfigError, match=rf"^config key datasets\.real\.real\.{other}: unknown key"):
        validate_config(bad)


def test_no_real_block_without_a_loader():
    filled = entry_defaults("datasets", {"kind": "relation", "source": "synthetic", "splits": SPLITS})
    assert "real" not in filled
    # dataset-level settings every entry has, null = off (read without fallbacks by data.build and bias_table)
    assert filled["bias_keep_ratio"] is None and filled["question_template"] is None


def test_config_yaml_real_data_reads_the_same_settings():
    """config/paper.yaml's real sets: the schema fills what the loaders' own fallbacks gave before."""
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    for name, entry in paper["datasets"].items():
        if "loader" not in entry:
            continue
        filled = entry_defaults("datasets", entry)["real"]
        expected = REAL_COMMON_DEFAULTS | REAL_LOADER_DEFAULTS[entry["loader"]] | entry["real"]
        assert filled == expected, name


class _NoFallback(dict):
    """A loader cfg that refuses ``.get`` (a fallback) and records the keys read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        raise AssertionError(f"loader cfg read with a fallback: .get({key!r})")


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_loaders_read_their_settings_without_fallbacks(loader, tmp_path):
    """Each loader, on its fixture, reads its settings as cfg[key]: the filled cfg loads; without any one
    of the keys it read, it raises KeyError (no hidden default in the loader)."""
    cfg = loader_cfg(loader, cache_dir=str(tmp_path / "cache"))
    strict = _NoFallback(cfg)
    items = load_items(loader, strict, "train", tmp_path / "img", 0, quality=DataQuality())
    assert items
    knobs = set(REAL_COMMON_DEFAULTS) | set(REAL_LOADER_DEFAULTS[loader])
    assert {
        "splits",
        "source",
        "limit",
        "ids",
        "bias",
        "bias_keep_ratio",
        "max_skipped_fraction",
    } <= strict.read
    assert strict.read <= knobs | {"splits", "source", "limit", "bias", "bias_keep_ratio"}
    for key in sorted(strict.read):
        missing = {k: v for k, v in cfg.items() if k != key}
        with pytest.raises(KeyError, match=key):
            load_items(loader, missing, "train", tmp_path / "img", 0, quality=DataQuality())


def test_loader_sources_have_no_fallback_reads():
    """Hub paths too (the fixtures exercise the local ones): no ``cfg.get(`` in the loaders."""
    for path in sorted((REPO / "src" / "grpo_vqa" / "data" / "real").glob("*.py")):
        text = path.read_text()
        assert "cfg.get(" not in text and 'real"].get(' not in text, path.name
    assert REAL_FIXTURES.is_dir()

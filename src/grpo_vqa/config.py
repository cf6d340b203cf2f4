"""Config validation with one-line errors naming the key, and per-experiment resolution of defaults."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A bad config; the message is one line naming the key."""


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _schema_error_line(err) -> str:
    """Turn a jsonschema error into one line that names the key."""
    where = list(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        keys = ", ".join(_key_path([*where, k]) for k in extra)
        return f"config key {keys}: unknown key"
    if err.validator == "required":
        return f"config key {_key_path(where)}: {err.message}"
    return f"config key {_key_path(where)}: {err.message}"


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> None:
    """Check ``config`` against the schema and cross-references; raise :class:`ConfigError` on the first fault."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.path)))
    if errors:
        raise ConfigError(_schema_error_line(errors[0]))
    check_references(config)


def check_references(config: dict) -> None:
    """Experiments must name known models/datasets; tables known experiments; pretrained models a path."""
    for name, exp in config["experiments"].items():
        if exp["model"] not in config["models"]:
            raise ConfigError(f"config key experiments.{name}.model: unknown model {exp['model']!r}")
        for key in ("dataset", *[f"eval_datasets.{i}" for i in range(len(exp.get("eval_datasets", [])))]):
            ds = exp["dataset"] if key == "dataset" else exp["eval_datasets"][int(key.split(".")[1])]
            if ds not in config["datasets"]:
                raise ConfigError(f"config key experiments.{name}.{key}: unknown dataset {ds!r}")
    for name, table in config["tables"].items():
        for i, exp in enumerate(table["experiments"]):
            if exp not in config["experiments"]:
                raise ConfigError(f"config key tables.{name}.experiments.{i}: unknown experiment {exp!r}")
    for name, model in config["models"].items():
        if model["source"] == "pretrained":
            check_model_path(f"models.{name}.path", model.get("path"))
    for name, ds in config["datasets"].items():
        if ds["source"] != "synthetic" and not ds.get("loader"):
            raise ConfigError(f"config key datasets.{name}.loader: required when source is {ds['source']!r}")
    for stage in ("sft", "grpo"):
        per_device_batch_size(config[stage], stage)
        for name in config["experiments"]:
            if stage in config["experiments"][name]:
                per_device_batch_size(stage_config(config, name, stage), f"experiments.{name}.{stage}", stage)


def per_device_batch_size(cfg: dict, key: str, stage: str | None = None) -> int:
    """Per-process batch of a training stage whose ``batch_size`` is the GLOBAL batch of one optimizer step:
    ``batch_size / (launch.num_processes * launch.num_machines * grad_accum)``, which must be a whole number.
    For GRPO ``batch_size`` counts completions and must also be a multiple of ``num_generations`` (TRL's
    generation batch is the global batch). ``key`` names the config section in errors."""
    stage = stage or key.rsplit(".", 1)[-1]
    launch = cfg.get("launch") or {}
    procs = int(launch.get("num_processes", 1)) * int(launch.get("num_machines", 1))
    accum = int(cfg.get("grad_accum", 1))
    batch = int(cfg["batch_size"])
    if batch % (procs * accum):
        raise ConfigError(
            f"config key {key}.batch_size: the global batch {batch} is not divisible by "
            f"launch.num_processes x launch.num_machines x grad_accum = {procs * accum}"
        )
    if stage == "grpo" and batch % int(cfg["num_generations"]):
        raise ConfigError(
            f"config key {key}.batch_size: {batch} completions per step is not a multiple of "
            f"num_generations = {cfg['num_generations']}"
        )
    return batch // (procs * accum)


def check_model_path(key: str, path: str | None) -> None:
    """A pretrained model needs a local directory, or a hub id that is reachable (or cached when offline)."""
    if not path:
        raise ConfigError(f"config key {key}: a hub id or local directory is required for a pretrained model")
    if Path(path).exists():
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"config key {key}: {path} has no config.json (not a model directory)")
        return
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/"))
    if not looks_like_hub_id:
        raise ConfigError(f"config key {key}: local directory {path} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise ConfigError(
                f"config key {key}: hub id {path} is not in the local cache and HF_HUB_OFFLINE is set"
            )


def deep_merge(base: dict, override: dict | None) -> dict:
    """``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_config(config: dict, experiment: str, stage: str) -> dict:
    """The settings one training stage of one experiment runs with (defaults + experiment overrides)."""
    exp = config["experiments"][experiment]
    return deep_merge(config[stage], exp.get(stage))


def as_json(obj: object) -> str:
    """Canonical JSON for passing a config section on a command line (Snakemake ``params``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))

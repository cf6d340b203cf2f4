"""Config validation with one-line errors naming the key, and per-experiment resolution of defaults."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import yaml

from .resources import resource_dir

SCHEMA_PATH = resource_dir("schemas") / "config.schema.yaml"


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
    if err.validator == "unevaluatedProperties":  # a key of another loader under datasets.<name>.real
        listed = re.search(r"\((.*) (?:was|were) unexpected\)", err.message)
        extra = re.findall(r"'([^']+)'", listed.group(1)) if listed else []
        if extra:
            keys = ", ".join(_key_path([*where, k]) for k in extra)
            return f"config key {keys}: unknown key (not a setting of this dataset's loader)"
    if err.validator == "required":
        missing = re.fullmatch(r"'(.+)' is a required property", err.message)
        if missing and where and where[0] in TRAINING_SECTIONS:
            return (
                f"config key {_key_path([*where, missing.group(1)])}: missing (the top-level training sections "
                "hold every setting's one default, as config/config.yaml does)"
            )
        return f"config key {_key_path(where)}: {err.message}"
    if "propertyNames" in err.absolute_schema_path:
        return (
            f"config key {_key_path([*where, err.instance])}: name {err.instance!r} may hold only letters, "
            "digits, '_', '-' and '.' (names become paths and command-line words)"
        )
    if err.validator == "type" and isinstance(err.instance, str) and _is_float(err.instance):
        if re.fullmatch(r"[+-]?[0-9]+[eE][+-]?[0-9]+", err.instance.strip()):
            hint = f"YAML reads {err.instance} as text; write a number with a decimal point, e.g. 1.0e-4"
        else:
            hint = "a quoted number is text; write it without quotes"
        return f"config key {_key_path(where)}: {err.message} ({hint})"
    return f"config key {_key_path(where)}: {err.message}"


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Check ``config`` against the schema and cross-references; raise :class:`ConfigError` on the first fault.

    Then fill in the schema's ``default:`` values (the settings of named entries: see :func:`fill_defaults`);
    ``config`` is updated in place and returned."""
    import jsonschema

    check_renamed_keys(config)
    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.path)))
    if errors:
        raise ConfigError(_schema_error_line(errors[0]))
    fill_defaults(config, schema)
    check_references(config)
    return config


def fill_defaults(config: dict, schema: dict | None = None) -> dict:
    """Set every absent key whose schema entry has a ``default:`` (in place; returns ``config``).

    One home per setting: a setting that exists once (a top-level key or a key of a top-level section) has its
    default in config/config.yaml, which the schema requires to hold it; a setting of a named entry
    (``models.<name>``, ``experiments.<name>``, ...) has its default as the schema's ``default:``, filled here.
    A default that depends on another key (a dataset's ``max_count`` by ``kind``) sits in the ``then:`` (or
    ``else:``) of an ``if:``; the branch whose condition holds for the entry applies."""
    schema = schema if schema is not None else load_schema()
    _fill(config, schema, schema)
    return config


#: The ``$defs`` of a named entry's settings, by the top-level section that holds the entries.
ENTRY_DEFS = {"models": "model", "datasets": "dataset", "experiments": "experiment"}


def entry_defaults(section: str, entry: dict, schema: dict | None = None) -> dict:
    """A copy of one named entry (``section``: models, datasets or experiments) with the schema's defaults
    filled in, as :func:`validate_config` fills them: for code that builds from an entry that did not pass
    through a whole config (the tokenizer corpus, tests, bench/)."""
    schema = schema if schema is not None else load_schema()
    out = copy.deepcopy(entry)
    _fill(out, {"$ref": f"#/$defs/{ENTRY_DEFS[section]}"}, schema)
    return out


def tiny_spec_defaults(schema: dict | None = None) -> dict:
    """The default of every tiny-model spec key (``models.<name>.tiny``): the schema's ``default:`` values."""
    schema = schema if schema is not None else load_schema()
    props = schema["$defs"]["model"]["properties"]["tiny"]["properties"]
    return {key: copy.deepcopy(sub["default"]) for key, sub in props.items()}


def _resolve(node: dict, root: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _holds(instance, condition: dict, root: dict) -> bool:
    """Whether ``instance`` is valid against an ``if:`` subschema (``$ref`` resolved against ``root``)."""
    import jsonschema

    return jsonschema.Draft202012Validator({**condition, "$defs": root.get("$defs", {})}).is_valid(instance)


def _fill(instance, node: dict, root: dict) -> None:
    node = _resolve(node, root)
    if not isinstance(instance, dict) or not isinstance(node, dict):
        return
    for part in node.get("allOf", []):
        _fill(instance, part, root)
    if "if" in node:
        branch = node.get("then" if _holds(instance, node["if"], root) else "else")
        if branch is not None:
            _fill(instance, branch, root)
    for key, sub in (node.get("properties") or {}).items():
        sub_r = _resolve(sub, root)
        if key not in instance and isinstance(sub_r, dict) and "default" in sub_r:
            instance[key] = copy.deepcopy(sub_r["default"])
        if key in instance:
            _fill(instance[key], sub, root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in (node.get("properties") or {}):
                _fill(value, extra, root)


def check_references(config: dict) -> None:
    """Experiments must name known models/datasets; tables known experiments; pretrained models a path."""
    for name, exp in config["experiments"].items():
        if exp["model"] not in config["models"]:
            raise ConfigError(f"config key experiments.{name}.model: unknown model {exp['model']!r}")
        for key in ("dataset", *[f"eval_datasets.{i}" for i in range(len(exp["eval_datasets"]))]):
            ds = exp["dataset"] if key == "dataset" else exp["eval_datasets"][int(key.split(".")[1])]
            if ds not in config["datasets"]:
                raise ConfigError(f"config key experiments.{name}.{key}: unknown dataset {ds!r}")
    for name, exp in config["experiments"].items():
        check_sft_from(config, name, exp)
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
    check_output_collisions(config)
    global_batch_size(config["grpo"], "grpo")
    for name in config["experiments"]:
        if "grpo" in config["experiments"][name]:
            global_batch_size(stage_config(config, name, "grpo"), f"experiments.{name}.grpo")


#: Training-section keys renamed to TRL's / PEFT's own argument names (old -> new), by where they sit.
RENAMED_KEYS = {
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "lr_scheduler": "lr_scheduler_type",
}
RENAMED_PROMPT_TUNING_KEYS = {"init": "prompt_tuning_init", "init_text": "prompt_tuning_init_text"}
RENAMED_LORA_KEYS = {"alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules"}
TRAINING_SECTIONS = ("sft", "grpo", "prompt_tuning")


def _renamed_key_error(key: str, old: str, new: str) -> ConfigError:
    note = ""
    if old == "batch_size":
        note = (
            " (TRL's meaning: the batch of one process; the old batch_size was the global batch, now "
            "per_device_train_batch_size x gradient_accumulation_steps x launch processes)"
        )
    elif old == "init":
        note = " (PEFT's values: TEXT or RANDOM)"
    return ConfigError(f"config key {key}.{old}: renamed to {key}.{new}{note}")


def check_renamed_keys(config: dict) -> None:
    """A training section that still uses a key's old name gets one line naming the new (TRL/PEFT) name."""
    sections = [(s, config.get(s)) for s in TRAINING_SECTIONS]
    for name, exp in (config.get("experiments") or {}).items():
        if isinstance(exp, dict):
            sections += [(f"experiments.{name}.{s}", exp.get(s)) for s in TRAINING_SECTIONS]
    for key, section in sections:
        if not isinstance(section, dict):
            continue
        parts = [(key, section)]
        if key.endswith("prompt_tuning"):
            parts += [(f"{key}.{r}", section.get(r)) for r in PT_RECIPES if isinstance(section.get(r), dict)]
        for where, part in parts:
            renamed = RENAMED_KEYS | (RENAMED_PROMPT_TUNING_KEYS if "prompt_tuning" in where else {})
            for old, new in renamed.items():
                if old in part:
                    raise _renamed_key_error(where, old, new)
            if isinstance(part.get("lora"), dict):
                for old, new in RENAMED_LORA_KEYS.items():
                    if old in part["lora"]:
                        raise _renamed_key_error(f"{where}.lora", old, new)


#: Table names whose outputs other rules write (results/tables/<name>.md).
RESERVED_TABLE_NAMES = {"alignment": "the judge's alignment table (rule alignment_table)"}


def check_output_collisions(config: dict) -> None:
    """Two config entries must never write the same output file."""
    for name in config.get("tables", {}):
        if name in RESERVED_TABLE_NAMES:
            raise ConfigError(
                f"config key tables.{name}: results/tables/{name}.md is already written by "
                f"{RESERVED_TABLE_NAMES[name]}; rename the table"
            )


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:  # the keys written here; YAML merge keys (<<: *anchor) may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r} (first at line "
                f"{seen[key] + 1}); both entries would write the same outputs and only the last would run"
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def check_config_files(paths) -> None:
    """Parse each config file strictly: a duplicate key (e.g. two experiments of one name) is an error."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue  # Snakemake reports a missing config file itself
        with open(path, encoding="utf-8") as fh:
            loader = _StrictLoader(fh)
            loader.name = str(path)
            try:
                loader.get_single_data()
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
            finally:
                loader.dispose()


def check_sft_from(config: dict, name: str, exp: dict) -> None:
    """``experiments.<name>.sft_from``: another experiment of the same model that trains its own SFT stage."""
    other = exp.get("sft_from")
    if other is None:
        return
    key = f"config key experiments.{name}.sft_from"
    if other == name:
        raise ConfigError(f"{key}: an experiment cannot take its SFT model from itself")
    if other not in config["experiments"]:
        raise ConfigError(f"{key}: unknown experiment {other!r}")
    source = config["experiments"][other]
    if source.get("sft_from"):
        raise ConfigError(
            f"{key}: {other!r} itself takes its SFT model from {source['sft_from']!r}; name that one"
        )
    if source["model"] != exp["model"]:
        raise ConfigError(
            f"{key}: {other!r} trains model {source['model']!r}, this experiment {exp['model']!r}"
        )
    if exp.get("sft"):
        raise ConfigError(
            f"config key experiments.{name}.sft: not used with sft_from (the SFT stage is {other!r}'s); remove it"
        )


def sft_source(config: dict, experiment: str) -> str:
    """The experiment whose SFT stage ``experiment`` uses (itself unless ``sft_from`` names another)."""
    return config["experiments"][experiment].get("sft_from") or experiment


def global_batch_size(cfg: dict, key: str) -> int:
    """Items (GRPO: completions) one optimizer step sees: ``per_device_train_batch_size x
    gradient_accumulation_steps x launch.num_processes x launch.num_machines`` (TRL's arithmetic). For GRPO it
    is TRL's generation batch and must be a multiple of ``num_generations``. ``key`` names the section in errors."""
    launch = cfg["launch"]
    procs = int(launch["num_processes"]) * int(launch["num_machines"])
    batch = int(cfg["per_device_train_batch_size"]) * int(cfg["gradient_accumulation_steps"]) * procs
    if "num_generations" in cfg and batch % int(cfg["num_generations"]):
        raise ConfigError(
            f"config key {key}.per_device_train_batch_size: the global batch per_device_train_batch_size x "
            f"gradient_accumulation_steps x launch.num_processes x launch.num_machines = {batch} completions is "
            f"not a multiple of num_generations = {cfg['num_generations']}"
        )
    return batch


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
    """The settings one training stage of one experiment runs with (defaults + experiment overrides).

    ``stage`` is a top-level section (sft, grpo, prompt_tuning, evaluation); a missing section is empty."""
    exp = config["experiments"][experiment]
    if stage not in config and stage not in exp:
        raise ConfigError(f"config key {stage}: missing (experiment {experiment!r} needs it)")
    return deep_merge(config.get(stage) or {}, exp.get(stage))


def as_json(obj: object) -> str:
    """Canonical JSON for passing a config section on a command line (Snakemake ``params``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


#: Prompt-tuning recipes (rule prompt_tuning's targets); their sections under ``prompt_tuning`` override the rest.
PT_RECIPES = ("direct", "reason")


def prompt_tuning_recipe(config: dict, experiment: str, recipe: str) -> dict:
    """The settings of one soft-prompt recipe: the experiment's ``prompt_tuning`` section with its
    ``<recipe>:`` subsection laid over it (without the recipe subsections themselves)."""
    merged = stage_config(config, experiment, "prompt_tuning")
    base = {k: v for k, v in merged.items() if k not in PT_RECIPES}
    return deep_merge(base, merged.get(recipe))


def evaluation_config(config: dict, experiment: str) -> dict:
    """Evaluation settings of an experiment: the global section, its model's ``evaluation:`` overrides, then
    the experiment's own."""
    exp = config["experiments"][experiment]
    model = config["models"][exp["model"]]
    return deep_merge(deep_merge(config["evaluation"], model.get("evaluation")), exp.get("evaluation"))

"""Training sections for tests that call the trainers directly: config/config.yaml's section (every key's one
default) with the test's own values laid over it, in TRL's / PEFT's names."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def lora(**kw) -> dict:
    """A complete PEFT ``lora`` section: no dropout and no full copies unless ``kw`` says otherwise."""
    return {"lora_dropout": 0.0, "modules_to_save": []} | kw


def judge_section(**kw) -> dict:
    """config/config.yaml's ``judge`` section (every key's one default) updated with ``kw``."""
    return CONFIG["judge"] | kw


def train_section(stage: str, recipe: str | None = None, **kw) -> dict:
    """config/config.yaml's ``stage`` section (a prompt-tuning ``recipe``'s settings laid over it) updated with
    ``kw`` (whole keys: a ``lora`` given replaces the default's)."""
    section = {k: v for k, v in CONFIG[stage].items() if k not in ("direct", "reason")}
    if recipe:
        section |= CONFIG[stage][recipe]
    return section | kw


#: The real-format fixtures of the real-data loaders (tests/fixtures/real/<loader>).
REAL_FIXTURES = REPO / "tests" / "fixtures" / "real"
_SPLITS3 = {"train": "train", "val": "valid", "test": "test"}
#: Each loader's ``real.splits`` for its fixture, and the kind of its items.
REAL_SPLITS = {
    "vsr": {"train": "train", "val": "dev", "test": "test"},
    "rel3d": _SPLITS3,
    "spatialsense": _SPLITS3,
    "drivingvqa": {"train": "train", "test": "test"},
    "aokvqa": {"train": "train", "val": "val", "test": "val"},
    "mm_open_r1": {"train": "train[:4]", "test": "train[4:]"},
}
REAL_KINDS = {
    "vsr": "relation",
    "rel3d": "relation",
    "spatialsense": "relation",
    "drivingvqa": "grounding",
    "aokvqa": "grounding",
    "mm_open_r1": "math",
}


def loader_cfg(
    name: str, root: Path | None = None, *, source: str = "local", limit: int | None = None, **real
) -> dict:
    """What a build hands loader ``name``: a ``datasets.<name>`` entry on its fixture (or ``root``) with
    ``real`` laid over its ``real:`` block, filled with the schema's defaults (every setting of the loader: no
    loader has a default of its own), through :func:`grpo_vqa.data.real.loader_config`."""
    from grpo_vqa.config import entry_defaults
    from grpo_vqa.data.real import loader_config

    entry = {
        "kind": REAL_KINDS[name],
        "source": source,
        "loader": name,
        "splits": {"train": limit},
        "real": {"local_dir": str(root or REAL_FIXTURES / name), "splits": REAL_SPLITS[name]} | real,
    }
    return loader_config(entry_defaults("datasets", entry), "train", limit)

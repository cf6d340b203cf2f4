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

"""Files the package reads that are kept in the checkout beside the code that uses them: the config schema
(``workflow/schemas``), the accelerate configs (``config/accelerate``) and the judge prompts
(``config/judge_prompts``). A wheel ships them as package data under ``grpo_vqa/_files/<name>``
(pyproject.toml maps those folders there), so an installed package never looks into a checkout; run from a
source checkout (``PYTHONPATH=src``) they are read where they are kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: Where each shipped folder is kept in the checkout (pyproject.toml's package-dir maps the same folders).
CHECKOUT_DIRS = {
    "schemas": "workflow/schemas",
    "accelerate": "config/accelerate",
    "judge_prompts": "config/judge_prompts",
}


def resource_dir(name: str) -> Path:
    """The folder ``name`` (a key of :data:`CHECKOUT_DIRS`): the installed package data, else the checkout's."""
    if name not in CHECKOUT_DIRS:
        raise KeyError(f"unknown resource folder {name!r}; known: {', '.join(CHECKOUT_DIRS)}")
    try:
        spec = importlib.util.find_spec(f"grpo_vqa._files.{name}")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / CHECKOUT_DIRS[name]

"""Model references: the small JSON files through which stages name the model they read."""

from __future__ import annotations

from pathlib import Path

from ..io import read_json


def resolve_model(path_or_ref: str | Path) -> str:
    """A model directory or hub id: ``*.json`` refs are read, anything else is returned as is."""
    path_or_ref = str(path_or_ref)
    if path_or_ref.endswith(".json"):
        return str(read_json(path_or_ref)["path"])
    return path_or_ref

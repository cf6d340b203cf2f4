"""Loaders for the real datasets, all producing the common item schema of :mod:`grpo_vqa.data.schema`.

``load_items(name, cfg, split, image_dir, seed)`` reads one of our splits (train/val/test, mapped to the
dataset's own split by ``cfg["splits"]``), validates every row (errors name the file and row), applies the
dataset's filters, draws the seeded ``limit`` subset and returns items whose ``image_path`` exists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from grpo_vqa.data.images import DataError
from grpo_vqa.data.real import aokvqa, drivingvqa, mm_open_r1, rel3d, spatialsense, vsr
from grpo_vqa.data.real.common import Pending, finalize

LOADERS: dict[str, Callable[[dict, str], list[Pending]]] = {
    "vsr": vsr.load,
    "rel3d": rel3d.load,
    "spatialsense": spatialsense.load,
    "drivingvqa": drivingvqa.load,
    "aokvqa": aokvqa.load,
    "mm_open_r1": mm_open_r1.load,
}


def load_items(name: str, cfg: dict, split: str, image_dir: str | Path, seed: int) -> list[dict]:
    """Items of ``split`` of dataset ``name``; images fetched or written into ``image_dir`` when needed."""
    if name not in LOADERS:
        raise DataError(f"unknown real dataset {name!r}; known: {', '.join(sorted(LOADERS))}")
    return finalize(name, LOADERS[name](cfg, split), cfg, Path(image_dir), seed)


__all__ = ["LOADERS", "DataError", "load_items"]

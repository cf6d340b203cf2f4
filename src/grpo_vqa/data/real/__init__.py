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
from grpo_vqa.data.real.common import (
    _QUALITY,
    DEFAULT_MAX_SKIPPED_FRACTION,
    DataQuality,
    Pending,
    finalize,
)

LOADERS: dict[str, Callable[[dict, str], list[Pending]]] = {
    "vsr": vsr.load,
    "rel3d": rel3d.load,
    "spatialsense": spatialsense.load,
    "drivingvqa": drivingvqa.load,
    "aokvqa": aokvqa.load,
    "mm_open_r1": mm_open_r1.load,
}


def load_items(
    name: str, cfg: dict, split: str, image_dir: str | Path, seed: int, quality: DataQuality | None = None
) -> list[dict]:
    """Items of ``split`` of dataset ``name``; images fetched or written into ``image_dir`` when needed.

    Without ``quality`` any bad row raises :class:`DataError`. With it (a dataset build), rows with a
    defect confined to them (:class:`~grpo_vqa.data.images.RowError`) are skipped and counted there; the
    build still stops on anything else, and when more than ``cfg["max_skipped_fraction"]`` (default 5 %)
    of the rows were skipped."""
    if name not in LOADERS:
        raise DataError(f"unknown real dataset {name!r}; known: {', '.join(sorted(LOADERS))}")
    if quality is None:
        return finalize(name, LOADERS[name](cfg, split), cfg, Path(image_dir), seed)
    token = _QUALITY.set(quality)
    try:
        pending = LOADERS[name](cfg, split)
        quality.rows_in = len(pending) + quality.n_skipped
        items = finalize(name, pending, cfg, Path(image_dir), seed)
    finally:
        _QUALITY.reset(token)
    quality.rows_kept = len(items)
    limit = float(cfg.get("max_skipped_fraction", DEFAULT_MAX_SKIPPED_FRACTION))
    if quality.n_skipped > limit * quality.rows_in:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(quality.skipped.items()))
        raise DataError(
            f"{name} split {split}: {quality.n_skipped} of {quality.rows_in} rows skipped ({reasons}), more "
            f"than max_skipped_fraction {limit:g}; first: {quality.examples[0]}"
        )
    return items


__all__ = ["LOADERS", "DataError", "DataQuality", "load_items"]

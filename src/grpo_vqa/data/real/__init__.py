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
from grpo_vqa.data.real.common import _QUALITY, DataQuality, Pending, finalize

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
    build still stops on anything else, and when more than ``cfg["max_skipped_fraction"]`` of the rows were
    skipped. ``cfg`` is :func:`loader_config`'s (every setting present)."""
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
    limit = float(cfg["max_skipped_fraction"])
    if quality.n_skipped > limit * quality.rows_in:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(quality.skipped.items()))
        raise DataError(
            f"{name} split {split}: {quality.n_skipped} of {quality.rows_in} rows skipped ({reasons}), more "
            f"than max_skipped_fraction {limit:g}; first: {quality.examples[0]}"
        )
    return items


def loader_config(entry: dict, split: str, limit: int | None) -> dict:
    """The settings a loader reads for ``split`` of a real dataset: ``entry``'s ``real:`` block (``entry`` is a
    ``datasets.<name>`` entry with the schema's defaults filled in, as :func:`grpo_vqa.config.validate_config`
    or :func:`~grpo_vqa.config.entry_defaults` fill it: every setting of its loader is there) with what the
    build decides per split. None means off:

    * ``source``: the entry's (hub or local); ``limit``: the items drawn (None: all);
    * ``ids``: the split's file in ``real.ids`` (a saved draw reused), else None;
    * ``bias``: a relation set's ``bias`` when it is not 0.5 (unbiased) and the split is not test, else None;
    * ``bias_keep_ratio``: the entry's on the train split, else None.
    """
    real = entry["real"]
    biased = entry["kind"] == "relation" and entry["bias"] != 0.5 and split != "test"
    return real | {
        "source": entry["source"],
        "limit": limit,
        "ids": (real["ids"] or {}).get(split),
        "bias": entry["bias"] if biased else None,
        "bias_keep_ratio": entry["bias_keep_ratio"] if split == "train" else None,
    }


__all__ = ["LOADERS", "DataError", "DataQuality", "load_items", "loader_config"]

"""``lmms-lab/multimodal-open-r1-8k-verified`` (math word problems on images; one ``train`` split).

Format: columns ``image`` (embedded image), ``problem``, ``solution`` (LaTeX or plain answer). ``source:
hub`` loads it with ``datasets.load_dataset(hub_id, split=...)``; ``source: local`` reads the repository's
parquet files ``<local_dir>/data/<split>-*.parquet`` with ``datasets.load_dataset("parquet", ...)``.
Split specs may slice (``train[:80%]``), which is how our train/val/test come from the single split.
Images are written to ``<image_dir>/<id>.png``. Rows carry no id: ids hash the image bytes, problem and
solution. Unconfirmed: the parquet file naming inside the hub repository (``data/train-*.parquet``).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from grpo_vqa.data.images import DataError
from grpo_vqa.data.real.common import (
    SKIPPED,
    Pending,
    dataset_split,
    first_line,
    guarded,
    load_hub_split,
    local_dir,
    require,
    save_png,
    short_hash,
    source_of,
)

NAME = "mm_open_r1"
COLUMNS = ("image", "problem", "solution")


def _image_bytes(image: object, where: str) -> bytes:
    """Raw bytes of an embedded image (undecoded dict or PIL image)."""
    if isinstance(image, dict) and image.get("bytes"):
        return image["bytes"]
    if isinstance(image, dict) and image.get("path"):
        return Path(image["path"]).read_bytes()
    if hasattr(image, "save"):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise DataError(f"{where}: image value of type {type(image).__name__} has no bytes")


def format_row(row: dict, where: str) -> tuple[dict, bytes]:
    """One row as a math item (without ``image_path``) and its image bytes."""
    require(row, COLUMNS, where)
    raw = _image_bytes(row["image"], where)
    problem, solution = str(row["problem"]), str(row["solution"])
    item = {
        "id": f"mmr1-{short_hash(raw, problem, solution, n=12)}",
        "problem": problem,
        "solution": solution,
        "reasoning": "",
        "task": "math",
    }
    return item, raw


def _undecoded(ds):
    """The dataset with its image column left as bytes (no decode, so hashing sees the stored file)."""
    from datasets import Image

    try:
        return ds.cast_column("image", Image(decode=False))
    except (ValueError, KeyError):
        return ds


def load(cfg: dict, split: str) -> list[Pending]:
    source = source_of(NAME, cfg)
    spec = dataset_split(NAME, cfg, split)
    if source == "hub":
        ds, label = load_hub_split(NAME, cfg, spec), cfg["hub_id"]
    else:
        import datasets

        root = local_dir(NAME, cfg)
        base = re.match(r"[A-Za-z0-9_-]+", spec)
        files = sorted((root / "data").glob(f"{base.group(0) if base else spec}-*.parquet"))
        if not files:
            raise DataError(f"{NAME}: no parquet files {root / 'data'}/{spec}-*.parquet")
        cache_dir = str(cfg["cache_dir"]) if cfg["cache_dir"] else None
        try:
            ds = datasets.load_dataset(
                "parquet",
                data_files={base.group(0): [str(f) for f in files]},
                split=spec,
                cache_dir=cache_dir,
            )
        except Exception as exc:
            raise DataError(f"{NAME}: cannot read {files[0]} split {spec!r} ({first_line(exc)})") from None
        label = files[0].name
    out = []
    for i, row in enumerate(_undecoded(ds)):
        where = f"{NAME} {label} {spec} row {i + 1}"
        formatted = guarded(format_row, row, where)
        if formatted is SKIPPED:
            continue
        item, raw = formatted

        def resolve(d: Path, raw=raw, iid=item["id"], w=where) -> Path:
            return save_png(raw, d / f"{iid}.png", w)

        out.append(Pending(item, where, resolve))
    return out

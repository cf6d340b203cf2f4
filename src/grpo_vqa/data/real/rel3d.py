"""Rel3D (princeton-vl/Rel3D; synthetic renders; no hub release, so ``source: local`` only).

Format (from the official ``dataloader.py`` and README): ``<local_dir>/data/<split_file>.json`` (default
``c_0.9_c_0.1``, the primary split) is one object with keys ``train``/``valid``/``test`` (lists of samples),
``predicates`` and ``objects``. A sample has ``rgb`` (image path), ``depth``, ``width``, ``height``,
``subject``/``object`` (``{"name", "bbox": {"top", "left", "height", "width"}}``), ``predicate``, ``label``
(truthy/falsy) and ``transform_vector``.

Unconfirmed: how ``rgb`` paths are written in the released json (the official code opens them relative to
the repository root). We try ``rgb`` as given if absolute, then ``<local_dir>/<rgb>``, then
``<images_dir>/<file name>`` (``images_dir`` null: ``<local_dir>/data/20200223``, the raw-image folder).
Samples carry no id, so ids hash the image file name with the triple.
"""

from __future__ import annotations

from pathlib import Path

from grpo_vqa.data.images import DataError
from grpo_vqa.data.real.common import (
    SKIPPED,
    Pending,
    binary_label,
    dataset_split,
    guarded,
    local_dir,
    read_json,
    require,
    short_hash,
    source_of,
    triplet_item,
)

NAME = "rel3d"
COLUMNS = ("rgb", "subject", "object", "predicate", "label")


def _name(part: object, key: str, where: str) -> str:
    if not isinstance(part, dict) or not part.get("name"):
        raise DataError(f"{where}: {key} has no name")
    return str(part["name"])


def _image_candidates(rgb: str, root: Path, images: Path) -> list[Path]:
    p = Path(rgb)
    cands = [p] if p.is_absolute() else []
    return cands + [root / p, images / p.name]


def format_sample(sample: dict, where: str) -> dict:
    """One Rel3D sample as a relation item (without ``image_path``)."""
    require(sample, COLUMNS, where)
    subj, obj = _name(sample["subject"], "subject", where), _name(sample["object"], "object", where)
    pred, label = str(sample["predicate"]), binary_label(sample["label"], where)
    return triplet_item(
        f"rel3d-{Path(str(sample['rgb'])).stem}-{short_hash(subj, pred, obj, n=8)}", subj, pred, obj, label
    )


def load(cfg: dict, split: str) -> list[Pending]:
    source_of(NAME, cfg, hub_ok=False)
    name = dataset_split(NAME, cfg, split)
    root = local_dir(NAME, cfg)
    images = Path(cfg["images_dir"] or root / "data" / "20200223")  # null: the raw-image folder
    path = root / "data" / f"{cfg['split_file']}.json"
    data = read_json(path, NAME)
    if not isinstance(data, dict) or not isinstance(data.get(name), list):
        raise DataError(f"{NAME} {path.name}: no list of samples under key {name!r}")
    out = []
    for i, sample in enumerate(data[name]):
        where = f"{NAME} {path.name} {name} row {i + 1}"
        if not isinstance(sample, dict):
            raise DataError(f"{where}: expected a JSON object")
        item = guarded(format_sample, sample, where)
        if item is SKIPPED:
            continue
        cands = _image_candidates(str(sample["rgb"]), root, images)

        def resolve(_d: Path, cands: list[Path] = cands) -> Path:
            return next((c for c in cands if c.is_file()), cands[-2] if len(cands) > 1 else cands[0])

        out.append(Pending(item, where, resolve))
    return out

"""SpatialSense (princeton-vl/SpatialSense; real photos; no hub release, so ``source: local`` only).

Format (official README and ``baselines/``): ``<local_dir>/annotations.json`` is a list of images, each with
``url``, ``nsid``, ``height``, ``width``, ``split`` (train/valid/test) and ``annotations``: relations with
``_id``, ``predicate`` (9 types, e.g. "to the left of"), ``subject``/``object`` (``{"name", "x", "y",
"bbox": [y0, y1, x0, x1]}``) and ``label`` (bool). Images live in ``<images_dir>/flickr/<url file name>``
for Flickr URLs and ``<images_dir>/nyu/<url file name>`` otherwise (``images_dir`` null:
``<local_dir>/images``), as in the official ``read_img``.

Items use the Rel3D wording ``"<subject> <predicate> <object>?"`` so that sim-to-real transfer compares like
with like.
"""

from __future__ import annotations

from pathlib import Path

from grpo_vqa.data.images import DataError
from grpo_vqa.data.real.common import (
    SKIPPED,
    Pending,
    binary_label,
    dataset_split,
    existing_file,
    guarded,
    local_dir,
    read_json,
    require,
    source_of,
    triplet_item,
)

NAME = "spatialsense"
IMAGE_COLUMNS = ("url", "split", "annotations")
COLUMNS = ("_id", "predicate", "subject", "object", "label")


def image_file(url: str, images: Path) -> Path:
    """Where the official code looks for the image of ``url``."""
    sub = "flickr" if url.startswith("http") else "nyu"
    return images / sub / url.split("/")[-1]


def format_annotation(annot: dict, where: str) -> dict:
    """One SpatialSense relation as a relation item (without ``image_path``)."""
    require(annot, COLUMNS, where)
    names = []
    for key in ("subject", "object"):
        part = annot[key]
        if not isinstance(part, dict) or not part.get("name"):
            raise DataError(f"{where}: {key} has no name")
        names.append(str(part["name"]))
    subj, obj = names
    pred, label = str(annot["predicate"]), binary_label(annot["label"], where)
    return triplet_item(f"spatialsense-{annot['_id']}", subj, pred, obj, label)


def load(cfg: dict, split: str) -> list[Pending]:
    source_of(NAME, cfg, hub_ok=False)
    name = dataset_split(NAME, cfg, split)
    root = local_dir(NAME, cfg)
    images = Path(cfg["images_dir"] or root / "images")  # null: <local_dir>/images
    path = root / "annotations.json"
    data = read_json(path, NAME)
    if not isinstance(data, list):
        raise DataError(f"{NAME} {path.name}: expected a list of images")
    out = []
    for i, img in enumerate(data):
        where_img = f"{NAME} {path.name} image {i + 1}"
        if not isinstance(img, dict):
            raise DataError(f"{where_img}: expected a JSON object")
        if guarded(require, img, IMAGE_COLUMNS, where_img) is SKIPPED:
            continue
        if img["split"] != name:
            continue
        for j, annot in enumerate(img["annotations"]):
            where = f"{where_img} relation {j + 1}"
            item = guarded(format_annotation, annot, where)
            if item is SKIPPED:
                continue
            out.append(Pending(item, where, existing_file(image_file(str(img["url"]), images))))
    return out

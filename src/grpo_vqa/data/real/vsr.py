"""VSR (Visual Spatial Reasoning; ``cambridgeltl/vsr_random`` and ``cambridgeltl/vsr_zeroshot``).

Format: one JSON object per line in ``train.jsonl`` / ``dev.jsonl`` / ``test.jsonl`` with ``image`` (COCO file
name), ``image_link`` (COCO URL), ``caption``, ``label`` (0/1), ``relation``, ``subj``, ``obj``,
``annotator_id`` and the validator votes (stored as strings such as ``"[18, 2]"``). The GitHub copy of the
splits has no ``subj``/``obj``; they are then parsed from the caption (``"The <subj> is <relation> the
<obj>."``). ``subj`` values that are truncated words in the release are kept verbatim.

``source: hub`` loads the split with ``datasets.load_dataset(hub_id, data_files=...)`` and downloads each
selected COCO image from ``image_link`` into ``image_dir``; ``source: local`` reads ``<local_dir>/<split>.jsonl``
and expects images in ``images_dir`` (null: ``<local_dir>/images``), named as in ``image``.
"""

from __future__ import annotations

import re
from pathlib import Path

from grpo_vqa.data.images import DataError
from grpo_vqa.data.real.common import (
    SKIPPED,
    Pending,
    binary_label,
    dataset_split,
    download_once,
    existing_file,
    guarded,
    load_hub_split,
    local_dir,
    read_jsonl,
    require,
    short_hash,
    source_of,
)
from grpo_vqa.data.schema import vsr_problem, vsr_solution

NAME = "vsr"
COLUMNS = ("image", "caption", "label", "relation")
_COPULA = re.compile(r"\s+(is|are|has|have)$")


def subj_obj_from_caption(caption: str, relation: str, where: str) -> tuple[str, str]:
    """Parse ``("car", "suitcase")`` from ``"The car is behind the suitcase."`` given ``relation``."""
    text = caption.strip().rstrip(".").strip()
    idx = text.find(f" {relation} ")
    if idx < 0:
        raise DataError(
            f"{where}: relation {relation!r} not found in caption {caption!r}; cannot derive subj/obj"
        )
    head, tail = text[:idx], text[idx + len(relation) + 2 :]
    head = _COPULA.sub("", re.sub(r"^(the|a|an)\s+", "", head, flags=re.I))
    tail = re.sub(r"^(the|a|an)\s+", "", tail, flags=re.I)
    if not head or not tail:
        raise DataError(f"{where}: cannot derive subj/obj from caption {caption!r}")
    return head, tail


def format_row(row: dict, where: str, need_link: bool) -> dict:
    """One VSR row as a relation item (without ``image_path``)."""
    require(row, COLUMNS + (("image_link",) if need_link else ()), where)
    label = binary_label(row["label"], where)
    caption, relation = str(row["caption"]), str(row["relation"])
    if row.get("subj") is not None and row.get("obj") is not None:
        subj, obj = str(row["subj"]), str(row["obj"])
    else:
        subj, obj = subj_obj_from_caption(caption, relation, where)
    return {
        "id": f"vsr-{Path(str(row['image'])).stem}-{short_hash(caption)}",
        "problem": vsr_problem(caption),
        "solution": vsr_solution(label),
        "reasoning": "",
        "task": "relation",
        "caption": caption,
        "label": label,
        "relation": relation,
        "subj": subj,
        "obj": obj,
    }


def load(cfg: dict, split: str) -> list[Pending]:
    source = source_of(NAME, cfg)
    name = dataset_split(NAME, cfg, split)
    out = []
    if source == "hub":
        ds = load_hub_split(NAME, cfg, name, data_files=cfg["data_files"])
        for i, row in enumerate(ds):
            where = f"{NAME} {cfg['hub_id']} {name} row {i + 1}"
            item = guarded(format_row, row, where, need_link=True)
            if item is SKIPPED:
                continue
            fname, url = Path(str(row["image"])).name, str(row["image_link"])
            out.append(Pending(item, where, lambda d, f=fname, u=url, w=where: download_once(u, d / f, w)))
        return out
    root = local_dir(NAME, cfg)
    images = Path(cfg["images_dir"] or root / "images")  # null: <local_dir>/images
    path = root / f"{name}.jsonl"
    for lineno, row in read_jsonl(path, NAME):
        where = f"{NAME} {path.name} row {lineno}"
        item = guarded(format_row, row, where, need_link=False)
        if item is SKIPPED:
            continue
        out.append(Pending(item, where, existing_file(images / Path(str(row["image"])).name)))
    return out

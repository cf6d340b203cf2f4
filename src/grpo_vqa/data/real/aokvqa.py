"""A-OKVQA multiple choice (allenai/aokvqa; hub copy ``HuggingFaceM4/A-OKVQA``).

Local format (official README / ``load_aokvqa``): ``<local_dir>/aokvqa_v1p0_<split>.json`` is a list of
questions with ``question_id``, ``image_id`` (COCO 2017 id), ``question``, ``choices`` (4 strings),
``correct_choice_idx``, ``direct_answers``, ``difficult_direct_answer`` and ``rationales`` (3 strings).
Images: ``<coco_dir>/<coco_split>2017/<image_id:012d>.jpg`` (``coco_dir`` null: ``<local_dir>/coco``;
``coco_split`` null: the A-OKVQA split name, train/val/test, see :func:`coco_split`). The official test split
has no answers; map our ``test`` to ``val``.

Hub: rows of ``datasets.load_dataset(hub_id, split=...)``; an embedded ``image`` is written to
``<image_dir>/<id>.png``, otherwise the COCO image is downloaded by URL. Unconfirmed: the hub copy's exact
columns (assumed to be the json fields plus ``image``).

Items: lettered choices, ``solution`` = letter of ``correct_choice_idx``, ``reasoning`` = the first
rationale (or all joined with ``rationales: all``), ``boxes`` = [] (A-OKVQA has no ground-truth boxes).
"""

from __future__ import annotations

from pathlib import Path

from grpo_vqa.data.images import DataError
from grpo_vqa.data.real.common import (
    SKIPPED,
    Pending,
    choices_problem,
    dataset_split,
    download_once,
    existing_file,
    guarded,
    letters,
    load_hub_split,
    local_dir,
    read_json,
    require,
    save_png,
    source_of,
)

NAME = "aokvqa"
COLUMNS = ("question_id", "question", "choices")
COCO_URL = "http://images.cocodataset.org/{split}2017/{image_id:012d}.jpg"


def format_row(row: dict, where: str, rationales: str) -> dict:
    """One A-OKVQA question as a grounding item (without ``image_path``)."""
    require(row, COLUMNS, where)
    choices = row["choices"]
    if not isinstance(choices, list):
        raise DataError(f"{where}: choices is not a list")
    keys = letters(len(choices), where)
    idx = row.get("correct_choice_idx")
    if idx is None:
        raise DataError(f"{where}: no correct_choice_idx (the A-OKVQA test split is unlabelled; use val)")
    if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(choices):
        raise DataError(f"{where}: correct_choice_idx {idx!r} not in 0..{len(choices) - 1}")
    rats = [str(r) for r in row.get("rationales") or []]
    return {
        "id": f"aokvqa-{row['question_id']}",
        "problem": choices_problem(str(row["question"]), [str(c) for c in choices]),
        "solution": keys[idx],
        "reasoning": (" ".join(rats) if rationales == "all" else rats[0]) if rats else "",
        "task": "grounding",
        "choices": [str(c) for c in choices],
        "boxes": [],
        "box_labels": [],
    }


def _image_id(row: dict, where: str) -> int:
    value = row.get("image_id")
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: image_id {value!r} is not an integer COCO id")
    return value


def coco_split(cfg: dict, split_name: str) -> str:
    """The COCO 2017 split holding the images of the dataset's split ``split_name``: ``cfg["coco_split"]``, or
    when that is null (its default) the split's own name with the hub's ``validation`` read as ``val``."""
    if cfg["coco_split"] is not None:
        return cfg["coco_split"]
    return {"validation": "val"}.get(split_name, split_name)


def load(cfg: dict, split: str) -> list[Pending]:
    source = source_of(NAME, cfg)
    name = dataset_split(NAME, cfg, split)
    rationales = cfg["rationales"]
    if rationales not in ("first", "all"):
        raise DataError(f"{NAME} config: rationales {rationales!r} not in {{first, all}}")
    images_split = coco_split(cfg, name)
    out = []
    if source == "hub":
        for i, row in enumerate(load_hub_split(NAME, cfg, name)):
            where = f"{NAME} {cfg['hub_id']} {name} row {i + 1}"
            item = guarded(format_row, row, where, rationales)
            if item is SKIPPED:
                continue
            if row.get("image") is not None:

                def resolve(d: Path, img=row["image"], iid=item["id"], w=where) -> Path:
                    return save_png(img, d / f"{iid}.png", w)

            else:
                iid = _image_id(row, where)
                url = COCO_URL.format(split=images_split, image_id=iid)

                def resolve(d: Path, u=url, f=f"{iid:012d}.jpg", w=where) -> Path:
                    return download_once(u, d / f, w)

            out.append(Pending(item, where, resolve))
        return out
    root = local_dir(NAME, cfg)
    coco = Path(cfg["coco_dir"] or root / "coco")  # null: <local_dir>/coco
    path = root / f"aokvqa_{cfg['version']}_{name}.json"
    data = read_json(path, NAME)
    if not isinstance(data, list):
        raise DataError(f"{NAME} {path.name}: expected a list of questions")
    for i, row in enumerate(data):
        where = f"{NAME} {path.name} row {i + 1}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        item = guarded(format_row, row, where, rationales)
        if item is SKIPPED:
            continue
        image = coco / f"{images_split}2017" / f"{_image_id(row, where):012d}.jpg"
        out.append(Pending(item, where, existing_file(image)))
    return out

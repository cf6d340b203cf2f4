"""DrivingVQA (``EPFL-DrivingVQA/DrivingVQA``; French driving-theory exam questions with grounded entities).

Format (from the RIV-CoT preprocessing code that ships with the dataset): ``<split>.json`` is one object
mapping a sample id to a sample with ``img_filename``, ``img_size``, ``questions`` (a string, or a list of
two when ``has_multiple_questions``), ``possible_answers`` (``{"A": text, ...}``), ``true_answers`` (list of
letters; several may be correct), ``explanation``, ``interleaved_explanation`` (entities written as
``**name** [x, y, w, h]``), ``relevant_entities`` (``[{name: [x, y, w, h]}]``, COCO-style pixel boxes) and
``exam_type``. Images are ``<local_dir>/<images_subdir>/<img_filename>``.

Items: ``solution`` is the sorted correct letters joined by ``", "`` (``"A"`` or ``"A, C"``); ``boxes`` are the
entity boxes as ``[x1, y1, x2, y2]``; ``reasoning`` is the interleaved explanation with each entity written
``x1,y1,x2,y2 name`` (the study's form). Filters (the study's): ``single_question_only`` and ``max_pixels``
(null disables), applied before the ``limit`` subset. Each setting's default: ``real_drivingvqa`` in the schema.

Unconfirmed: (1) the hub release stores a dict-keyed JSON that ``datasets.load_dataset`` cannot turn into
rows, so ``source: hub`` fetches the repository with ``huggingface_hub.snapshot_download`` and reads it like
``source: local``; the image folder name inside the release is assumed to be ``images``. (2) Whether any
sample lists several images: a list-valued ``img_filename`` is accepted and only its first image kept.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from PIL import Image

from grpo_vqa.data.images import DataError
from grpo_vqa.data.real.common import (
    SKIPPED,
    Pending,
    choices_problem,
    dataset_split,
    existing_file,
    first_line,
    guarded,
    hub_id,
    local_dir,
    read_json,
    require,
    source_of,
)

NAME = "drivingvqa"
COLUMNS = ("img_filename", "questions", "possible_answers", "true_answers")
_ENTITY = re.compile(r"\*\*(.+?)\*\*\s*\[\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\]")


def xywh_to_xyxy(box: list, where: str) -> list[float]:
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(isinstance(v, int | float) for v in box):
        raise DataError(f"{where}: entity box {box!r} is not [x, y, w, h]")
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def reasoning_with_boxes(text: str) -> str:
    """Rewrite ``**name** [x, y, w, h]`` as ``x1,y1,x2,y2 name`` (integer pixels); drop other ``**``."""

    def repl(m: re.Match) -> str:
        x, y, w, h = (float(v) for v in m.group(2, 3, 4, 5))
        x1, y1, x2, y2 = (math.floor(v + 0.5) for v in (x, y, x + w, y + h))  # round half up
        return f"{x1},{y1},{x2},{y2} {m.group(1)}"

    return _ENTITY.sub(repl, text).replace("**", "")


def first_image(value: object, where: str) -> str:
    """The image file name; for a list of images, the first one."""
    if isinstance(value, list):
        if not value:
            raise DataError(f"{where}: img_filename is an empty list")
        value = value[0]
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: img_filename {value!r} is not a file name")
    return value


def format_sample(key: str, sample: dict, where: str, reasoning: str) -> dict:
    """One DrivingVQA sample as a grounding item (without ``image_path``)."""
    require(sample, COLUMNS, where)
    answers = sample["possible_answers"]
    if not isinstance(answers, dict) or not answers:
        raise DataError(f"{where}: possible_answers is not a non-empty {{letter: text}} object")
    keys = sorted(answers)
    if keys != [chr(ord("A") + i) for i in range(len(keys))]:
        raise DataError(f"{where}: possible_answers keys {keys} are not A, B, ...")
    true = sample["true_answers"]
    if not isinstance(true, list) or not true or any(t not in answers for t in true):
        raise DataError(f"{where}: true_answers {true!r} not a non-empty subset of {keys}")
    questions = sample["questions"]
    question = "\n".join(map(str, questions)) if isinstance(questions, list) else str(questions)
    choices = [str(answers[k]) for k in keys]
    boxes, labels = [], []
    for ent in sample.get("relevant_entities") or []:
        if not isinstance(ent, dict) or len(ent) != 1:
            raise DataError(f"{where}: relevant_entities entry {ent!r} is not {{name: [x, y, w, h]}}")
        ((label, box),) = ent.items()
        boxes.append(xywh_to_xyxy(box, where))
        labels.append(str(label))
    text = sample.get("interleaved_explanation") if reasoning == "interleaved" else None
    text = text or sample.get("explanation") or ""
    return {
        "id": f"drivingvqa-{key}",
        "problem": choices_problem(question, choices),
        "solution": ", ".join(sorted(set(true))),
        "reasoning": reasoning_with_boxes(str(text)),
        "task": "grounding",
        "choices": choices,
        "boxes": boxes,
        "box_labels": labels,
    }


def _root(cfg: dict, split_name: str) -> Path:
    if source_of(NAME, cfg) == "local":
        return local_dir(NAME, cfg)
    import huggingface_hub

    repo = hub_id(NAME, cfg)
    try:
        return Path(huggingface_hub.snapshot_download(repo_id=repo, repo_type="dataset"))
    except Exception as exc:
        raise DataError(f"{NAME}: cannot fetch hub dataset {repo} ({first_line(exc)})") from None


def load(cfg: dict, split: str) -> list[Pending]:
    name = dataset_split(NAME, cfg, split)
    root = _root(cfg, name)
    images = root / cfg["images_subdir"]
    path = root / f"{name}.json"
    data = read_json(path, NAME)
    if not isinstance(data, dict):
        raise DataError(f"{NAME} {path.name}: expected an object mapping sample ids to samples")
    single_only = cfg["single_question_only"]
    max_pixels = cfg["max_pixels"]
    reasoning = cfg["reasoning"]
    if reasoning not in ("interleaved", "explanation"):
        raise DataError(f"{NAME} config: reasoning {reasoning!r} not in {{interleaved, explanation}}")
    out = []
    for key, sample in data.items():
        where = f"{NAME} {path.name} id {key}"
        if not isinstance(sample, dict):
            raise DataError(f"{where}: expected a JSON object")
        if single_only and sample.get("has_multiple_questions", isinstance(sample.get("questions"), list)):
            continue
        item = guarded(format_sample, str(key), sample, where, reasoning)
        if item is SKIPPED:
            continue
        image = images / first_image(sample["img_filename"], where)
        if max_pixels is not None:
            if not image.is_file():
                raise DataError(f"{where}: image file not found: {image}")
            with Image.open(image) as im:
                if im.width * im.height > max_pixels:
                    continue
        out.append(Pending(item, where, existing_file(image)))
    return out

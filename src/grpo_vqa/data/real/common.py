"""Shared plumbing for the real-dataset loaders: config checks, hub access, images, subsetting.

A loader turns one split of a dataset into :class:`Pending` items (schema columns plus a deferred image
resolver). Its ``cfg`` is :func:`grpo_vqa.data.real.loader_config`'s: the dataset's ``real:`` block with the
schema's defaults filled in (``$defs.real`` and ``real_<loader>`` in workflow/schemas/config.schema.yaml, every
setting's one default) and the build's per-split ``source``, ``limit``, ``ids``, ``bias`` and
``bias_keep_ratio``; the loaders read it without fallbacks. :func:`finalize` then checks ids, draws the seeded
``limit`` subset and only then fetches or writes images, so a 1,000-item subset of a hub dataset downloads 1,000
images, not all of them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo_vqa.data.images import DataError, RowError, load_image
from grpo_vqa.data.relations import biased_indices
from grpo_vqa.data.schema import vsr_solution

SOURCES = ("hub", "local")
_DOWNLOAD_TIMEOUT_S = 60
_EXAMPLES = 20


@dataclass
class DataQuality:
    """What a dataset build kept and skipped in one split (written to the manifest's ``quality``).

    Skip-and-count (one row lost, reason counted): missing or unreadable image file, truncated or corrupt
    image, 0x0 image, image above the pixel limit (decompression bomb; refused from its header), missing or
    empty required column, a JSON Lines row that is not UTF-8 or not JSON. Stop (the stage fails naming the
    file and row): duplicate ids, a label outside the allowed set, a file that cannot be read at all, a bad
    config, or more than ``max_skipped_fraction`` of the rows skipped (a systematic problem, not a bad row).
    """

    rows_in: int = 0
    not_selected: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, exc: RowError) -> None:
        self.skipped[exc.reason] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(str(exc))
        print(f"skipped row ({exc.reason}): {exc}", file=sys.stderr, flush=True)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "not_selected": self.not_selected,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_examples": list(self.examples),
        }


_QUALITY: ContextVar[DataQuality | None] = ContextVar("grpo_vqa_data_quality", default=None)
SKIPPED = object()


def skip_or_raise(exc: RowError) -> None:
    """Count ``exc`` in the active :class:`DataQuality` (a dataset build), or raise it (direct callers)."""
    quality = _QUALITY.get()
    if quality is None:
        raise exc
    quality.skip(exc)


def guarded(make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``make(*args, **kwargs)``, or :data:`SKIPPED` when it raised a skippable :class:`RowError`."""
    try:
        return make(*args, **kwargs)
    except RowError as exc:
        skip_or_raise(exc)
        return SKIPPED


@dataclass
class Pending:
    """One formatted item whose image is not resolved yet.

    ``where`` names the file and row for error messages; ``resolve_image(image_dir)`` returns the path of
    the image on disk (downloading or writing it into ``image_dir`` if needed).
    """

    item: dict
    where: str
    resolve_image: Callable[[Path], Path]


def source_of(name: str, cfg: dict, hub_ok: bool = True) -> str:
    """The validated ``source`` of a dataset config."""
    source = cfg["source"]
    if source not in SOURCES:
        raise DataError(f"{name} config: source {source!r} not in {{hub, local}}")
    if source == "hub" and not hub_ok:
        raise DataError(f"{name} config: source hub is not available (no hub release); use source: local")
    return source


def dataset_split(name: str, cfg: dict, split: str) -> str:
    """The dataset's own split name for our ``split`` (``cfg["splits"]`` maps train/val/test to it)."""
    splits = cfg["splits"]
    if split not in splits:
        raise DataError(f"{name} config: split {split!r} not in splits {sorted(splits)}")
    return str(splits[split])


def local_dir(name: str, cfg: dict) -> Path:
    """The existing ``local_dir`` of a ``source: local`` config."""
    if not cfg["local_dir"]:
        raise DataError(f"{name} config: source local needs local_dir")
    root = Path(cfg["local_dir"])
    if not root.is_dir():
        raise DataError(f"{name} config: local_dir {root} is not a directory")
    return root


def hub_id(name: str, cfg: dict) -> str:
    if not cfg["hub_id"]:
        raise DataError(f"{name} config: source hub needs hub_id")
    return str(cfg["hub_id"])


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def load_hub_split(name: str, cfg: dict, split_spec: str, **kwargs: Any):
    """``datasets.load_dataset(hub_id, split=split_spec, **kwargs)``; any failure is one DataError line."""
    import datasets

    repo = hub_id(name, cfg)
    if cfg["cache_dir"]:
        kwargs["cache_dir"] = str(cfg["cache_dir"])
    try:
        return datasets.load_dataset(repo, split=split_spec, **kwargs)
    except Exception as exc:  # network, offline mode, missing split, bad files: one line naming the hub id
        raise DataError(
            f"{name}: cannot load hub dataset {repo} split {split_spec!r} ({first_line(exc)})"
        ) from None


def read_json(path: Path, name: str) -> Any:
    """Parse a JSON file or raise DataError naming it."""
    if not path.is_file():
        raise DataError(f"{name}: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{name} {path}: not valid JSON ({exc})") from None


def read_jsonl(path: Path, name: str) -> list[tuple[int, dict]]:
    """``(line number, row)`` pairs of a JSON Lines file; a bad line raises DataError naming it."""
    if not path.is_file():
        raise DataError(f"{name}: file not found: {path}")
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{name} {path.name} row {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                skip_or_raise(
                    RowError(
                        f"{where}: not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})",
                        "not_utf8",
                    )
                )
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                skip_or_raise(RowError(f"{where}: not valid JSON ({exc.msg})", "bad_json"))
                continue
            if not isinstance(row, dict):
                skip_or_raise(RowError(f"{where}: expected a JSON object", "bad_json"))
                continue
            rows.append((lineno, row))
    return rows


def require(row: dict, columns: Iterable[str], where: str) -> None:
    """Raise RowError naming ``where`` if any of ``columns`` is absent, None or a blank string in ``row``."""
    missing = [c for c in columns if row.get(c) is None]
    if missing:
        raise RowError(f"{where}: missing column(s) {', '.join(missing)}", "missing_column")
    empty = [c for c in columns if isinstance(row[c], str) and not row[c].strip()]
    if empty:
        raise RowError(f"{where}: empty column(s) {', '.join(empty)}", "empty_column")


def binary_label(value: Any, where: str) -> int:
    """A 0/1 label from an int or bool; anything else raises DataError."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    raise DataError(f"{where}: label {value!r} not in {{0, 1}}")


def short_hash(*parts: str | bytes, n: int = 10) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()[:n]


def letters(n: int, where: str) -> list[str]:
    if not 2 <= n <= 26:
        raise DataError(f"{where}: {n} choices, expected 2 to 26")
    return [chr(ord("A") + i) for i in range(n)]


def choices_problem(question: str, choices: list[str]) -> str:
    """Question followed by lettered options, one per line: ``(A) first``."""
    opts = "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))
    return f"{question}\nOptions:\n{opts}"


def relation_problem(subj: str, predicate: str, obj: str) -> str:
    """The study's Rel3D / SpatialSense prompt: ``"<subject> <predicate> <object>?"``."""
    return f"{subj} {predicate} {obj}?"


# ---------------------------------------------------------------------------------------------- images


def triplet_item(item_id: str, subj: str, pred: str, obj: str, label: int) -> dict:
    """A (subject, predicate, object) relation item in the pipeline's columns (Rel3D, SpatialSense)."""
    return {
        "id": item_id,
        "problem": relation_problem(subj, pred, obj),
        "solution": vsr_solution(label),
        "reasoning": "",
        "task": "relation",
        "caption": f"{subj} {pred} {obj}",
        "label": label,
        "relation": pred,
        "subj": subj,
        "obj": obj,
    }


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_url(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (atomically). Tests replace this function; the pipeline uses it as is."""
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:  # noqa: S310 (http COCO links)
        _atomic_write_bytes(dest, resp.read())


def download_once(url: str, dest: Path, where: str) -> Path:
    """``dest`` if it already exists, else download it from ``url``; failures name the row and URL."""
    if dest.is_file():
        return dest
    try:
        fetch_url(url, dest)
    except Exception as exc:
        raise DataError(f"{where}: cannot download {url} ({first_line(exc)})") from None
    return dest


def save_png(image: Any, dest: Path, where: str) -> Path:
    """Write an embedded image (PIL image, ``{"bytes", "path"}`` dict or raw bytes) to ``dest`` as PNG."""
    from PIL import Image

    if dest.is_file():
        return dest
    try:
        if isinstance(image, dict):
            raw = image.get("bytes")
            image = Image.open(io.BytesIO(raw)) if raw else Image.open(image["path"])
        elif isinstance(image, bytes | bytearray):
            image = Image.open(io.BytesIO(image))
        if not isinstance(image, Image.Image):
            raise TypeError(f"unsupported image value of type {type(image).__name__}")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
    except Exception as exc:
        raise DataError(f"{where}: cannot write embedded image ({first_line(exc)})") from None
    _atomic_write_bytes(dest, buf.getvalue())
    return dest


def existing_file(path: Path) -> Callable[[Path], Path]:
    """A resolver for an image that is already on disk."""
    return lambda _image_dir: path


# ------------------------------------------------------------------------------------------- finalize


def check_limit(name: str, cfg: dict) -> int | None:
    limit = cfg["limit"]
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise DataError(f"{name} config: limit {limit!r} is not a non-negative integer or null")
    return limit


def seeded_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a ``random.Random(seed)`` sample of ``limit`` of ``n`` items, in original order."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def check_image(path: Path, where: str) -> None:
    """Raise RowError naming the row if the image is missing, unreadable, empty or too large."""
    try:
        load_image(path)
    except RowError as exc:
        raise RowError(f"{where}: {exc}", exc.reason) from None


def biased_subset(name: str, pending: list[Pending], cfg: dict, seed: int) -> list[int]:
    """Indices of a seeded subset of relation items whose wording predicts the label with P = ``cfg["bias"]``
    (see :func:`grpo_vqa.data.relations.biased_indices`): ``limit`` items (null: as many as the pool has)."""
    missing = next((p for p in pending if "relation" not in p.item or "label" not in p.item), None)
    if missing is not None:
        raise DataError(f"{missing.where}: bias needs relation items (a relation and a label)")
    rels = [str(p.item["relation"]) for p in pending]
    labels = [int(p.item["label"]) for p in pending]
    limit = check_limit(name, cfg)
    try:
        return biased_indices(
            rels, labels, len(pending) if limit is None else limit, float(cfg["bias"]), seed
        )
    except ValueError as exc:
        raise DataError(f"{name} config: {exc}") from None


def ids_subset(name: str, pending: list[Pending], ids_file: str) -> list[int]:
    """Indices of the items listed in ``ids_file`` (a JSON list of ids a build wrote to ``ids/<split>.json``):
    a saved draw reused. An id that the split does not hold is an error."""
    wanted = read_json(Path(ids_file), name)
    if not isinstance(wanted, list):
        raise DataError(f"{name} config: ids file {ids_file} is not a JSON list of ids")
    index = {p.item["id"]: i for i, p in enumerate(pending)}
    missing = [i for i in wanted if i not in index]
    if missing:
        raise DataError(
            f"{name} config: ids file {ids_file} names {len(missing)} unknown id(s), e.g. {missing[0]!r}"
        )
    return sorted(index[i] for i in wanted)


def minority_undersampled(name: str, pending: list[Pending], keep_ratio: float, seed: int) -> list[int]:
    """Indices of relation items where, per relation, only ``keep_ratio`` of the minority label's items are
    kept (a seeded draw; ties count label 0 as the minority), so the relation word predicts the label. Items
    keep their original order."""
    if not 0.0 <= keep_ratio <= 1.0:
        raise DataError(f"{name} config: bias_keep_ratio {keep_ratio} not in [0, 1]")
    groups: dict[tuple[str, int], list[int]] = {}
    for i, p in enumerate(pending):
        if "relation" not in p.item or "label" not in p.item:
            raise DataError(f"{p.where}: bias_keep_ratio needs relation items (a relation and a label)")
        groups.setdefault((str(p.item["relation"]), int(p.item["label"])), []).append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    for rel in sorted({r for r, _ in groups}):
        false, true = groups.get((rel, 0), []), groups.get((rel, 1), [])
        minority, majority = (true, false) if len(true) < len(false) else (false, true)
        keep += majority + rng.sample(minority, round(keep_ratio * len(minority)))
    return sorted(keep)


def finalize(name: str, pending: list[Pending], cfg: dict, image_dir: Path, seed: int) -> list[dict]:
    """Check ids are unique, draw the seeded subset, resolve images and check they exist and decode.

    In a dataset build (an active :class:`DataQuality`) a row whose image is missing or bad is skipped and
    counted; otherwise it raises."""
    seen: dict[str, int] = {}
    for i, p in enumerate(pending):
        first = seen.setdefault(p.item["id"], i)
        if first != i:
            raise DataError(
                f"{p.where}: duplicate id {p.item['id']!r} (first seen at {pending[first].where})"
            )
    image_dir = Path(image_dir)
    items = []
    pool = list(range(len(pending)))
    if cfg["ids"]:
        pool = ids_subset(name, pending, cfg["ids"])
    elif cfg["bias_keep_ratio"] is not None:
        pool = minority_undersampled(name, pending, float(cfg["bias_keep_ratio"]), seed)
    selected = [pool[i] for i in seeded_subset(len(pool), check_limit(name, cfg), seed)]
    if cfg["ids"]:
        selected = pool
    if cfg["bias"] is not None:
        selected = biased_subset(name, pending, cfg, seed)
    quality = _QUALITY.get()
    if quality is not None:
        quality.not_selected += len(pending) - len(selected)
    for idx in selected:
        p = pending[idx]
        path = Path(p.resolve_image(image_dir))
        if not path.is_file():
            skip_or_raise(RowError(f"{p.where}: image file not found: {path}", "missing_image"))
            continue
        if guarded(check_image, path, p.where) is SKIPPED:
            continue
        items.append({**p.item, "image_path": str(path.absolute())})
    return items

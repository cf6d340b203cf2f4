"""Build a task dataset: generate (or load) items per split, write images, save with ``datasets``.

Layout of ``out_dir`` (one dataset)::

    images/<split>/<id>.png     rendered images (synthetic sources)
    <split>/                    datasets.Dataset.save_to_disk, one per split
    manifest.json               counts, seeds, columns and data-quality counts per split
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

from ..config import entry_defaults
from ..io import atomic_write_json
from ..progress import progress
from . import tasks
from .images import DataError
from .real import DataQuality, load_items, loader_config
from .relations import make_relation_items
from .scenes import Scene, render

SPLITS = ("train", "val", "test")


def split_seed(seed: int, dataset: str, split: str) -> int:
    """A stable per-split seed derived from the global seed (independent of dict order or Python hash)."""
    digest = hashlib.sha256(f"{seed}/{dataset}/{split}".encode()).hexdigest()
    return int(digest[:8], 16)


def _relation_items(cfg: dict, split: str, n: int, seed: int, name: str) -> list[dict]:
    bias = cfg["bias"] if split != "test" else 0.5  # the test split is always unbiased
    return make_relation_items(
        n,
        seed,
        relations=list(cfg["relations"]),
        bias=bias,
        size=cfg["image_size"],
        prompt_style=cfg["prompt_style"],
        id_prefix=f"{name}-{split}",
        radius=tuple(cfg["radius"]),
        tied_colors=bool(cfg["tied_colors"]),
        layout=cfg["layout"],
    )


def _task_items(cfg: dict, split: str, n: int, seed: int, name: str) -> list[dict]:
    return tasks.GENERATORS[cfg["kind"]](cfg, split, n, seed, name)


def generator_for(kind: str) -> Callable[[dict, str, int, int, str], list[dict]]:
    """The item generator of ``kind``; it reads a dataset entry with its defaults filled in
    (:func:`grpo_vqa.config.entry_defaults`, or a validated config's)."""
    if kind == "relation":
        return _relation_items
    if kind not in tasks.GENERATORS:
        known = ", ".join(["relation", *tasks.GENERATORS])
        raise ValueError(f"datasets.*.kind: unknown kind {kind!r}; known: {known}")
    return _task_items


def _finalise_synthetic(
    items: list[dict], cfg: dict, image_dir: Path, split_seed_: int, split: str
) -> list[dict]:
    """Render each item's scene to ``image_dir`` and turn the scene objects into box columns."""
    image_dir.mkdir(parents=True, exist_ok=True)
    size = cfg["image_size"]
    style = cfg["style"]
    rng = random.Random(split_seed_ ^ 0x5EED)
    out = []
    for item in progress(items, desc=f"render {split}", interval=30):
        objects = item.pop("_objects")
        path = image_dir / f"{item['id']}.png"
        if "_image" in item:
            img = item.pop("_image")
        else:
            img = render(Scene(size, size, style, objects, noise_seed=rng.getrandbits(32)))
        img.save(path)
        item["image_path"] = str(path)
        item.setdefault("boxes", [list(map(float, o.box)) for o in objects])
        item.setdefault("box_labels", [o.name for o in objects])
        out.append(item)
    return out


def build_dataset(name: str, cfg: dict, out_dir: str | Path, seed: int) -> dict:
    """Generate or load every split of dataset ``name`` into ``out_dir``; returns the manifest.

    ``cfg`` is the ``datasets.<name>`` entry; settings it leaves out take the schema's defaults."""
    import datasets

    out_dir = Path(out_dir)
    cfg = entry_defaults("datasets", cfg)
    source = cfg["source"]
    manifest: dict = {"name": name, "source": source, "kind": cfg["kind"], "splits": {}}
    for split, n in cfg["splits"].items():
        if split not in SPLITS:
            raise ValueError(f"datasets.{name}.splits: unknown split {split!r}; known: {', '.join(SPLITS)}")
        s_seed = split_seed(seed, name, split)
        image_dir = out_dir / "images" / split
        if source == "synthetic":
            items = generator_for(cfg["kind"])(cfg, split, int(n), s_seed, name)
            items = _finalise_synthetic(items, cfg, image_dir, s_seed, split)
            quality = {
                "rows_in": len(items),
                "rows_kept": len(items),
                "not_selected": 0,
                "skipped": {},
                "skipped_examples": [],
            }
        elif source in ("hub", "local"):
            # the real: block and this split's draw (limit, saved ids, bias, bias_keep_ratio): loader_config
            real_cfg = loader_config(cfg, split, n)
            dq = DataQuality()
            items = load_items(cfg["loader"], real_cfg, split, image_dir, s_seed, quality=dq)
            quality = dq.as_dict()
            print(
                f"[data] {name} {split}: {dq.rows_kept} kept of {dq.rows_in} rows, {dq.n_skipped} skipped "
                f"{dict(sorted(dq.skipped.items()))}, {dq.not_selected} not selected (limit)",
                flush=True,
            )
        else:
            raise ValueError(
                f"datasets.{name}.source: unknown source {source!r}; known: synthetic, hub, local"
            )
        if not items:
            raise DataError(f"datasets.{name}: split {split!r} has no items")
        if cfg["question_template"] is not None:
            for it in items:
                it["problem"] = cfg["question_template"].format(question=it["problem"])
        ids = [it["id"] for it in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"datasets.{name} split {split}: duplicate id {dup!r}")
        ds = datasets.Dataset.from_list(items)
        ds.save_to_disk(str(out_dir / split))
        labels = [it.get("solution") for it in items]
        manifest["splits"][split] = {
            "n": len(items),
            "seed": s_seed,
            "columns": ds.column_names,
            "solutions": {s: labels.count(s) for s in sorted(set(labels), key=str)},
            "quality": quality,
        }
        if source in ("hub", "local"):
            # the drawn items, so the draw can be reused (datasets.<name>.real.ids.<split>: this file)
            atomic_write_json(out_dir / "ids" / f"{split}.json", ids)
            manifest["splits"][split]["ids_file"] = f"ids/{split}.json"
        if split == "train" and (cfg["kind"] == "relation" or cfg["bias_keep_ratio"] is not None):
            # how far the relation word alone predicts the label: the bias table's measured level of each set
            manifest["splits"][split]["bias_probe"] = relation_probe(items, s_seed)
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest


def relation_probe(items: list[dict], seed: int, folds: int = 5) -> dict:
    """How well the relation word alone predicts the label: the held-out accuracy (%) of a logistic
    regression on the one-hot relation (scikit-learn), over stratified ``folds``-fold cross-validation (fewer
    folds when a label has fewer items). Also each relation's majority label in ``items`` (the text prior a
    model can learn from them)."""
    from collections import Counter

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import OneHotEncoder

    relations = [[str(it["relation"])] for it in items]
    labels = [int(it["label"]) for it in items]
    by_relation: dict[str, Counter] = {}
    for (rel,), label in zip(relations, labels, strict=True):
        by_relation.setdefault(rel, Counter())[label] += 1
    majority = {rel: "True" if c[1] > c[0] else "False" for rel, c in sorted(by_relation.items())}
    k = min(folds, *Counter(labels).values()) if len(set(labels)) == 2 else 0
    out: dict = {"method": f"relation-only logistic regression, stratified {k}-fold", "majority": majority}
    if k < 2:
        out["accuracy"] = None
        out["why"] = "fewer than two items of a label: no held-out estimate"
        return out
    x = OneHotEncoder(handle_unknown="ignore").fit_transform(relations)
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    acc = cross_val_score(LogisticRegression(max_iter=1000), x, labels, cv=cv, scoring="accuracy")
    out["accuracy"] = round(100.0 * float(acc.mean()), 4)
    return out


def load_split(data_dir: str | Path, split: str):
    """Load one saved split (a ``datasets.Dataset``)."""
    import datasets

    path = Path(data_dir) / split
    if not path.exists():
        raise DataError(f"{path}: split {split!r} not found (build the dataset first)")
    return datasets.load_from_disk(str(path))

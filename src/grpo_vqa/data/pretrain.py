"""Captioning data for the tiny models' warm start, and the text corpus their tokenizer is trained on.

A real VLM arrives able to see and describe; a tiny one built from a config knows nothing. Before any
experiment, a tiny model is taught to *describe* scenes (the objects' order from left to right or top to
bottom; whether they are close; how many of each shape),
never to answer the study's questions or to use ``<think>``/``<answer>``. Its zero-shot ("base") row then plays
the part of a pretrained model that was not taught the answer format.
"""

from __future__ import annotations

import random

from ..config import entry_defaults
from .build import generator_for
from .relations import (
    AXIS,
    DIRECTIONAL,
    OPPOSITE,
    PROXIMITY,
    caption_for,
    listing,
    problem_for,
    proximity_text,
    sample_relation_scene,
    verdict_for,
)
from .scenes import COUNT_COLORS, PALETTES, SHAPES, Scene, SceneObject, render
from .tasks import counting_scene, describe_counts

#: The scene mix: the keys of ``models.<name>.pretrain`` that :func:`make_pretrain_items` takes (the schema
#: holds each one's default; ``size`` is the model's ``tiny.image_size``).
SCENE_KEYS = (
    "max_count",
    "relation_share",
    "proximity_share",
    "textured_share",
    "tied_colors",
    "radius",
    "layout",
    "single_share",
    "compare_share",
)


def scene_mix(pretrain: dict) -> dict:
    """:func:`make_pretrain_items`'s scene settings from a filled ``models.<name>.pretrain`` block."""
    mix = {key: pretrain[key] for key in SCENE_KEYS}
    mix["radius"] = tuple(mix["radius"])
    return mix


def default_warm_start() -> tuple[dict, int]:
    """The schema's ``pretrain`` block and image side of a tiny model (``models.<name>`` defaults)."""
    model = entry_defaults("models", {"source": "tiny"})
    return model["pretrain"], model["tiny"]["image_size"]


def make_pretrain_items(
    n: int,
    seed: int,
    *,
    size: int,
    max_count: int,
    relation_share: float,
    proximity_share: float,
    textured_share: float,
    tied_colors: bool,
    radius: tuple[int, int],
    layout: str,
    single_share: float,
    compare_share: float,
    with_images: bool = True,
) -> list[dict]:
    """``n`` (image, prompt, description) items: relation descriptions (``relation_share``) and shape counts.

    Every scene setting is the caller's (``models.<name>.pretrain``: :func:`scene_mix`; the schema holds each
    one's default and its meaning). ``tied_colors`` draws relation scenes with one colour per shape (the
    tutorial's), as the embedded relation datasets do; ``radius`` is the objects' size range in pixels.
    ``compare_share`` of the items are text comparisons: the question of a relation item (VSR wording) with the
    objects already listed in the claim's order, answered by the verdict sentences of the SFT reasoning; the
    image shows the scene, but the text alone decides. The share is drawn only when positive, so a mix without
    it draws the same items as before it existed.
    ``with_images=False`` gives the texts only (the tokenizer corpus).
    """
    rng = random.Random(seed)
    colors = list(PALETTES["flat"])
    items = []
    for i in range(n):
        style = "textured" if rng.random() < textured_share else "flat"
        if compare_share > 0 and rng.random() < compare_share:
            claimed = rng.choice(DIRECTIONAL)
            seen = claimed if rng.random() < 0.5 else OPPOSITE[claimed]
            subj, obj = sample_relation_scene(
                rng, seen, size, colors, list(SHAPES), radius, tied=tied_colors, layout=layout
            )
            objects = [subj, obj]
            question = problem_for(
                caption_for(subj.name, claimed, obj.name), subj.name, claimed, obj.name, "vsr"
            )
            problem, text = f"{question} {listing(objects, claimed)}", verdict_for(subj, obj, seen, claimed)
        elif rng.random() < single_share:
            obj = _single_object(rng, size, radius)
            objects = [obj]
            problem, text = "Where is the shape?", f"The {obj.name} is at the {_quadrant(obj, size)}."
        elif rng.random() < relation_share:
            rel = rng.choice(PROXIMITY) if rng.random() < proximity_share else rng.choice(DIRECTIONAL)
            subj, obj = sample_relation_scene(
                rng, rel, size, colors, list(SHAPES), radius, tied=tied_colors, layout=layout
            )
            objects = [subj, obj]
            if rel in PROXIMITY:
                problem, text = "How far apart are the shapes?", proximity_text(rel)
            else:
                problem, text = f"Name the shapes from {AXIS[rel][0].lower()}.", listing(objects, rel)
        else:
            counts = {s: rng.randint(0, max_count) for s in SHAPES}
            if sum(counts.values()) == 0:
                counts["circle"] = 1
            objects = counting_scene(rng, counts, size)
            problem = "Count the shapes in the image."
            text = describe_counts(counts)
        noise_seed = rng.getrandbits(32)
        item = {"id": f"pretrain-{i:06d}", "problem": problem, "text": text}
        if with_images:
            item["image"] = render(Scene(size, size, style, objects, noise_seed=noise_seed))
        items.append(item)
    return items


def _single_object(rng: random.Random, size: int, radius: tuple[int, int]) -> SceneObject:
    shape = rng.choice(list(SHAPES))
    cell = size / 2
    r = rng.uniform(radius[0], min(radius[1], cell / 2 - 2))
    cx, cy = (rng.randrange(2) * cell + rng.uniform(r + 1, cell - r - 1) for _ in range(2))
    return SceneObject(shape, COUNT_COLORS[shape], cx, cy, r)


def _quadrant(obj: SceneObject, size: int) -> str:
    return f"{'top' if obj.cy < size / 2 else 'bottom'} {'left' if obj.cx < size / 2 else 'right'}"


# Canonical settings per task kind for the tokenizer corpus: the corpus depends on the kinds of task, not on
# a dataset's sizes or bias, so editing those does not rebuild (and retrain) the models.
CORPUS_KINDS = {
    "relation": [
        {"kind": "relation", "relations": list(DIRECTIONAL + PROXIMITY), "prompt_style": "vsr"},
        {"kind": "relation", "relations": list(DIRECTIONAL + PROXIMITY), "prompt_style": "rel3d"},
    ],
    "counting": [{"kind": "counting", "min_count": 0, "max_count": 9}],
    "grounding": [{"kind": "grounding", "prompt_style": "vsr"}, {"kind": "grounding", "prompt_style": "ood"}],
    "math": [{"kind": "math", "max_count": 12}],
}


def tokenizer_corpus(seed: int, system_prompt: str | None = None, n_per_kind: int = 300) -> list[str]:
    """Every kind of text the embedded default's models read or write, for training their tokenizer."""
    texts: list[str] = []
    pretrain, size = default_warm_start()  # the corpus does not depend on a model's own scene mix
    for item in make_pretrain_items(400, seed, size=size, with_images=False, **scene_mix(pretrain)):
        texts += [item["problem"], item["text"]]
    for kind, variants in CORPUS_KINDS.items():
        for k, cfg in enumerate(variants):
            cfg = entry_defaults("datasets", cfg)
            for it in generator_for(kind)(cfg, "train", n_per_kind, seed + k, f"corpus-{kind}"):
                texts += [it["problem"], it["reasoning"], it["solution"], it.get("caption", "")]
    if system_prompt:
        texts.append(system_prompt)
    texts += [
        f"<think>{t}</think><answer>{a}</answer>"
        for t, a in zip(texts[:50], ["True", "False"] * 25, strict=True)
    ]
    texts += ["True", "False", "Yes", "No", "0 1 2 3 4 5 6 7 8 9", "A B C D E", "A. B. C. D. E."]
    return [t for t in texts if t]

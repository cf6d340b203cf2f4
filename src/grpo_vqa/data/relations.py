"""Spatial-relation items in the study's VSR columns, generated from procedural scenes.

Each item shows two shapes and a caption claiming a relation between them (``The red circle is left of the
blue square.``). The label says whether the claim holds in the image; a false caption names the opposite
relation (left of / right of, above / below, next to / far from), so the objects' order along the claimed axis
decides it. The SFT reasoning reads the two objects from the image in the order the claim implies (left to
right for "left of", right to left for "right of", top to bottom, bottom to top), so the claim holds exactly when
its subject comes first; it then states the relation, negated or not, and the verdict::

    <think>Right to left: the blue square, the red circle. So the red circle is not right of the blue square.
    The statement is false.</think><answer>False</answer>

Why this shape: tiny models learn to name objects in their left-to-right (top-to-bottom) order within ~150
steps, while finding a *named* object's position among two (text-to-image binding) stayed at chance for 350
steps; and after a fixed-direction listing, comparing the seen relation word with the claimed one (an XOR of
two binary facts) stayed at chance for 600-800 SFT steps, whereas "is the subject listed first?" is learned
within a few hundred (README, "What it took").

Text bias (for the bias experiment) is controlled by ``bias``: the probability that a caption whose relation
is in :data:`BIAS_POSITIVE` is true (and that one in the other half is false). ``bias = 0.5`` is unbiased.
"""

from __future__ import annotations

import hashlib
import math
import random

from .scenes import COUNT_COLORS, PALETTES, SHAPES, SceneObject, place_objects

DIRECTIONAL = ("left of", "right of", "above", "below")
PROXIMITY = ("next to", "far from")
RELATIONS = DIRECTIONAL + PROXIMITY
OPPOSITE = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "next to": "far from",
    "far from": "next to",
}
#: For a directional relation: the listing's header, the coordinate it sorts by, and whether it sorts descending
#: (so that the relation's subject comes first exactly when the relation holds).
AXIS = {
    "left of": ("Left to right", "cx", False),
    "right of": ("Right to left", "cx", True),
    "above": ("Top to bottom", "cy", False),
    "below": ("Bottom to top", "cy", True),
}
# Relation words whose captions are made mostly true in a biased set; the rest are made mostly false.
BIAS_POSITIVE = ("left of", "above", "next to")


def bias_positive(relation: str) -> bool:
    """Whether a biased set makes captions with this relation word mostly true (its text prior is "True").

    Our relation words are split by :data:`BIAS_POSITIVE`; any other word (the real datasets' vocabularies) by
    a stable hash of the lower-cased word, so that about half of a vocabulary goes each way in every run.
    """
    if relation in RELATIONS:
        return relation in BIAS_POSITIVE
    return hashlib.sha256(relation.strip().casefold().encode()).digest()[0] % 2 == 0


def text_prior(relation: str) -> str:
    """The answer a model that reads only the relation word of a biased set would give."""
    return "True" if bias_positive(relation) else "False"


def biased_indices(relations: list[str], labels: list[int], n: int, bias: float, seed: int) -> list[int]:
    """Indices (in original order) of a seeded ``n``-item subset of real relation items under a text bias.

    The subset keeps the pool's share of :func:`bias_positive` items; within them a share ``bias`` of the
    captions is true, within the others a share ``1 - bias``. Raises ValueError when the pool is too small.
    """
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias must be in [0, 1], got {bias}")
    rng = random.Random(seed)
    groups: dict[tuple[bool, int], list[int]] = {(p, lab): [] for p in (True, False) for lab in (0, 1)}
    for i, (rel, lab) in enumerate(zip(relations, labels, strict=True)):
        groups[(bias_positive(str(rel)), int(lab))].append(i)
    n_pos_pool = len(groups[(True, 0)]) + len(groups[(True, 1)])
    n_pos = round(n * n_pos_pool / max(1, len(relations)))
    chosen: list[int] = []
    for positive, size in ((True, n_pos), (False, n - n_pos)):
        p_true = bias if positive else 1.0 - bias
        n_true = round(p_true * size)
        for lab, k in ((1, n_true), (0, size - n_true)):
            pool = groups[(positive, lab)]
            if k > len(pool):
                kind = "text-prior-true" if positive else "text-prior-false"
                raise ValueError(
                    f"bias {bias}: needs {k} {kind} items with label {lab}, the pool has {len(pool)}"
                )
            chosen += rng.sample(pool, k)
    return sorted(chosen)


def family(relation: str) -> tuple[str, ...]:
    """The relations a claim competes with (a caption is false when another one of its family is seen)."""
    if relation in DIRECTIONAL:
        return DIRECTIONAL
    if relation in PROXIMITY:
        return PROXIMITY
    raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")


def seen_relation(
    subj: SceneObject, obj: SceneObject, relation_family: tuple[str, ...], size: int
) -> str | None:
    """The relation of ``subj`` to ``obj`` in a family, or ``None`` when the geometry is ambiguous."""
    if relation_family == DIRECTIONAL:
        dx, dy = subj.cx - obj.cx, subj.cy - obj.cy
        if max(abs(dx), abs(dy)) < 0.15 * size or min(abs(dx), abs(dy)) * 1.5 > max(abs(dx), abs(dy)):
            return None
        if abs(dx) >= abs(dy):
            return "left of" if dx < 0 else "right of"
        return "above" if dy < 0 else "below"
    gap = math.hypot(subj.cx - obj.cx, subj.cy - obj.cy) - subj.r - obj.r
    if gap < 0.12 * size:
        return "next to"
    if gap > 0.35 * size:
        return "far from"
    return None


def caption_for(subj: str, relation: str, obj: str) -> str:
    return f"The {subj} is {relation} the {obj}."


def problem_for(caption: str, subj: str, relation: str, obj: str, style: str) -> str:
    """The question text: the study's VSR wording, or its Rel3D wording ``"<subj> <predicate> <obj>?"``."""
    if style == "vsr":
        return f"Is the following statement true: {caption}"
    if style == "rel3d":
        return f"{subj} {relation} {obj}?"
    raise ValueError(f"unknown prompt style {style!r}; known: vsr, rel3d")


def listing(objects: list[SceneObject], relation: str) -> str:
    """``Right to left: the blue square, the red circle.``: the objects in the order ``relation`` implies
    (its subject comes first exactly when the relation holds)."""
    label, coord, reverse = AXIS[relation]
    names = ", ".join(
        f"the {o.name}" for o in sorted(objects, key=lambda o: getattr(o, coord), reverse=reverse)
    )
    return f"{label}: {names}."


def proximity_text(seen: str) -> str:
    return f"The shapes are {seen} each other."


def verdict_for(subj: SceneObject, obj: SceneObject, seen: str, claimed: str) -> str:
    """The reasoning's last two sentences: the claimed relation negated or not, the verdict."""
    holds = seen == claimed
    stated = f"So the {subj.name} is {'' if holds else 'not '}{claimed} the {obj.name}."
    return f"{stated} The statement is {'true' if holds else 'false'}."


def reasoning_for(subj: SceneObject, obj: SceneObject, seen: str, claimed: str) -> str:
    """What is seen (read from the image in the claim's order), then :func:`verdict_for`."""
    seen_text = listing([subj, obj], claimed) if claimed in AXIS else proximity_text(seen)
    return f"{seen_text} {verdict_for(subj, obj, seen, claimed)}"


def label_plan(relations: list[str], n: int, bias: float, rng: random.Random) -> list[tuple[str, int]]:
    """Exactly balanced (claimed relation, label) pairs for ``n`` items under a text bias.

    Claims are spread evenly over ``relations``; within each relation the number of true captions is
    about ``p * count`` (rounding errors carried over so the total is exact) with ``p = bias`` for :data:`BIAS_POSITIVE` relations and ``1 - bias`` otherwise.
    """
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias must be in [0, 1], got {bias}")
    plan: list[tuple[str, int]] = []
    carry = 0.0  # error diffusion keeps the overall count of true captions at round(sum of p * count)
    for k, rel in enumerate(relations):
        count = n // len(relations) + (1 if k < n % len(relations) else 0)
        p = bias if bias_positive(rel) else 1.0 - bias
        exact = p * count + carry
        n_true = min(count, max(0, int(math.floor(exact + 0.5))))
        carry = exact - n_true
        plan += [(rel, 1)] * n_true + [(rel, 0)] * (count - n_true)
    rng.shuffle(plan)
    return plan


def _overlap(a: SceneObject, b: SceneObject) -> bool:
    return math.hypot(a.cx - b.cx, a.cy - b.cy) < a.r + b.r + 2


def sample_relation_scene(
    rng: random.Random,
    seen: str,
    size: int,
    colors: list[str],
    shapes: list[str],
    radius: tuple[int, int],
    max_tries: int = 500,
    tied: bool = False,
    layout: str = "free",
) -> tuple[SceneObject, SceneObject]:
    """Two distinct-looking objects whose relation (subject to object) is clearly ``seen``.

    ``tied``: each shape has one colour (the counting tutorial's red triangles, blue circles, green squares),
    so an object is named by either word; otherwise colours and shapes are drawn independently.
    ``layout``: ``free`` places objects anywhere; ``apart`` puts their centres in opposite outer thirds of the
    canvas along the relation's axis (anywhere across it), so the order along the axis is never a close call.
    """
    fam = family(seen)
    if layout not in ("free", "apart"):
        raise ValueError(f"unknown layout {layout!r}; known: free, apart")
    for _ in range(max_tries):
        if tied:
            s1, s2 = rng.sample(shapes, 2)
            c1, c2 = COUNT_COLORS[s1], COUNT_COLORS[s2]
        else:
            c1, c2 = rng.sample(colors, 2)
            s1, s2 = rng.choice(shapes), rng.choice(shapes)
        if layout == "apart" and seen in AXIS:
            objs = _apart_pair(rng, seen, [(s1, c1), (s2, c2)], size, radius)
            if _overlap(objs[0], objs[1]):
                continue
        else:
            objs = place_objects(rng, [(s1, c1), (s2, c2)], size, radius)
        if objs is None:
            continue
        if seen_relation(objs[0], objs[1], fam, size) == seen:
            return objs[0], objs[1]
    raise RuntimeError(f"could not place two objects '{seen}' each other on a {size}px canvas")


def _apart_pair(
    rng: random.Random, seen: str, specs: list[tuple[str, str]], size: int, radius: tuple[int, int]
) -> list[SceneObject]:
    """Subject and object in opposite outer thirds along ``seen``'s axis, anywhere across it."""
    third = size / 3
    r_max = min(radius[1], third / 2)
    first = 0 if seen in ("left of", "above") else 2  # the subject's third along the axis
    objs = []
    for k, (shape, color) in enumerate(specs):
        r = rng.uniform(min(radius[0], r_max), r_max)
        lo = (first if k == 0 else 2 - first) * third
        along = rng.uniform(lo + r_max / 2, lo + third - r_max / 2) if r_max < third else lo + third / 2
        along = min(max(along, r + 1), size - r - 1)
        across = rng.uniform(r + 1, size - r - 1)
        cx, cy = (along, across) if AXIS[seen][1] == "cx" else (across, along)
        objs.append(SceneObject(shape, color, cx, cy, r))
    return objs


def make_relation_items(
    n: int,
    seed: int,
    relations: list[str],
    bias: float = 0.5,
    size: int = 112,
    colors: list[str] | None = None,
    shapes: list[str] | None = None,
    radius: tuple[int, int] = (9, 16),
    prompt_style: str = "vsr",
    id_prefix: str = "rel",
    tied_colors: bool = False,
    layout: str = "free",
) -> list[dict]:
    """``n`` relation items (without images: each carries its scene objects for rendering)."""
    colors = list(colors or PALETTES["flat"].keys())
    shapes = list(shapes or SHAPES)
    for rel in relations:
        family(rel)
    rng = random.Random(seed)
    items = []
    for i, (claimed, label) in enumerate(label_plan(relations, n, bias, rng)):
        seen = claimed if label == 1 else OPPOSITE[claimed]
        subj, obj = sample_relation_scene(
            rng, seen, size, colors, shapes, radius, tied=tied_colors, layout=layout
        )
        caption = caption_for(subj.name, claimed, obj.name)
        items.append(
            {
                "id": f"{id_prefix}-{i:06d}",
                "task": "relation",
                "caption": caption,
                "label": label,
                "relation": claimed,
                "subj": subj.name,
                "obj": obj.name,
                "problem": problem_for(caption, subj.name, claimed, obj.name, prompt_style),
                "solution": "True" if label == 1 else "False",
                "reasoning": reasoning_for(subj, obj, seen, claimed),
                "_objects": [subj, obj],
            }
        )
    return items

"""Synthetic stand-ins for the study's other tasks, all drawn from the scene generator.

* ``counting``  — the shape-counting tutorial: "How many circles are in the image?" (triangles red, circles
  blue, squares green, as in the tutorial); reasoning describes the counts, then answers.
* ``grounding`` — DrivingVQA-style multiple choice whose reasoning names boxes as ``x1,y1,x2,y2 object``.
* ``math``      — the TRL recipe's multimodal math stand-in: an arithmetic expression rendered in the image.

Each generator reads a ``datasets.<name>`` entry with the schema's defaults filled in
(:func:`grpo_vqa.config.entry_defaults`) and returns items (with ``_objects``, and ``_image`` when the image is
not a plain scene) that :func:`grpo_vqa.data.build.build_dataset` renders and saves.
"""

from __future__ import annotations

import random
from fractions import Fraction

from PIL import Image, ImageDraw, ImageFont

from .relations import DIRECTIONAL, seen_relation
from .scenes import COUNT_COLORS, PALETTES, PLURALS, SHAPES, SceneObject, place_objects

LETTERS = "ABCDE"


def counting_scene(rng: random.Random, counts: dict[str, int], size: int) -> list[SceneObject]:
    """Place ``counts[shape]`` shapes of each kind (tutorial colours), shrinking them until they fit."""
    specs = [(s, COUNT_COLORS[s]) for s, n in counts.items() for _ in range(n)]
    rng.shuffle(specs)
    total = max(1, len(specs))
    hi = max(3.0, min(14.0, size / (3.2 * total**0.5)))
    for _ in range(20):
        objs = place_objects(rng, specs, size, (max(3.0, hi * 0.6), hi), margin=1.0)
        if objs is not None:
            return objs
        hi *= 0.85
    raise RuntimeError(f"cannot place {total} shapes on a {size}px canvas")


def describe_counts(counts: dict[str, int]) -> str:
    """``I see 2 triangles, 1 circle and 3 squares.`` (shapes in a fixed order)."""
    parts = [f"{n} {shape if n == 1 else PLURALS[shape]}" for shape, n in counts.items()]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"I see {body}."


def counting_reasoning(counts: dict[str, int], target: str) -> str:
    n = counts[target]
    return f"{describe_counts(counts)} The question asks about {PLURALS[target]}. So the answer is {n}."


def make_counting_items(cfg: dict, split: str, n: int, seed: int, name: str) -> list[dict]:
    rng = random.Random(seed)
    lo, hi = int(cfg["min_count"]), int(cfg["max_count"])
    size = cfg["image_size"]
    items = []
    for i in range(n):
        counts = {s: rng.randint(lo, hi) for s in SHAPES}
        target = SHAPES[i % len(SHAPES)]
        items.append(
            {
                "id": f"{name}-{split}-{i:06d}",
                "task": "counting",
                "problem": f"How many {PLURALS[target]} are in the image?",
                "solution": str(counts[target]),
                "reasoning": counting_reasoning(counts, target),
                "target_shape": PLURALS[target],
                "count": counts[target],
                "_objects": counting_scene(rng, counts, size),
            }
        )
    return items


def _box_text(obj: SceneObject) -> str:
    x1, y1, x2, y2 = obj.box
    return f"{x1},{y1},{x2},{y2} {obj.name}"


def make_grounding_items(cfg: dict, split: str, n: int, seed: int, name: str) -> list[dict]:
    """Multiple choice: which object is <relation> the reference? Exactly one choice satisfies it."""
    rng = random.Random(seed)
    size = cfg["image_size"]
    colors = list(PALETTES["flat"])
    wording = cfg["prompt_style"]
    items: list[dict] = []
    while len(items) < n:
        names = rng.sample([(s, c) for s in SHAPES for c in colors], 4)
        objs = place_objects(rng, names, size, (8, 13))
        if objs is None:
            continue
        ref, candidates = objs[0], objs[1:]
        rel = rng.choice(DIRECTIONAL)
        hits = [o for o in candidates if seen_relation(o, ref, DIRECTIONAL, size) == rel]
        clear_misses = [o for o in candidates if seen_relation(o, ref, DIRECTIONAL, size) not in (rel, None)]
        if len(hits) != 1 or len(clear_misses) != len(candidates) - 1:
            continue
        answer = hits[0]
        rng.shuffle(candidates)
        letter = LETTERS[candidates.index(answer)]
        choices = [f"{LETTERS[k]}. {o.name}" for k, o in enumerate(candidates)]
        if wording == "vsr":
            question = f"Which object is {rel} the {ref.name}?"
        else:
            question = f"Pick the shape that lies {rel} the {ref.name}."
        reasoning = (
            f"The {ref.name} is at {_box_text(ref)}. The {answer.name} is at {_box_text(answer)}, "
            f"{rel} it. So the answer is {letter}."
        )
        items.append(
            {
                "id": f"{name}-{split}-{len(items):06d}",
                "task": "grounding",
                "problem": question + " Choices: " + " ".join(choices),
                "solution": letter,
                "reasoning": reasoning,
                "choices": choices,
                "boxes": [list(map(float, ref.box)), list(map(float, answer.box))],
                "box_labels": [ref.name, answer.name],
                "_objects": objs,
            }
        )
    return items


def _render_text(text: str, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, size // 6))
    box = draw.textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    x = rng.randint(0, max(0, size - w - 2))
    y = rng.randint(0, max(0, size - h - 2))
    draw.text((x - box[0], y - box[1]), text, fill=(0, 0, 0), font=font)
    return img


def make_math_items(cfg: dict, split: str, n: int, seed: int, name: str) -> list[dict]:
    """Arithmetic shown in the image; the answer is an integer or a LaTeX fraction (math-verify checks it)."""
    rng = random.Random(seed)
    size = cfg["image_size"]
    hi = int(cfg["max_count"])
    items = []
    for i in range(n):
        a, b = rng.randint(1, hi), rng.randint(1, hi)
        op = rng.choice("+-*/")
        value = {"+": Fraction(a + b), "-": Fraction(a - b), "*": Fraction(a * b), "/": Fraction(a, b)}[op]
        if value.denominator == 1:
            solution = str(value.numerator)
        else:
            solution = f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
        shown = f"{a} {op} {b}"
        items.append(
            {
                "id": f"{name}-{split}-{i:06d}",
                "task": "math",
                "problem": "What is the value of the expression in the image?",
                "solution": f"${solution}$",
                "reasoning": f"The image shows {shown}. {shown} = {solution}.",
                "_objects": [],
                "_image": _render_text(shown, size, rng),
            }
        )
    return items


GENERATORS = {
    "counting": make_counting_items,
    "grounding": make_grounding_items,
    "math": make_math_items,
}

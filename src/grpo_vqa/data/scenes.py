"""Procedural scenes: coloured shapes on a canvas with every object's class, colour and box known.

A scene is sampled from a seeded :class:`random.Random` and rendered with PIL. Two renderings exist so that a
"synthetic" and a "real" domain can be told apart for the sim-to-real experiment:

* ``flat``: white canvas, solid fills (the clean, synthetic look; Rel3D slot),
* ``textured``: noisy tinted background, shaded fills with pixel noise, a different palette and sizes
  (the cluttered, photographic look; SpatialSense slot).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
#: One colour per shape, as in the shape-counting tutorial (red triangles, blue circles, green squares).
COUNT_COLORS = {"triangle": "red", "circle": "blue", "square": "green"}

# Palettes map a colour word to RGB. The textured domain uses other shades of the same words so that the
# vocabulary transfers while the pixels do not.
PALETTES: dict[str, dict[str, tuple[int, int, int]]] = {
    "flat": {
        "red": (220, 30, 30),
        "green": (30, 170, 40),
        "blue": (30, 60, 220),
        "yellow": (235, 200, 20),
        "purple": (140, 40, 170),
        "orange": (245, 130, 20),
    },
    "textured": {
        "red": (170, 50, 60),
        "green": (70, 140, 70),
        "blue": (60, 90, 170),
        "yellow": (200, 180, 70),
        "purple": (120, 70, 140),
        "orange": (200, 120, 60),
    },
}


@dataclass
class SceneObject:
    """One shape: its class, colour word, centre, half-size and bounding box (pixels, x1,y1,x2,y2)."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (
            int(round(self.cx - self.r)),
            int(round(self.cy - self.r)),
            int(round(self.cx + self.r)),
            int(round(self.cy + self.r)),
        )

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    """A canvas and the objects on it."""

    width: int
    height: int
    style: str
    objects: list[SceneObject] = field(default_factory=list)
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "style": self.style,
            "noise_seed": self.noise_seed,
            "objects": [asdict(o) | {"box": list(o.box)} for o in self.objects],
        }


def _overlaps(a: SceneObject, b: SceneObject, margin: float) -> bool:
    return math.hypot(a.cx - b.cx, a.cy - b.cy) < a.r + b.r + margin


def place_objects(
    rng: random.Random,
    specs: list[tuple[str, str]],
    size: int,
    radius: tuple[int, int],
    margin: float = 2.0,
    max_tries: int = 200,
) -> list[SceneObject] | None:
    """Place ``(shape, colour)`` objects without overlap; ``None`` when the canvas is too crowded."""
    placed: list[SceneObject] = []
    for shape, color in specs:
        for _ in range(max_tries):
            r = rng.uniform(*radius)
            obj = SceneObject(
                shape, color, rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1), r
            )
            if not any(_overlaps(obj, o, margin) for o in placed):
                placed.append(obj)
                break
        else:
            return None
    return placed


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = obj.cx - obj.r, obj.cy - obj.r, obj.cx + obj.r, obj.cy + obj.r
    if obj.shape == "circle":
        draw.ellipse([x1, y1, x2, y2], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([x1, y1, x2, y2], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(obj.cx, y1), (x1, y2), (x2, y2)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image in its style."""
    palette = PALETTES[scene.style]
    if scene.style == "flat":
        img = Image.new("RGB", (scene.width, scene.height), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        for obj in scene.objects:
            _draw_shape(draw, obj, palette[obj.color])
        return img
    if scene.style != "textured":
        raise ValueError(f"unknown scene style {scene.style!r}; known: flat, textured")
    nrng = np.random.default_rng(scene.noise_seed)
    tint = nrng.integers(150, 230, size=3)
    bg = np.clip(tint + nrng.normal(0, 18, size=(scene.height, scene.width, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw_shape(draw, obj, palette[obj.color])
    arr = np.asarray(img).astype(np.float32)
    arr += nrng.normal(0, 10, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def blank_like(img: Image.Image) -> Image.Image:
    """A uniform grey image of the same size: the text-only probe's input."""
    return Image.new("RGB", img.size, (128, 128, 128))

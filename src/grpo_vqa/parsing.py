"""Parsers for model completions in the ``<think>…</think><answer>…</answer>`` format.

Every function is pure, never raises (whatever the input: ``None``, non-strings, 100k-character strings,
unbalanced or nested tags) and runs in time linear in the input length. Tags are matched case-sensitively,
as in the study's regexes; look-alike characters (full-width brackets, non-ASCII digits) are not tags or
digits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Box",
    "box_coords",
    "box_iou",
    "completion_text",
    "extract_answer",
    "extract_think",
    "format_ok",
    "last_number",
    "normalize_bool",
    "parse_boxes",
    "reasoning_length",
]

Box = tuple[float, float, float, float, str]


def _content_text(content: Any) -> str:
    """Text of a message ``content``: a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                if part.get("type", "text") == "text":
                    parts.append(part["text"])
        return "".join(parts)
    return ""


def completion_text(c: Any) -> str:
    """Text of a TRL completion: a string, a message dict or a list of messages; anything else gives "".

    In a list, assistant messages are kept when any message has a role (others: all messages); their
    texts are joined with newlines. Non-text content parts (images) are dropped.
    """
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        return _content_text(c.get("content"))
    if isinstance(c, (list, tuple)):
        messages = [m for m in c if isinstance(m, dict)]
        if any("role" in m for m in messages):
            messages = [m for m in messages if m.get("role") == "assistant"]
        return "\n".join(_content_text(m.get("content")) for m in messages)
    return ""


def _first_tag(text: Any, tag: str) -> str | None:
    """Stripped content of the first ``<tag>…</tag>``: what ``re.search(r"<tag>(.*?)</tag>", DOTALL)`` finds."""
    if not isinstance(text, str):
        return None
    opening, closing = f"<{tag}>", f"</{tag}>"
    start = text.find(opening)
    if start < 0:
        return None
    # If the first opening tag has no closing tag after it, no later opening tag has one either.
    end = text.find(closing, start + len(opening))
    if end < 0:
        return None
    return text[start + len(opening) : end].strip()


def extract_answer(text: Any) -> str | None:
    """Stripped content of the first complete ``<answer>…</answer>``; None when there is none.

    The first match wins, as with the study's ``re.search(r"<answer>(.*?)</answer>", DOTALL)``: content runs
    from the first ``<answer>`` to the next ``</answer>``, so ``<answer>a<answer>b</answer>`` gives
    ``"a<answer>b"``. An empty tag gives ``""``.
    """
    return _first_tag(text, "answer")


def extract_think(text: Any) -> str | None:
    """Stripped content of the first complete ``<think>…</think>`` (same rules as :func:`extract_answer`)."""
    return _first_tag(text, "think")


_THINK_THEN_ANSWER = re.compile(r"</think>\s*<answer>")


def format_ok(text: Any) -> bool:
    """Whether the whole text (less surrounding whitespace) matches the study's format regex.

    Equivalent to ``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", text.strip(), re.DOTALL)``
    but linear-time: the text starts with ``<think>``, ends with ``</answer>``, and in between has a
    ``</think>`` followed (after optional whitespace) by ``<answer>``. Extra tags inside are allowed, as the
    regex allows them.
    """
    if not isinstance(text, str):
        return False
    s = text.strip()
    if not (s.startswith("<think>") and s.endswith("</answer>")):
        return False
    middle = s[len("<think>") : len(s) - len("</answer>")]
    return _THINK_THEN_ANSWER.search(middle) is not None


_BOOLS = {"true": "True", "yes": "True", "false": "False", "no": "False"}


def normalize_bool(ans: Any) -> str | None:
    """``"True"``/``"False"`` for true/false/yes/no in any case (ASCII only), with optional trailing periods."""
    if not isinstance(ans, str):
        return None
    word = ans.strip().rstrip(".").strip()
    if not word.isascii():
        return None
    return _BOOLS.get(word.lower())


_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_SEP = r"[ \t]*,[ \t]*"
_BOX = re.compile(
    r"(?<![\w.,])(?:[\[(][ \t]*)?"
    + _NUM
    + _SEP
    + _NUM
    + _SEP
    + _NUM
    + _SEP
    + _NUM
    + r"(?!\.?\d|[ \t]*,[ \t]*\d)(?:[ \t]*[\])])?"
    + r"(?:[ \t]+([A-Za-z][A-Za-z_-]*))?",
    re.ASCII,
)


def parse_boxes(text: Any) -> list[Box]:
    """Boxes written as ``x1,y1,x2,y2 object`` (the DrivingVQA reasoning convention).

    Coordinates are non-negative ints or floats, with optional spaces after (or before) the commas and
    optional ``[...]``/``(...)`` around them; the label is the single word that follows (``""`` if none).
    Runs of five or more numbers, non-finite values and degenerate boxes (``x2 <= x1`` or ``y2 <= y1``) are
    skipped.
    """
    if not isinstance(text, str):
        return []
    boxes: list[Box] = []
    for m in _BOX.finditer(text):
        x1, y1, x2, y2 = (float(g) for g in m.group(1, 2, 3, 4))
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        if x2 <= x1 or y2 <= y1:
            continue
        boxes.append((x1, y1, x2, y2, m.group(5) or ""))
    return boxes


def box_coords(box: Any) -> tuple[float, float, float, float] | None:
    """The first four entries of ``box`` as finite floats (no ordering check), or None."""
    if isinstance(box, (str, bytes)):
        return None
    try:
        values = tuple(float(box[i]) for i in range(4))
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    return values  # type: ignore[return-value]


def box_iou(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2, ...)`` boxes, in [0, 1].

    Entries past the fourth (labels) are ignored; malformed, non-finite or degenerate boxes give 0.0.
    Coordinates are rescaled before computing areas, so huge or tiny values do not overflow.
    """
    ca, cb = box_coords(a), box_coords(b)
    if ca is None or cb is None:
        return 0.0
    scale = max(abs(v) for v in ca + cb)
    if scale == 0.0:
        return 0.0
    ax1, ay1, ax2, ay2 = (v / scale for v in ca)
    bx1, by1, bx2, by2 = (v / scale for v in cb)
    if ax2 <= ax1 or ay2 <= ay1 or bx2 <= bx1 or by2 <= by1:
        return 0.0
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if not union > 0.0:
        return 0.0
    return min(1.0, max(0.0, inter / union))


_INT = re.compile(r"[0-9]+")


def last_number(text: Any) -> str | None:
    """The last run of ASCII digits in the text (as the counting tutorial's ``re.findall(r"\\d+")[-1]``).

    "3.5" gives "5" and "-2" gives "2", as in the tutorial; non-ASCII digits are not digits here.
    """
    if not isinstance(text, str):
        return None
    numbers = _INT.findall(text)
    return numbers[-1] if numbers else None


def reasoning_length(text: Any) -> int:
    """Number of whitespace-separated words inside the first ``<think>…</think>``; 0 when there is none."""
    think = extract_think(text)
    return len(think.split()) if think else 0

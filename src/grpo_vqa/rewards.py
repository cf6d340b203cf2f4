"""GRPO reward functions, selected by name (open-r1 style).

Every reward has TRL's signature ``f(completions, **kwargs) -> list[float | None]``: ``completions`` are
strings or conversational message lists, and dataset columns (``solution``, ``boxes``, ``target_shape``)
arrive as keyword lists aligned with them; other keywords (``prompts``, ``trainer_state``, ...) are ignored.
``None`` means "no reward for this sample" (TRL skips it). Each function's ``__name__`` is its registry name,
which TRL uses to log it. A missing required column raises ``TypeError``; a column of the wrong length
raises ``ValueError``; completion content never makes a reward raise.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from grpo_vqa.parsing import (
    box_coords,
    box_iou,
    completion_text,
    extract_answer,
    extract_think,
    format_ok,
    last_number,
    normalize_bool,
    parse_boxes,
)

__all__ = [
    "REWARDS",
    "REWARD_RANGES",
    "UnknownRewardError",
    "accuracy_exact_reward",
    "accuracy_reward",
    "accuracy_yes_no_reward",
    "exam_reward",
    "format_reward",
    "get_reward_funcs",
    "iou_reward",
    "math_accuracy_reward",
    "shape_count_reward",
]

RewardFunc = Callable[..., list[float | None]]

REWARDS: dict[str, RewardFunc] = {}
REWARD_RANGES: dict[str, tuple[float, float]] = {}


class UnknownRewardError(KeyError):
    """A reward name that is not in :data:`REWARDS`."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def _register(name: str, low: float, high: float) -> Callable[[RewardFunc], RewardFunc]:
    """Register a reward under ``name`` (also its ``__name__``) with its value range."""

    def decorate(func: RewardFunc) -> RewardFunc:
        func.__name__ = name
        func.__qualname__ = name
        REWARDS[name] = func
        REWARD_RANGES[name] = (low, high)
        return func

    return decorate


def get_reward_funcs(names: str | Iterable[str]) -> list[RewardFunc]:
    """The reward functions for ``names``, in order; raises :class:`UnknownRewardError` for unknown names."""
    if isinstance(names, str):
        names = [names]
    funcs = []
    for name in names:
        if name not in REWARDS:
            valid = ", ".join(sorted(REWARDS))
            raise UnknownRewardError(f"unknown reward {name!r}; valid names: {valid}")
        funcs.append(REWARDS[name])
    return funcs


def _column(values: Any, name: str, n: int) -> list[Any]:
    """A dataset column as a list aligned with ``n`` completions."""
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


# --- accuracy -------------------------------------------------------------------------------------------

_CHOICE_GOLD = re.compile(r"[(\[]?([A-E])[)\].]?")
_CHOICE_ANSWER = re.compile(r"\(([A-E])\)|\[([A-E])\]|([A-E])(?:[.):\]]|$)")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _choice_letter(answer: str) -> str | None:
    """The option letter an answer starts with: "B", "B.", "B:", "(B)", "[B]", "B) text" give "B"."""
    m = _CHOICE_ANSWER.match(answer)
    return next((g for g in m.groups() if g), None) if m else None


def _number(text: str) -> float | None:
    """The value of a plain decimal number (optional trailing period), else None."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    return float(text) if _NUMBER.fullmatch(text) else None


def _accuracy_one(answer: str | None, solution: Any) -> float | None:
    if solution is None:
        return None
    if answer is None:
        return 0.0
    gold = str(solution).strip()
    gold_bool = normalize_bool(gold)
    if gold_bool is not None:
        return float(normalize_bool(answer) == gold_bool)
    choice = _CHOICE_GOLD.fullmatch(gold)
    if choice:
        return float(_choice_letter(answer) == choice.group(1))
    gold_value = _number(gold)
    if gold_value is not None:
        value = _number(answer)
        return float(value is not None and math.isclose(value, gold_value, rel_tol=1e-9, abs_tol=1e-12))
    return float(answer.strip().casefold() == gold.casefold())


@_register("accuracy", 0.0, 1.0)
def accuracy_reward(completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 if the ``<answer>`` content matches ``solution``, else 0.0 (no answer tag: 0.0). Range [0, 1].

    Boolean solutions ("True"/"False") accept true/false/yes/no in any case (the study's relaxation for
    SmolVLM); option letters "A"-"E" accept "B", "B.", "(B)", "B) text"; numeric solutions compare by value
    ("3" == "3.0"); anything else is an exact match after strip and casefold. A ``None`` solution gives None.
    """
    solutions = _column(solution, "solution", len(completions))
    return [
        _accuracy_one(extract_answer(completion_text(c)), sol)
        for c, sol in zip(completions, solutions, strict=True)
    ]


def _exact_one(answer: str | None, solution: Any, aliases: dict[str, str] | None = None) -> float | None:
    if solution is None:
        return None
    if answer is None:
        return 0.0
    answer = answer.strip()
    return float((aliases or {}).get(answer, answer) == str(solution).strip())


@_register("accuracy_exact", 0.0, 1.0)
def accuracy_exact_reward(
    completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any
) -> list[float | None]:
    """The study's VSR accuracy: 1.0 if the stripped ``<answer>`` content equals the stripped ``solution``
    exactly (case-sensitive: ``True`` / ``False``), else 0.0 (no answer tag: 0.0). Range [0, 1]."""
    solutions = _column(solution, "solution", len(completions))
    return [
        _exact_one(extract_answer(completion_text(c)), sol)
        for c, sol in zip(completions, solutions, strict=True)
    ]


_YES_NO = {"Yes": "True", "No": "False"}


@_register("accuracy_yes_no", 0.0, 1.0)
def accuracy_yes_no_reward(
    completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any
) -> list[float | None]:
    """:func:`accuracy_exact_reward` that also takes ``Yes`` for ``True`` and ``No`` for ``False`` (the study's
    SmolVLM evaluation). Range [0, 1]."""
    solutions = _column(solution, "solution", len(completions))
    return [
        _exact_one(extract_answer(completion_text(c)), sol, _YES_NO)
        for c, sol in zip(completions, solutions, strict=True)
    ]


_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def _letter_set(text: str) -> frozenset[str]:
    return frozenset(_LETTER.findall(text))


def _exam_one(answer: str | None, solution: Any) -> float | None:
    if solution is None:
        return None
    gold = _letter_set(str(solution))
    if answer is None or not gold:
        return 0.0
    return float(_letter_set(answer) == gold)


@_register("exam", 0.0, 1.0)
def exam_reward(completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """The exam score of multiple-answer questions (DrivingVQA): 1.0 if the set of option letters in the
    ``<answer>`` content equals the set in ``solution`` (``"A, C"``), else 0.0. Letters are capitals standing
    alone (``"A, C"``, ``"(A) and (C)"``). Range [0, 1]."""
    solutions = _column(solution, "solution", len(completions))
    return [
        _exam_one(extract_answer(completion_text(c)), sol)
        for c, sol in zip(completions, solutions, strict=True)
    ]


# --- format ---------------------------------------------------------------------------------------------


@_register("format", 0.0, 1.0)
def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 if the completion is ``<think>…</think><answer>…</answer>`` (see ``format_ok``), else 0.0."""
    return [float(format_ok(completion_text(c))) for c in completions]


# --- iou ------------------------------------------------------------------------------------------------


def _valid_box(box: Any) -> tuple[float, float, float, float] | None:
    c = box_coords(box)
    return c if c is not None and c[2] > c[0] and c[3] > c[1] else None


def _iou_one(text: str, gt_boxes: Any) -> float | None:
    single = box_coords(gt_boxes)  # a flat [x1, y1, x2, y2] is one box
    if single is not None:
        gts = [b for b in [_valid_box(gt_boxes)] if b is not None]
    else:
        try:
            gts = [b for b in map(_valid_box, gt_boxes) if b is not None]
        except TypeError:  # not iterable
            return None
    if not gts:
        return None
    predicted = parse_boxes(extract_think(text) or "")
    if not predicted:
        return 0.0
    score = sum(max(box_iou(g, p) for p in predicted) for g in gts) / len(gts)
    return min(1.0, max(0.0, score))


@_register("iou", 0.0, 1.0)
def iou_reward(
    completions: Sequence[Any], boxes: Sequence[Any] | None = None, **kwargs: Any
) -> list[float | None]:
    """Mean over ground-truth ``boxes`` of the best IoU with a box named in ``<think>``. Range [0, 1].

    Predicted boxes are parsed from the think part with ``parse_boxes`` (none: 0.0). Samples whose
    ``boxes`` are None, empty or hold no valid box give None, as do all samples without a ``boxes`` column.
    A flat ``[x1, y1, x2, y2]`` counts as one box.
    """
    if boxes is None:
        return [None] * len(completions)
    gt = _column(boxes, "boxes", len(completions))
    return [
        None if b is None else _iou_one(completion_text(c), b) for c, b in zip(completions, gt, strict=True)
    ]


# --- shape_count ----------------------------------------------------------------------------------------

SHAPE_KEYWORDS = {
    "triangles": ("triangle", "red", "triangular"),
    "circles": ("circle", "blue", "circular"),
    "squares": ("square", "green", "rectangular"),
}
_REASONING = re.compile(r"therefore|total|the count is|the answer is|\bso\b")


def _shape_count_one(text: str, solution: Any, shape: Any) -> float | None:
    if solution is None:
        return None
    lowered = text.lower()
    reward = 0.0
    number = last_number(text)
    gold = str(solution).strip()
    if number is not None and gold.isascii() and gold.isdigit():
        if number.lstrip("0") == gold.lstrip("0"):  # "03" == "3" without int() on huge digit runs
            reward += 1.0
    key = str(shape).strip().lower() if shape is not None else ""
    keywords = SHAPE_KEYWORDS.get(key) or SHAPE_KEYWORDS.get(key + "s", ())
    if any(k in lowered for k in keywords):
        reward += 0.5
    if _REASONING.search(lowered):
        reward += 0.2
    return reward


@_register("shape_count", 0.0, 1.7)
def shape_count_reward(
    completions: Sequence[Any], solution: Sequence[Any], target_shape: Sequence[Any], **kwargs: Any
) -> list[float | None]:
    """The counting tutorial's three-part reward on the whole completion. Range [0, 1.7].

    +1.0 if the last integer equals ``solution`` (leading zeros ignored); +0.5 if a keyword of
    ``target_shape`` ("triangles"/"circles"/"squares", singular accepted) occurs as a substring (e.g.
    circle/blue/circular); +0.2 for a reasoning phrase (therefore, total, the count is, the answer is, or
    the whole word "so" — the tutorial's substring test also fired on "also", "some", "reason"). A ``None``
    solution gives None.
    """
    n = len(completions)
    solutions = _column(solution, "solution", n)
    shapes = _column(target_shape, "target_shape", n)
    return [
        _shape_count_one(completion_text(c), sol, shape)
        for c, sol, shape in zip(completions, solutions, shapes, strict=True)
    ]


# --- math_accuracy --------------------------------------------------------------------------------------

_MATH_TIMEOUT_S = 5


def _timeout() -> int | None:
    """math-verify's timeouts use ``signal.alarm``, which raises off the main thread: disable them there."""
    return _MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse_gold(solution: str, timeout: int | None) -> tuple[Any, ...]:
    from math_verify import parse

    try:
        return tuple(parse(solution, extraction_mode="first_match", parsing_timeout=timeout))
    except Exception:
        return ()


def _parse_prediction(text: str, answer: str | None, timeout: int | None) -> list[Any]:
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    normalization = NormalizationConfig(
        nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
    )
    if answer is None:  # the article's recipe: LaTeX only, anchored (\boxed{}, "final answer is $…$")
        config = LatexExtractionConfig(
            normalization_config=normalization, boxed_match_priority=0, try_extract_without_anchor=False
        )
        return parse(text, extraction_config=[config], extraction_mode="first_match", parsing_timeout=timeout)
    # The <answer> tag is the anchor: accept bare LaTeX ("\frac{1}{2}", "$42$"), then plain expressions ("0.5").
    config = LatexExtractionConfig(
        normalization_config=normalization, boxed_match_priority=0, try_extract_without_anchor=True
    )
    parsed = parse(answer, extraction_config=[config], extraction_mode="first_match", parsing_timeout=timeout)
    if not parsed:
        parsed = parse(
            answer,
            extraction_config=[ExprExtractionConfig()],
            extraction_mode="first_match",
            parsing_timeout=timeout,
        )
    return parsed


def _math_one(text: str, solution: Any) -> float | None:
    if solution is None:
        return None
    gold_text = str(solution)
    answer = extract_answer(text)
    timeout = _timeout()
    gold = _parse_gold(gold_text, timeout)
    if not gold:
        prediction = answer if answer is not None else text
        return float(prediction.strip().casefold() == gold_text.strip().casefold())
    try:
        from math_verify import verify

        predicted = _parse_prediction(text, answer, timeout)
        return float(verify(list(gold), predicted, timeout_seconds=timeout))
    except Exception:
        return None


@_register("math_accuracy", 0.0, 1.0)
def math_accuracy_reward(
    completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any
) -> list[float | None]:
    """The TRL article's math-verify accuracy: 1.0 if equivalent to ``solution``, else 0.0. Range [0, 1].

    The gold is parsed with ``math_verify.parse``. If it parses, the prediction is the ``<answer>`` content
    (LaTeX without an anchor, else a plain expression) or, with no answer tag, the whole text (the article's
    anchored LaTeX config: ``\\boxed{}`` or "final answer is"); the reward is ``verify``'s verdict, or None
    when parsing/verification raises. If the gold does not parse, the answer (or whole text) is compared to
    it as a string after strip and casefold. Off the main thread math-verify's signal-based timeouts are
    disabled (they would raise), so a pathological expression can then take long.
    """
    solutions = _column(solution, "solution", len(completions))
    return [_math_one(completion_text(c), sol) for c, sol in zip(completions, solutions, strict=True)]

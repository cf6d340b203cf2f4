"""Tests for grpo_vqa.rewards: the registry, hand-made completions per reward, and range properties."""

from __future__ import annotations

import threading

import math_verify
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_vqa.rewards import (
    REWARD_RANGES,
    REWARDS,
    UnknownRewardError,
    accuracy_reward,
    format_reward,
    get_reward_funcs,
    iou_reward,
    math_accuracy_reward,
    shape_count_reward,
)

EXTRA = {"prompts": ["p"], "trainer_state": object(), "unknown_column": [1]}


def conv(text):
    """A TRL conversational completion."""
    return [{"role": "assistant", "content": text}]


def parts(text):
    """A conversational completion whose content is a list of text parts."""
    return [
        {"role": "assistant", "content": [{"type": "text", "text": t} for t in text.partition("</think>")]}
    ]


# --- registry -------------------------------------------------------------------------------------------


def test_registry_names_and_ranges():
    assert set(REWARDS) == {
        "accuracy",
        "accuracy_exact",
        "accuracy_yes_no",
        "exam",
        "format",
        "iou",
        "shape_count",
        "math_accuracy",
    }
    assert set(REWARD_RANGES) == set(REWARDS)
    for name, func in REWARDS.items():
        assert func.__name__ == name
    assert REWARD_RANGES["shape_count"] == (0.0, 1.7)
    assert REWARD_RANGES["accuracy"] == (0.0, 1.0)


def test_get_reward_funcs():
    assert get_reward_funcs(["format", "accuracy"]) == [format_reward, accuracy_reward]
    assert get_reward_funcs("iou") == [iou_reward]
    assert get_reward_funcs([]) == []


def test_unknown_reward_error():
    with pytest.raises(KeyError) as info:
        get_reward_funcs(["accuracy", "acuracy\nx"])
    assert isinstance(info.value, UnknownRewardError)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown reward 'acuracy\\nx'")
    for name in REWARDS:
        assert name in message


def test_missing_and_misaligned_columns():
    with pytest.raises(TypeError):
        accuracy_reward(["x"])
    with pytest.raises(ValueError, match="solution"):
        accuracy_reward(["x", "y"], solution=["True"])
    with pytest.raises(ValueError, match="target_shape"):
        shape_count_reward(["x"], solution=["1"], target_shape=[])


# --- accuracy -------------------------------------------------------------------------------------------

OK = "<think>because</think><answer>{}</answer>"


@pytest.mark.parametrize(
    ("completion", "solution", "expected"),
    [
        (OK.format("True"), "True", 1.0),
        (OK.format("yes."), "True", 1.0),
        (OK.format("No"), "False", 1.0),
        (OK.format("FALSE"), "True", 0.0),
        (OK.format("Truth"), "True", 0.0),
        (conv(OK.format("Yes")), "True", 1.0),
        (parts(OK.format("False")), "False", 1.0),
        ("True", "True", 0.0),  # no answer tag
        ("<answer>True", "True", 0.0),  # unclosed
        (None, "True", 0.0),
        ("", "False", 0.0),
        (OK.format("B"), "B", 1.0),
        (OK.format("B."), "B", 1.0),
        (OK.format("(B)"), "B", 1.0),
        (OK.format("B) turn left"), "B", 1.0),
        (OK.format("Bus"), "B", 0.0),
        (OK.format("b"), "B", 0.0),
        (OK.format("C"), "B", 0.0),
        (OK.format("3.0"), "3", 1.0),
        (OK.format("3."), "3", 1.0),
        (OK.format("03"), "3", 1.0),
        (OK.format("3.5"), "3", 0.0),
        (OK.format("three"), "3", 0.0),
        (OK.format(" Red Car "), "red car", 1.0),
        (OK.format("red"), "red car", 0.0),
        (OK.format(""), "cat", 0.0),
        (OK.format("x"), None, None),
        ("<answer>A</answer><answer>B</answer>", "B", 0.0),  # first answer wins
    ],
)
def test_accuracy_cases(completion, solution, expected):
    assert accuracy_reward([completion], solution=[solution], **EXTRA) == [expected]


# --- format ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>r</think>\n<answer>a</answer>", 1.0),
        (conv("<think>r</think><answer>a</answer>"), 1.0),
        (parts("<think>r</think><answer>a</answer>"), 1.0),
        ("<think>r</think> so <answer>a</answer>", 0.0),
        ("<answer>a</answer>", 0.0),
        ("<think>r</think><answer>a", 0.0),
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_format_cases(completion, expected):
    assert format_reward([completion], **EXTRA) == [expected]


# --- iou ------------------------------------------------------------------------------------------------


def test_iou_cases():
    think = "<think>the car 0,0,10,10 car is left of the bus [20, 0, 30, 10] bus</think><answer>A</answer>"
    assert iou_reward([think], boxes=[[[0, 0, 10, 10]]], **EXTRA) == [1.0]
    # Mean over two ground-truth boxes: one exact, one half-covered (IoU 0.5).
    assert iou_reward([think], boxes=[[[0, 0, 10, 10], [20, 0, 30, 20]]]) == [pytest.approx(0.75)]
    assert iou_reward([conv(think)], boxes=[np.array([[0.0, 0.0, 10.0, 10.0]])]) == [1.0]
    assert iou_reward([think], boxes=[[0, 0, 10, 10]]) == [1.0]  # a flat box
    assert iou_reward([think], boxes=[[[50, 50, 60, 60]]]) == [0.0]
    # Boxes outside <think> do not count; no think part -> 0.0.
    assert iou_reward(["<think>none</think><answer>0,0,10,10 car</answer>"], boxes=[[[0, 0, 10, 10]]]) == [
        0.0
    ]
    assert iou_reward(["0,0,10,10 car"], boxes=[[[0, 0, 10, 10]]]) == [0.0]
    assert iou_reward([None], boxes=[[[0, 0, 10, 10]]]) == [0.0]
    # Samples without (valid) boxes get None; so does every sample when the column is absent.
    assert iou_reward([think, think, think], boxes=[[], None, [[5, 5, 1, 1]]]) == [None, None, None]
    assert iou_reward([think, think]) == [None, None]
    assert iou_reward([think], boxes=["0,0,10,10"]) == [None]


# --- shape_count ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "solution", "shape", "expected"),
    [
        ("I see blue circles, so the answer is 3", "3", "circles", 1.7),
        ("I see 3 blue circles. Therefore 4", "3", "circles", 0.7),
        ("3", "3", "circles", 1.0),
        ("03", 3, "circles", 1.0),
        ("there are red triangles: 2", "2", "triangles", 1.5),
        ("green things: 2", "2", "square", 1.5),  # singular shape name accepted
        ("green things: 2", "2", "hexagons", 1.0),  # unknown shape: no keyword bonus
        ("I also count 2", "2", "circles", 1.0),  # "also" is not the word "so"
        ("so 2", "2", "circles", 1.2),
        ("SO, 2", "2", "circles", 1.2),
        ("the total is ٣", "3", "circles", 0.2),  # non-ASCII digit is not a number
        (conv("blue: 5, so 5"), "5", "circles", 1.7),
        (None, "3", "circles", 0.0),
        ("", "0", "circles", 0.0),
        ("circles 3", None, "circles", None),
    ],
)
def test_shape_count_cases(completion, solution, shape, expected):
    result = shape_count_reward([completion], solution=[solution], target_shape=[shape], **EXTRA)
    assert result == [pytest.approx(expected) if expected is not None else None]


# --- math_accuracy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "solution", "expected"),
    [
        ("<think>r</think><answer>\\frac{1}{2}</answer>", "$\\frac{1}{2}$", 1.0),
        ("<answer>0.5</answer>", "$\\frac{1}{2}$", 1.0),
        (conv("<answer>$0.5$</answer>"), "$\\frac{1}{2}$", 1.0),
        ("<answer>\\frac{1}{3}</answer>", "$\\frac{1}{2}$", 0.0),
        ("so the result is \\boxed{4}", "4", 1.0),  # no answer tag: anchored LaTeX in the whole text
        ("the result is 4", "4", 0.0),  # no anchor, as in the article's recipe
        ("<answer>no idea</answer>", "4", 0.0),
        (None, "4", 0.0),
        ("<answer> Cat </answer>", "cat", 1.0),  # gold does not parse: string fallback
        ("<answer>dog</answer>", "cat", 0.0),
        (" CAT ", "cat", 1.0),
        ("<answer>x</answer>", None, None),
    ],
)
def test_math_accuracy_cases(completion, solution, expected):
    assert math_accuracy_reward([completion], solution=[solution], **EXTRA) == [expected]


def test_math_accuracy_verify_error_gives_none(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("verify failed")

    monkeypatch.setattr(math_verify, "verify", boom)
    assert math_accuracy_reward(["<answer>4</answer>"], solution=["4"]) == [None]


def test_math_accuracy_off_main_thread():
    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            math_accuracy_reward(
                ["<answer>0.5</answer>", "<answer>2</answer>"], solution=["$\\frac{1}{2}$"] * 2
            )
        )
    )
    thread.start()
    thread.join(60)
    assert results == [[1.0, 0.0]]


# --- properties -----------------------------------------------------------------------------------------

TAGS = ["<think>", "</think>", "<answer>", "</answer>", "＜answer＞", "\\boxed{", "}", "$", " so ", "blue"]
tag_heavy = st.lists(
    st.one_of(st.sampled_from(TAGS), st.text(alphabet="aB1 ,.[]()\n-", max_size=6)), max_size=16
).map("".join)
texts = st.one_of(st.text(max_size=200), tag_heavy)
completions = st.one_of(st.none(), texts, texts.map(conv), texts.map(parts))
solutions = st.one_of(
    st.sampled_from(["True", "False", "B", "3", "3.5", "$\\frac{1}{2}$", "cat", "", "1e999"]),
    st.text(max_size=12),
)
coordinate = st.one_of(st.integers(-5, 100), st.floats(allow_nan=True, allow_infinity=True))
gt_boxes = st.one_of(st.none(), st.lists(st.lists(coordinate, min_size=0, max_size=5), max_size=3))
FAST = settings(max_examples=150, deadline=None)
SLOW = settings(max_examples=40, deadline=None)


def in_range(name, values, n, allow_none):
    low, high = REWARD_RANGES[name]
    assert len(values) == n
    for v in values:
        if v is None:
            assert allow_none
        else:
            assert isinstance(v, float) and low <= v <= high


@FAST
@given(st.lists(st.tuples(completions, solutions), max_size=4))
def test_accuracy_and_format_in_range(rows):
    cs = [c for c, _ in rows]
    in_range("accuracy", accuracy_reward(cs, solution=[s for _, s in rows], prompts=None), len(rows), False)
    in_range("format", format_reward(cs), len(rows), False)


@FAST
@given(st.lists(st.tuples(completions, gt_boxes), max_size=4))
def test_iou_in_range(rows):
    in_range("iou", iou_reward([c for c, _ in rows], boxes=[b for _, b in rows]), len(rows), True)


@FAST
@given(
    st.lists(
        st.tuples(
            completions,
            st.one_of(solutions, st.integers(0, 20)),
            st.one_of(st.sampled_from(["circles", "triangles", "squares"]), st.text(max_size=8)),
        ),
        max_size=4,
    )
)
def test_shape_count_in_range(rows):
    values = shape_count_reward(
        [c for c, _, _ in rows], solution=[s for _, s, _ in rows], target_shape=[t for _, _, t in rows]
    )
    in_range("shape_count", values, len(rows), False)


@SLOW
@given(st.lists(st.tuples(completions, solutions), max_size=3))
def test_math_accuracy_in_range(rows):
    values = math_accuracy_reward([c for c, _ in rows], solution=[s for _, s in rows])
    in_range("math_accuracy", values, len(rows), True)


HUGE = [
    "<think>" + "blue 1,1,5,5 car so " * 5_000 + "</think><answer>" + "1" * 10_000 + "</answer>",
    "<answer>" * 12_500,
    "\\boxed{" * 15_000,
]


@pytest.mark.parametrize("text", HUGE, ids=range(len(HUGE)))
def test_rewards_on_100k_completions(text):
    assert len(text) >= 100_000
    batch = [text, conv(text)]
    kwargs = {"solution": ["1", "1"], "boxes": [[[1, 1, 5, 5]]] * 2, "target_shape": ["circles"] * 2}
    for name, func in REWARDS.items():
        in_range(name, func(batch, **kwargs), 2, name in ("iou", "math_accuracy"))

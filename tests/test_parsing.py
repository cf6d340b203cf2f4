"""Tests for grpo_vqa.parsing: hand-made cases plus property tests that the parsers never raise."""

from __future__ import annotations

import math
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    reasoning_length,
)

STUDY_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
STUDY_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<Answer>", "＜answer＞", "<answer >", " ", "\n"]
tag_heavy = st.lists(
    st.one_of(st.sampled_from(TAGS), st.text(alphabet="ab1 ,.[]()\n", max_size=6)), max_size=20
).map("".join)
any_text = st.one_of(st.text(), tag_heavy)
PROPS = settings(max_examples=200, deadline=None)

HUGE = [
    "<answer>" * 12_500,
    "<think></think><answer>" * 4_350,
    "<think>" + "x " * 50_000 + "</think><answer>1</answer>",
    "[" + " " * 100_000,
    "1," * 50_000,
    "9" * 100_000,
    "1.1," * 25_000,
    " " * 100_000,
    "1,2,3,4" + " \t" * 50_000 + "]",
    "</think>" + " " * 100_000,
    "[(" * 50_000,
]


# --- completion_text ---------------------------------------------------------------------------------


def test_completion_text_forms():
    assert completion_text("plain") == "plain"
    assert completion_text(None) == ""
    assert completion_text(42) == ""
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    parts = [{"type": "text", "text": "<think>a"}, {"type": "image"}, {"type": "text", "text": "</think>"}]
    assert completion_text([{"role": "assistant", "content": parts}]) == "<think>a</think>"
    assert completion_text({"role": "assistant", "content": "x"}) == "x"
    # Only assistant turns when roles are present; several are joined by newlines.
    msgs = [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "one"},
        {"role": "assistant", "content": "two"},
    ]
    assert completion_text(msgs) == "one\ntwo"
    assert completion_text([{"content": "no role"}]) == "no role"
    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert completion_text([]) == ""


# --- tags ------------------------------------------------------------------------------------------------


def test_extract_answer_and_think():
    text = "<think> look left </think>\n<answer> True </answer>"
    assert extract_answer(text) == "True"
    assert extract_think(text) == "look left"
    assert extract_answer("<answer>a</answer><answer>b</answer>") == "a"  # first wins
    assert extract_answer("<answer>a<answer>b</answer>") == "a<answer>b"  # as the study's regex
    assert extract_answer("<answer></answer>") == ""
    assert extract_answer("<answer>unclosed") is None
    assert extract_answer("</answer>x<answer>") is None
    assert extract_answer("<Answer>x</Answer>") is None
    assert extract_answer("＜answer＞x＜/answer＞") is None
    assert extract_answer("no tags") is None
    assert extract_answer(None) is None
    assert extract_think("<think>\n multi\nline </think>") == "multi\nline"


@PROPS
@given(any_text)
def test_extract_answer_matches_study_regex(text):
    m = STUDY_ANSWER.search(text)
    assert extract_answer(text) == (m.group(1).strip() if m else None)


def test_format_ok_cases():
    assert format_ok("<think>r</think><answer>a</answer>")
    assert format_ok("  \n<think>r\n</think>\n\n<answer>a</answer>\n")
    assert format_ok("<think></think><answer></answer>")
    assert not format_ok("<think>r</think> text <answer>a</answer>")
    assert not format_ok("prefix <think>r</think><answer>a</answer>")
    assert not format_ok("<think>r</think><answer>a</answer> suffix")
    assert not format_ok("<answer>a</answer>")
    assert not format_ok("<think>r</think>")
    assert not format_ok("<think>r<answer>a</answer>")
    assert not format_ok("<think></answer>")
    assert not format_ok(None)
    assert not format_ok("")


@PROPS
@given(any_text)
def test_format_ok_equals_study_regex_on_stripped_text(text):
    assert format_ok(text) == bool(STUDY_FORMAT.fullmatch(text.strip()))


# --- normalize_bool -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("True", "True"),
        ("true.", "True"),
        (" YES ", "True"),
        ("Yes.", "True"),
        ("false", "False"),
        ("No", "False"),
        ("NO..", "False"),
        ("maybe", None),
        ("Not", None),
        ("yes no", None),
        ("", None),
        (None, None),
        ("ｔｒｕｅ", None),
        ("yeſ", None),  # long s casefolds to "s": look-alikes are rejected
    ],
)
def test_normalize_bool(raw, expected):
    assert normalize_bool(raw) == expected


# --- boxes ------------------------------------------------------------------------------------------------


def test_parse_boxes_convention():
    text = "the car at 12,30,50,80 car is left of [1.5, 2, 30.25, 40] truck. Also (5,5,10,10)."
    assert parse_boxes(text) == [
        (12.0, 30.0, 50.0, 80.0, "car"),
        (1.5, 2.0, 30.25, 40.0, "truck"),
        (5.0, 5.0, 10.0, 10.0, ""),
    ]
    assert parse_boxes("box 1 , 2 , 3 , 4 bus") == [(1.0, 2.0, 3.0, 4.0, "bus")]
    assert parse_boxes("ends 1,2,3,80.") == [(1.0, 2.0, 3.0, 80.0, "")]


@pytest.mark.parametrize(
    "text",
    [
        "10,10,5,20 car",  # x2 <= x1
        "0,20,10,20 car",  # y2 <= y1
        "1,2,3,4,5 car",  # five numbers
        "1,2,3 car",
        "x1,2,3,4 car",
        "1,2,3,4.5.6 car",
        "-1,2,3,4 car",  # "-1" is not a coordinate; what is left is "1,2,3,4"
        "１,２,３,４ car",
        "9" * 400 + ",1,2,3 car",
        "",
    ],
)
def test_parse_boxes_rejects_malformed(text):
    boxes = parse_boxes(text)
    if text.startswith("-1"):
        assert boxes == [(1.0, 2.0, 3.0, 4.0, "car")]
    else:
        assert boxes == []


def test_box_iou_values():
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (1, 1, 2, 2)) == 0.0  # touching corners
    assert box_iou((0, 0, 4, 4, "car"), [1, 1, 3, 3]) == pytest.approx(0.25)
    assert box_iou((0, 0, 1e300, 1e300), (0, 0, 1e300, 5e299)) == pytest.approx(0.5)
    assert box_iou((0, 0, 1e-300, 1e-300), (0, 0, 1e-300, 1e-300)) == 1.0
    assert box_iou((2, 2, 0, 0), (0, 0, 2, 2)) == 0.0
    assert box_iou((0, 0, math.inf, 1), (0, 0, 1, 1)) == 0.0
    assert box_iou((0, 0, math.nan, 1), (0, 0, 1, 1)) == 0.0
    assert box_iou((0, 0, 1), (0, 0, 1, 1)) == 0.0
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
    assert box_iou("0,0,1,1", "0,0,1,1") == 0.0
    assert box_coords([1, "2", 3.5, 4]) == (1.0, 2.0, 3.5, 4.0)


coord = st.floats(allow_nan=True, allow_infinity=True)
box_like = st.one_of(st.tuples(coord, coord, coord, coord), st.lists(coord, max_size=6), st.none(), st.text())


@PROPS
@given(box_like, box_like)
def test_box_iou_in_unit_interval_and_symmetric(a, b):
    v = box_iou(a, b)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(box_iou(b, a))


finite = st.floats(min_value=-1e6, max_value=1e6)


@PROPS
@given(finite, finite, st.floats(min_value=1e-3, max_value=1e6), st.floats(min_value=1e-3, max_value=1e6))
def test_box_iou_of_a_box_with_itself_is_one(x, y, w, h):
    assert box_iou((x, y, x + w, y + h), (x, y, x + w, y + h)) == pytest.approx(1.0)


@PROPS
@given(any_text)
def test_parse_boxes_only_valid_boxes(text):
    for x1, y1, x2, y2, label in parse_boxes(text):
        assert 0 <= x1 < x2 and 0 <= y1 < y2
        assert all(math.isfinite(v) for v in (x1, y1, x2, y2))
        assert isinstance(label, str)


# --- numbers and reasoning length ---------------------------------------------------------------------


def test_last_number():
    assert last_number("I see 3 circles and 12 squares, so 4") == "4"
    assert last_number("total: 3.5") == "5"  # as the tutorial's \d+
    assert last_number("answer 007") == "007"
    assert last_number("٣ circles") is None  # Arabic-Indic digit
    assert last_number("none") is None
    assert last_number(None) is None


def test_reasoning_length():
    assert reasoning_length("<think> one two\nthree </think><answer>x</answer>") == 3
    assert reasoning_length("<think></think>") == 0
    assert reasoning_length("one two") == 0
    assert reasoning_length(None) == 0


@PROPS
@given(any_text)
def test_parsers_never_raise_and_return_documented_types(text):
    assert isinstance(completion_text(text), str)
    for value in (extract_answer(text), extract_think(text)):
        assert value is None or (isinstance(value, str) and value == value.strip())
    assert isinstance(format_ok(text), bool)
    assert normalize_bool(text) in (None, "True", "False")
    n = last_number(text)
    assert n is None or (n.isascii() and n.isdigit())
    assert reasoning_length(text) >= 0


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), st.integers(), any_text, st.lists(st.dictionaries(st.text(), any_text))))
def test_completion_text_never_raises(c):
    assert isinstance(completion_text(c), str)


@pytest.mark.parametrize("text", HUGE, ids=range(len(HUGE)))
def test_parsers_on_100k_inputs_are_fast(text):
    start = time.perf_counter()
    completion_text(text)
    extract_answer(text)
    extract_think(text)
    format_ok(text)
    normalize_bool(text)
    parse_boxes(text)
    last_number(text)
    reasoning_length(text)
    assert time.perf_counter() - start < 1.0


def test_format_ok_100k_valid():
    text = "<think>" + "why " * 25_000 + "</think><answer>yes</answer>"
    assert len(text) > 100_000
    assert format_ok(text)
    assert reasoning_length(text) == 25_000

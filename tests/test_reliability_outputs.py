"""Model outputs: every registered reward and every public parser gets hostile completions (empty, None,
100k characters, unbalanced and nested tags, several answers, unicode look-alikes, non-strings) and
hypothesis-generated ones. They never raise, always return a value of their documented type and range (or
None), and finish within a generous wall-clock bound (a watchdog signal, not a timing assertion: it only
catches catastrophic regex backtracking, which takes minutes to hours on 100k characters)."""

from __future__ import annotations

import math
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from reliability_helpers import case  # noqa: E402

from grpo_vqa import parsing  # noqa: E402
from grpo_vqa.rewards import REWARD_RANGES, REWARDS  # noqa: E402

BOUND_S = 30  # per call; linear-time code takes milliseconds on 100k characters

HOSTILE = {
    "empty": "",
    "None": None,
    "huge 100k plain": "x" * 100_000,
    "huge 100k of <think>": "<think>" * 15_000,
    "huge 100k of <answer>": "<answer>" * 13_000,
    "huge 100k unclosed tags": "<think>" + "a</answer><answer>" * 5_000,
    "huge numbers for the box regex": "<think>" + "1.5, " * 25_000 + "</think><answer>1</answer>",
    "huge box-like run": "(" + "1,2,3,4 " * 12_500,
    "huge digits": "<answer>" + "9" * 100_000 + "</answer>",
    "huge \\boxed": "\\boxed{" * 14_000,
    "huge whitespace then tags": " " * 100_000 + "<think>a</think><answer>True</answer>",
    "unbalanced": "<think>a<answer>True</think>",
    "closing before opening": "</answer>True<answer>",
    "nested": "<think><think>x</think></think><answer><answer>True</answer></answer>",
    "several answers": "<think>x</think><answer>True</answer><answer>False</answer>",
    "full-width look-alike tags": "＜think＞x＜/think＞＜answer＞True＜/answer＞",
    "cyrillic look-alike True": "<think>x</think><answer>Тrue</answer>",
    "full-width digits": "<think>３ circles</think><answer>３</answer>",
    "zero-width joiner in tag": "<think>x</think><ans\u200dwer>True</answer>",
    "NUL and surrogate-free control chars": "<think>\x00\x1b[31m</think><answer>\x00True</answer>",
    "message list without content": [{"role": "assistant", "content": None}],
    "message with non-text parts": {"content": [{"type": "image"}, {"type": "text", "text": None}]},
    "integer": 12345,
    "bytes": b"<answer>True</answer>",
    "float nan": float("nan"),
}

SOLUTIONS = [None, "True", "False", "B", "3", "\\frac{1}{2}", "", "x" * 1000]
BOXES = [
    None,
    [],
    [[0, 0, 10, 10]],
    [0, 0, 10, 10],
    [[float("nan"), 0, 1, 1]],
    "0,0,1,1",
    [[1e308, 0, 1e309, 1]],
]
SHAPES = [None, "circles", "circle", "", "☃"]


class Overrun(Exception):
    pass


@contextmanager
def bounded(seconds: float = BOUND_S):
    """Raise :class:`Overrun` in the main thread if the block runs longer than ``seconds``.

    Uses SIGUSR1 from a timer thread (math-verify uses SIGALRM for its own timeouts)."""

    def on_signal(signum, frame):
        raise Overrun(f"still running after {seconds} s (catastrophic backtracking?)")

    old = signal.signal(signal.SIGUSR1, on_signal)
    main = threading.main_thread().ident
    timer = threading.Timer(seconds, lambda: signal.pthread_kill(main, signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old)


def columns(n: int, i: int) -> dict:
    """Dataset columns for ``n`` completions, varied by ``i``."""
    return {
        "solution": [SOLUTIONS[(i + k) % len(SOLUTIONS)] for k in range(n)],
        "boxes": [BOXES[(i + k) % len(BOXES)] for k in range(n)],
        "target_shape": [SHAPES[(i + k) % len(SHAPES)] for k in range(n)],
        "prompts": ["p"] * n,
    }


def check_rewards(name: str, values, n: int) -> None:
    low, high = REWARD_RANGES[name]
    assert isinstance(values, list) and len(values) == n, values
    for v in values:
        assert v is None or (isinstance(v, float) and not math.isnan(v) and low <= v <= high), (name, v)


def test_every_reward_has_a_documented_range():
    assert set(REWARDS) == set(REWARD_RANGES) and len(REWARDS) >= 5
    for name, (low, high) in REWARD_RANGES.items():
        assert low < high, name
        assert f"{high:g}" in REWARDS[name].__doc__ or f"{high}" in REWARDS[name].__doc__, name


@pytest.mark.parametrize("name", sorted(REWARDS))
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_reward_survives_hostile_completion(name, kind, record_property):
    completions = [HOSTILE[kind]] * len(SOLUTIONS)
    with bounded():
        values = REWARDS[name](completions, **columns(len(completions), 0))
    check_rewards(name, values, len(completions))
    if name == "accuracy" and kind in ("full-width look-alike tags", "cyrillic look-alike True"):
        assert values[1] == 0.0, values  # a look-alike "True" is not the answer True
    if name == "accuracy" and kind == "several answers":
        assert values[1] == 1.0 and values[2] == 0.0, values  # the first answer counts, as in the study
    case(
        record_property,
        f"reward {name}: completion {kind}",
        f"no exception; each value None or in [{REWARD_RANGES[name][0]:g}, {REWARD_RANGES[name][1]:g}]",
        "values " + ", ".join(sorted({"None" if v is None else f"{v:g}" for v in values})),
        group=f"reward {name}: hostile completions",
    )


# Expected type/range of each public parser's result; a parser added to parsing.__all__ without an entry
# here fails test_every_parser_is_checked.
PARSERS = {
    "completion_text": (lambda x: parsing.completion_text(x), lambda r: isinstance(r, str)),
    "extract_answer": (parsing.extract_answer, lambda r: r is None or isinstance(r, str)),
    "extract_think": (parsing.extract_think, lambda r: r is None or isinstance(r, str)),
    "format_ok": (parsing.format_ok, lambda r: isinstance(r, bool)),
    "normalize_bool": (parsing.normalize_bool, lambda r: r in (None, "True", "False")),
    "parse_boxes": (
        parsing.parse_boxes,
        lambda r: (
            isinstance(r, list)
            and all(b[0] < b[2] and b[1] < b[3] and all(map(math.isfinite, b[:4])) for b in r)
        ),
    ),
    "box_coords": (parsing.box_coords, lambda r: r is None or (len(r) == 4 and all(map(math.isfinite, r)))),
    "box_iou": (
        lambda x: parsing.box_iou(x, [0, 0, 5, 5]),
        lambda r: isinstance(r, float) and 0.0 <= r <= 1.0,
    ),
    "last_number": (
        parsing.last_number,
        lambda r: r is None or (isinstance(r, str) and r.isascii() and r.isdigit()),
    ),
    "reasoning_length": (parsing.reasoning_length, lambda r: isinstance(r, int) and r >= 0),
}


def test_every_parser_is_checked():
    public = {n for n in parsing.__all__ if callable(getattr(parsing, n)) and n != "Box"}
    assert public == set(PARSERS)


@pytest.mark.parametrize("name", sorted(PARSERS))
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_parser_survives_hostile_completion(name, kind, record_property):
    func, ok = PARSERS[name]
    with bounded():
        result = func(HOSTILE[kind])
    assert ok(result), (name, kind, repr(result)[:200])
    if kind == "nested" and name == "extract_answer":
        assert result == "<answer>True"  # the study's first-match, non-greedy semantics
    case(
        record_property,
        f"parser {name}: completion {kind}",
        "no exception; documented type/range",
        f"{type(result).__name__}",
        group=f"parser {name}: hostile completions",
    )


TAGS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "＜answer＞",
    " ",
    "\n",
    "True",
    "B",
    "3",
    "1,2,3,4",
    "(",
    "]",
]
texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(TAGS) | st.text(max_size=5), max_size=40).map("".join),
)
completion = st.one_of(
    texts,
    st.none(),
    st.integers(),
    st.binary(max_size=20),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["assistant", "user"]), "content": st.one_of(texts, st.none())}
        ),
        max_size=3,
    ),
)


@pytest.mark.parametrize("name", sorted(REWARDS))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(completion, min_size=1, max_size=4), shift=st.integers(0, 50))
def test_reward_property_never_raises_and_stays_in_range(name, batch, shift, record_property):
    with bounded():
        values = REWARDS[name](batch, **columns(len(batch), shift))
    check_rewards(name, values, len(batch))
    low, high = REWARD_RANGES[name]
    case(
        record_property,
        f"reward {name}: 60 hypothesis batches (text, tag soup, None, ints, bytes, message lists)",
        f"no exception; each value None or in [{low:g}, {high:g}]",
        "all in range",
    )


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=completion)
def test_parser_property_never_raises_and_keeps_its_type(name, x, record_property):
    func, ok = PARSERS[name]
    with bounded():
        assert ok(func(x))
    case(
        record_property,
        f"parser {name}: 150 hypothesis inputs (text, tag soup, None, ints, bytes, message lists)",
        "no exception; documented type/range",
        "all of the documented type",
    )

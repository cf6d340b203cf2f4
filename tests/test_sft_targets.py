"""SFT completions by ``sft.target`` (grpo_vqa.training.common.target_text)."""

from __future__ import annotations

import pytest

from grpo_vqa.training.common import target_text

REASONING = (
    "Left to right: the red triangle, the blue circle. So the red triangle is left of the blue circle."
)


def test_think_answer_and_answer():
    assert target_text(REASONING, "True") == f"<think>{REASONING}</think><answer>True</answer>"
    assert target_text(REASONING, "True", "answer") == "True"


def test_mixed_splits_the_items_by_id_about_evenly_and_stably():
    ids = [f"vsr_synth-train-{i:06d}" for i in range(400)]
    texts = [target_text(REASONING, "False", "mixed", i) for i in ids]
    tagged = [t == f"<think>{REASONING}</think><answer>False</answer>" for t in texts]
    plain = [t == f"{REASONING} Answer: False" for t in texts]
    assert all(a != b for a, b in zip(tagged, plain, strict=True))  # each item one of the two formats
    assert 160 <= sum(tagged) <= 240
    # the same id gets the same format on every call (a resumed or repeated SFT trains on the same targets)
    assert texts == [target_text(REASONING, "False", "mixed", i) for i in ids]


def test_partial_tags_keeps_the_think_tags_and_drops_the_answer_tags_on_the_mixed_half():
    """The reasoning is tagged on every item (the same context before the answer); the answer is tagged on exactly
    the items ``mixed`` tags, and follows ``Answer:`` on the rest."""
    ids = [f"vsr_synth-train-{i:06d}" for i in range(400)]
    texts = [target_text(REASONING, "True", "partial_tags", i) for i in ids]
    assert all(t.startswith(f"<think>{REASONING}</think>") for t in texts)
    tagged = [t.endswith("</think><answer>True</answer>") for t in texts]
    plain = [t == f"<think>{REASONING}</think>Answer: True" for t in texts]
    assert all(a != b for a, b in zip(tagged, plain, strict=True))
    assert 160 <= sum(tagged) <= 240
    mixed_tagged = [target_text(REASONING, "True", "mixed", i).startswith("<think>") for i in ids]
    assert tagged == mixed_tagged


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="SFT target 'tagged'"):
        target_text(REASONING, "True", "tagged")

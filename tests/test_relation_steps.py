"""grpo_vqa.evaluation.relation_steps: the three steps of the relation reasoning, read from responses."""

from __future__ import annotations

import json

import pytest

from grpo_vqa.evaluation.relation_steps import relation_steps

# subject (red triangle) on the left and high; object (blue circle) on the right and low
BOXES = [[0.0, 0.0, 20.0, 20.0], [80.0, 80.0, 100.0, 100.0]]


def _row(relation: str, response: str, boxes=BOXES) -> dict:
    return {
        "relation": relation,
        "subj": "red triangle",
        "obj": "blue circle",
        "boxes": json.dumps(boxes),
        "response": f"<think>{response}</think><answer>True</answer>",
    }


def test_a_right_chain_counts_every_step():
    rows = [
        _row(
            "left of",
            "Left to right: the red triangle, the blue circle. So the red triangle is left of the blue circle.",
        ),
        _row(
            "below",
            "Bottom to top: the blue circle, the red triangle. So the red triangle is not below the blue circle.",
        ),
    ]
    assert relation_steps(rows) == {
        "rows": 2,
        "parsed": 2,
        "header_matches_claim": 1.0,
        "listing_right": 1.0,
        "verdict_follows_listing": 1.0,
    }


def test_each_wrong_step_is_told_apart():
    rows = [
        # wrong header for the claim, but a right listing in its own direction, verdict follows it
        _row(
            "above",
            "Left to right: the red triangle, the blue circle. So the red triangle is above the blue circle.",
        ),
        # right header, wrong listing, verdict follows the (wrong) listing
        _row(
            "right of",
            "Right to left: the red triangle, the blue circle. So the red triangle is right of the blue circle.",
        ),
        # right header and listing, verdict against the listing
        _row(
            "left of",
            "Left to right: the red triangle, the blue circle. So the red triangle is not left of the blue circle.",
        ),
        # no reasoning chain at all
        _row("left of", "The triangle is red."),
        # not a directional relation: not counted
        _row("next to", "The shapes are next to each other."),
    ]
    out = relation_steps(rows)
    assert out["rows"] == 4 and out["parsed"] == 3
    assert out["header_matches_claim"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["listing_right"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["verdict_follows_listing"] == pytest.approx(2 / 3, abs=1e-4)


def test_listing_uses_the_box_centres_along_the_header_axis():
    # swap the boxes: now the object is left and high, so the same listing is wrong
    swapped = [BOXES[1], BOXES[0]]
    text = "Top to bottom: the red triangle, the blue circle. So the red triangle is above the blue circle."
    assert relation_steps([_row("above", text)])["listing_right"] == 1.0
    assert relation_steps([_row("above", text, swapped)])["listing_right"] == 0.0


def test_a_row_with_one_box_names_the_row():
    with pytest.raises(ValueError, match=r"row 0 .*two boxes"):
        relation_steps(
            [
                _row(
                    "left of",
                    "Left to right: the red triangle, the blue circle. So the red triangle is left of",
                    [BOXES[0]],
                )
            ]
        )

"""Which step of the synthetic relation reasoning a model gets wrong.

The embedded relation task's reasoning has three steps: a header naming the claim's direction ("Left to right"
for "left of"), the two objects listed in that direction, and the verdict ("So the red triangle is (not) left of
the blue circle."), which holds exactly when the claim's subject is listed first. :func:`relation_steps` reads
the three from generated responses (``generated_responses_<split>.json`` rows) and the scene's boxes, so a test
accuracy at chance can be told apart: no header, a wrong listing (the model does not see the order), or a
verdict that does not follow the model's own listing (it does not compare).
"""

from __future__ import annotations

import json
import re

from ..data.relations import AXIS

__all__ = ["relation_steps"]

_STEPS = re.compile(
    r"(?P<header>"
    + "|".join(h for h, _, _ in AXIS.values())
    + r"): the (?P<first>.+?), the (?P<second>.+?)\. "
    r"So the (?P<subj>.+?) is (?P<neg>not )?"
)
#: header -> (box coordinates giving the axis, descending)
_AXES = {header: ((0, 2) if coord == "cx" else (1, 3), reverse) for header, coord, reverse in AXIS.values()}


def _first_listed(header: str, subj: str, obj: str, boxes: list) -> str:
    (lo, hi), reverse = _AXES[header]
    centre_s, centre_o = ((b[lo] + b[hi]) / 2 for b in boxes[:2])
    return subj if (centre_s < centre_o) != reverse else obj


def relation_steps(rows: list[dict]) -> dict:
    """Shares of directional relation rows whose response has the claim's header, lists the objects right (in
    the direction of the header it wrote), and gives a verdict that follows its own listing.

    Rows need ``response``, ``relation``, ``subj``, ``obj`` and ``boxes`` (subject's box first, as the synthetic
    datasets write them; a JSON string or a list). ``parsed`` counts the responses whose reasoning has the three
    steps; the other shares are over those.
    """
    n = parsed = header_ok = listing_ok = follows = 0
    for i, row in enumerate(rows):
        if row["relation"] not in AXIS:
            continue
        n += 1
        m = _STEPS.search(str(row["response"]))
        if not m:
            continue
        boxes = json.loads(row["boxes"]) if isinstance(row["boxes"], str) else row["boxes"]
        if len(boxes) < 2:
            raise ValueError(f"row {i} ({row.get('id', '?')}): a relation row needs two boxes, got {boxes!r}")
        parsed += 1
        header_ok += m["header"] == AXIS[row["relation"]][0]
        listing_ok += m["first"] == _first_listed(m["header"], row["subj"], row["obj"], boxes)
        follows += (m["first"] == row["subj"]) == (m["neg"] is None)
    share = (lambda k: round(k / parsed, 4)) if parsed else (lambda k: None)
    return {
        "rows": n,
        "parsed": parsed,
        "header_matches_claim": share(header_ok),
        "listing_right": share(listing_ok),
        "verdict_follows_listing": share(follows),
    }

"""The warm start's text comparisons (``models.<name>.pretrain.compare_share``)."""

from __future__ import annotations

import hashlib
import json
import re

from grpo_vqa.data.pretrain import default_warm_start, make_pretrain_items, scene_mix
from grpo_vqa.data.relations import AXIS

QUESTION = re.compile(
    r"^Is the following statement true: The (?P<subj>[a-z ]+?) is (?P<rel>left of|right of|above|below) "
    r"the (?P<obj>[a-z ]+?)\. (?P<header>[A-Za-z ]+): the (?P<first>[a-z ]+?), the (?P<second>[a-z ]+?)\.$"
)

#: sha256 of the JSON list of (problem, text) of make_pretrain_items(300, seed 7) with the schema's default mix, as
#: drawn before compare_share existed (commit 915eddb)
PRE_COMPARE_DIGEST = "1aa640d95ad489015e2e77264f8dc2d75d45c7410614a9d0df2da18381065290"


def _items(n: int, seed: int, compare_share: float, with_images: bool = False) -> list[dict]:
    pretrain, size = default_warm_start()
    mix = scene_mix(pretrain) | {"compare_share": compare_share}
    return make_pretrain_items(n, seed, size=size, with_images=with_images, **mix)


def test_no_comparisons_draws_the_items_of_the_mix_without_them():
    """compare_share 0 draws nothing extra: every existing warm start (and model) stays as it was."""
    pretrain, size = default_warm_start()
    assert pretrain["compare_share"] == 0.0
    items = _items(300, 7, 0.0)
    assert not any(it["problem"].startswith("Is the following statement") for it in items)
    # the (problem, text) pairs are those the code drew before compare_share existed (commit 915eddb,
    # make_pretrain_items(300, 7, ...) of the schema's default mix)
    pairs = json.dumps([[it["problem"], it["text"]] for it in items]).encode()
    assert hashlib.sha256(pairs).hexdigest() == PRE_COMPARE_DIGEST


def test_comparisons_answer_the_claim_from_the_listed_order():
    items = _items(400, 11, 0.5)
    comparisons = [it for it in items if it["problem"].startswith("Is the following statement")]
    assert 150 <= len(comparisons) <= 250  # about half
    verdicts = {"true": 0, "false": 0}
    for it in comparisons:
        m = QUESTION.match(it["problem"])
        assert m, it["problem"]
        # the listing runs in the claim's order, so the claim holds exactly when its subject comes first
        assert m["header"] == AXIS[m["rel"]][0]
        assert {m["first"], m["second"]} == {m["subj"], m["obj"]}
        holds = m["first"] == m["subj"]
        negation = "" if holds else "not "
        assert it["text"] == (
            f"So the {m['subj']} is {negation}{m['rel']} the {m['obj']}. "
            f"The statement is {'true' if holds else 'false'}."
        )
        verdicts["true" if holds else "false"] += 1
    assert min(verdicts.values()) > 0.35 * len(comparisons)  # both verdicts, about evenly

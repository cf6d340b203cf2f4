"""Scene generator, relation/counting/grounding/math items, dataset building and image checks."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from grpo_vqa.config import entry_defaults
from grpo_vqa.data.build import build_dataset, load_split, split_seed
from grpo_vqa.data.images import DataError, load_image
from grpo_vqa.data.relations import (
    BIAS_POSITIVE,
    DIRECTIONAL,
    OPPOSITE,
    label_plan,
    make_relation_items,
    seen_relation,
)
from grpo_vqa.data.scenes import SceneObject
from grpo_vqa.data.tasks import make_counting_items, make_grounding_items, make_math_items
from grpo_vqa.parsing import parse_boxes
from grpo_vqa.rewards import get_reward_funcs

REL_CFG = {"kind": "relation", "source": "synthetic", "relations": list(DIRECTIONAL), "image_size": 112}


def test_seen_relation_follows_geometry():
    a, b = SceneObject("circle", "red", 20, 56, 8), SceneObject("square", "blue", 90, 60, 8)
    assert seen_relation(a, b, DIRECTIONAL, 112) == "left of"
    assert seen_relation(b, a, DIRECTIONAL, 112) == "right of"
    top, bottom = SceneObject("circle", "red", 56, 15, 8), SceneObject("square", "blue", 58, 95, 8)
    assert seen_relation(top, bottom, DIRECTIONAL, 112) == "above"
    diagonal = SceneObject("square", "blue", 80, 80, 8)
    assert seen_relation(SceneObject("circle", "red", 30, 30, 8), diagonal, DIRECTIONAL, 112) is None


@pytest.mark.parametrize("n", [1, 33, 200, 1001])
@pytest.mark.parametrize("bias", [0.5, 0.8, 0.95])
def test_label_plan_is_balanced_and_biased(n, bias):
    plan = label_plan(list(DIRECTIONAL), n, bias, random.Random(0))
    assert len(plan) == n
    assert abs(sum(lab for _, lab in plan) - n / 2) <= 1
    if n >= 200:
        pos = [lab for rel, lab in plan if rel in BIAS_POSITIVE]
        assert abs(sum(pos) / len(pos) - bias) < 0.02


def test_relation_items_are_consistent_with_their_scenes():
    items = make_relation_items(200, seed=3, relations=list(DIRECTIONAL))
    for it in items:
        subj, obj = it["_objects"]
        seen = seen_relation(subj, obj, DIRECTIONAL, 112)
        assert (seen == it["relation"]) == (it["label"] == 1)
        assert it["solution"] == ("True" if it["label"] else "False")
        assert it["problem"] == f"Is the following statement true: {it['caption']}"
        rel, holds = it["relation"], it["label"] == 1
        assert f"So the {it['subj']} is {'' if holds else 'not '}{rel} the {it['obj']}." in it["reasoning"]
        # listed in the order the claim implies: the subject comes first exactly when the claim holds
        coord = (lambda o: o.cx) if rel in ("left of", "right of") else (lambda o: o.cy)
        order = sorted([subj, obj], key=coord, reverse=rel in ("right of", "below"))
        header = {"left of": "Left to right", "right of": "Right to left", "above": "Top to bottom"}.get(
            rel, "Bottom to top"
        )
        assert it["reasoning"].split(". So")[0] == f"{header}: the {order[0].name}, the {order[1].name}"
        assert (order[0] is subj) == holds
        assert seen in (rel, OPPOSITE[rel])
        assert it["reasoning"].endswith("The statement is true." if holds else "The statement is false.")


def test_apart_layout_puts_the_pair_in_opposite_thirds_along_the_axis():
    items = make_relation_items(120, seed=5, relations=list(DIRECTIONAL), tied_colors=True, layout="apart")
    for it in items:
        subj, obj = it["_objects"]
        seen = seen_relation(subj, obj, DIRECTIONAL, 112)
        assert (seen == it["relation"]) == (it["label"] == 1)
        horizontal = it["relation"] in ("left of", "right of")
        along = sorted([subj.cx, obj.cx] if horizontal else [subj.cy, obj.cy])
        assert along[0] < 112 / 3 and along[1] > 2 * 112 / 3
        for o in (subj, obj):
            assert o.r <= 112 / 6 and o.r < o.cx < 112 - o.r and o.r < o.cy < 112 - o.r
    with pytest.raises(ValueError, match="layout"):
        make_relation_items(2, seed=5, relations=["above"], layout="spiral")


def test_relation_items_are_seeded():
    a = make_relation_items(50, seed=7, relations=list(DIRECTIONAL))
    b = make_relation_items(50, seed=7, relations=list(DIRECTIONAL))
    c = make_relation_items(50, seed=8, relations=list(DIRECTIONAL))
    strip = lambda items: [{k: v for k, v in it.items() if k != "_objects"} for it in items]  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_build_dataset_writes_splits_images_and_manifest(tmp_path):
    cfg = REL_CFG | {"splits": {"train": 40, "test": 20}, "bias": 0.95}
    manifest = build_dataset("rel", cfg, tmp_path / "rel", seed=1)
    assert manifest["splits"]["train"]["n"] == 40
    assert json.loads((tmp_path / "rel" / "manifest.json").read_text()) == manifest
    test = load_split(tmp_path / "rel", "test")
    assert set(test["solution"]) == {"True", "False"}
    assert test["solution"].count("True") == 10  # the test split is always unbiased and balanced
    img = Image.open(test[0]["image_path"])
    assert img.size == (112, 112)
    for split in ("train", "test"):
        again = tmp_path / f"again-{split}"
        build_dataset("rel", cfg, again, seed=1)
        assert load_split(again, split)["caption"] == load_split(tmp_path / "rel", split)["caption"]
    assert split_seed(1, "rel", "train") != split_seed(1, "rel", "test")


def test_every_relation_train_set_carries_its_measured_bias(tmp_path):
    """The train manifest's relation-only probe (the bias table's measured level): near chance on an unbiased
    set, far above it on a strongly biased one; no probe on the other splits."""
    levels = {}
    for bias in (0.5, 0.95):
        cfg = REL_CFG | {"splits": {"train": 200, "test": 10}, "bias": bias}
        manifest = build_dataset("rel", cfg, tmp_path / f"b{bias}", seed=1)
        assert "bias_probe" not in manifest["splits"]["test"]
        levels[bias] = manifest["splits"]["train"]["bias_probe"]["accuracy"]
    assert levels[0.5] < 65.0 < 85.0 < levels[0.95]


def test_counting_items_answer_matches_scene_and_reward():
    items = make_counting_items(
        entry_defaults("datasets", {"kind": "counting", "max_count": 7}), "test", 30, 5, "count"
    )
    (shape_count,) = get_reward_funcs(["shape_count"])
    for it in items:
        shapes = [o.shape for o in it["_objects"]]
        assert shapes.count(it["target_shape"][:-1]) == int(it["solution"])
        target = f"<think>{it['reasoning']}</think><answer>{it['solution']}</answer>"
        assert shape_count([target], solution=[it["solution"]], target_shape=[it["target_shape"]]) == [1.7]


def test_grounding_reasoning_boxes_score_full_iou():
    items = make_grounding_items(entry_defaults("datasets", {"kind": "grounding"}), "train", 20, 2, "ground")
    (iou,) = get_reward_funcs(["iou"])
    for it in items:
        assert it["solution"] in "ABC"
        assert len(parse_boxes(it["reasoning"])) == 2
        target = f"<think>{it['reasoning']}</think><answer>{it['solution']}</answer>"
        assert iou([target], boxes=[it["boxes"]]) == [pytest.approx(1.0)]


def test_math_items_verify_against_their_own_reasoning():
    items = make_math_items(entry_defaults("datasets", {"kind": "math"}), "train", 20, 4, "math")
    (acc,) = get_reward_funcs(["math_accuracy"])
    for it in items:
        answer = it["reasoning"].rsplit("= ", 1)[1].rstrip(".")
        assert acc([f"<answer>${answer}$</answer>"], solution=[it["solution"]]) == [1.0]


def test_load_image_names_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.png: image file not found"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="corrupt.png: cannot read image"):
        load_image(bad)
    big = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(big)
    with pytest.raises(DataError, match="big.png: image is 400x300"):
        load_image(big, max_pixels=1000)
    assert load_image(big).size == (400, 300)

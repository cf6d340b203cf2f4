"""Evaluation's response cache (grpo_vqa.evaluation.generate.evaluate_split) reuses an item only for the same
input: a dataset regenerated with the same ids but other prompts or images is generated again."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402

import datasets  # noqa: E402
from PIL import Image  # noqa: E402

from grpo_vqa.evaluation import generate  # noqa: E402


def dataset(tmp_path, problems: list[str]) -> datasets.Dataset:
    rows = []
    for i, problem in enumerate(problems):
        path = tmp_path / f"img{i}.png"
        if not path.exists():  # the images stay as they are unless a test replaces them
            Image.new("RGB", (16, 16), "white").save(path)
        rows.append(
            {
                "id": f"d-{i}",
                "problem": problem,
                "solution": "True",
                "task": "relation",
                "image_path": str(path),
            }
        )
    return datasets.Dataset.from_list(rows)


def run(monkeypatch, ds, cache, calls: list, blank: bool = False) -> list[dict]:
    def fake_generate(model, processor, images, problems, system_prompt, max_new_tokens):
        calls.extend(problems)
        return [f"<think>{p}</think><answer>True</answer>" for p in problems]

    monkeypatch.setattr(generate, "generate_batch", fake_generate)
    monkeypatch.setattr(generate, "strip_special", lambda text, processor: text)
    return generate.evaluate_split(None, None, ds, cache, None, 8, 2, blank=blank)


def test_cache_is_reused_for_the_same_input_only(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "test.jsonl"
    calls: list = []
    first = run(monkeypatch, dataset(tmp_path, ["a?", "b?", "c?"]), cache, calls)
    assert calls == ["a?", "b?", "c?"]
    assert all("_input" not in r for r in first)  # the digest stays in the cache

    calls.clear()
    again = run(monkeypatch, dataset(tmp_path, ["a?", "b?", "c?"]), cache, calls)
    assert calls == [] and again == first  # nothing changed: all from the cache

    calls.clear()
    changed = run(monkeypatch, dataset(tmp_path, ["a?", "B changed?", "c?"]), cache, calls)
    assert calls == ["B changed?"]  # same id, new prompt: generated again, the others reused
    assert changed[1]["response"].startswith("<think>B changed?")
    assert [r["id"] for r in changed] == ["d-0", "d-1", "d-2"]

    calls.clear()
    run(monkeypatch, dataset(tmp_path, ["a?", "B changed?", "c?"]), cache, calls, blank=True)
    assert len(calls) == 3  # the blank-image probe is another input


def test_a_new_image_under_the_same_path_is_generated_again(tmp_path, monkeypatch):
    cache = tmp_path / "c.jsonl"
    calls: list = []
    ds = dataset(tmp_path, ["a?"])
    run(monkeypatch, ds, cache, calls)
    img = tmp_path / "img0.png"
    Image.new("RGB", (20, 20), "black").save(img)  # another size: another file
    calls.clear()
    run(monkeypatch, ds, cache, calls)
    assert calls == ["a?"]


def test_a_line_cut_by_a_kill_and_an_old_cache_line_are_redone(tmp_path, monkeypatch):
    cache = tmp_path / "c.jsonl"
    ds = dataset(tmp_path, ["a?", "b?"])
    cache.write_text(json.dumps({"id": "d-0", "response": "old, no digest"}) + "\n" + '{"id": "d-1", "resp')
    calls: list = []
    out = run(monkeypatch, ds, cache, calls)
    assert calls == ["a?", "b?"] and out[0]["response"] != "old, no digest"

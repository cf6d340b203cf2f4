"""Judge prompts, strict reply parsing and the offline rules backend."""

from __future__ import annotations

import pytest

from grpo_vqa.judge.backends import RulesBackend, backoff_delay, rules_verdict
from grpo_vqa.judge.prompts import ReplyParseError, load_prompt, parse_verdict, resolve_prompt_path


def test_parse_verdict_accepts_bare_fenced_and_wrapped_json():
    assert parse_verdict('{"aligns": true, "type": null, "why": "ok"}') == {
        "aligns": True,
        "type": None,
        "why": "ok",
    }
    fenced = 'Sure:\n```json\n{"aligns": false, "type": "irrelevant", "why": "off"}\n```'
    assert parse_verdict(fenced)["type"] == "irrelevant"
    wrapped = 'Verdict: {"aligns": false, "type": "contradiction", "why": "x"} done.'
    assert parse_verdict(wrapped)["aligns"] is False


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "It aligns.",
        '{"aligns": "true", "type": null, "why": "x"}',
        '{"type": null, "why": "x"}',
        '{"aligns": false, "type": "bogus", "why": "x"}',
        '{"aligns": false, "why": "x"}',
        '{"aligns": true, "type": null}',
        "[1, 2]",
    ],
)
def test_parse_verdict_rejects_anything_not_requested(reply):
    with pytest.raises(ReplyParseError):
        parse_verdict(reply, wants_type=True)


def test_simple_prompt_needs_no_type_and_aligned_type_is_dropped():
    assert parse_verdict('{"aligns": false, "why": "x"}', wants_type=False)["type"] is None
    assert parse_verdict('{"aligns": true, "type": "other", "why": "x"}')["type"] is None


def test_prompts_render_fields_and_version(tmp_path):
    tax, simple = load_prompt("taxonomy"), load_prompt("simple")
    assert (tax.version, simple.version) == ("taxonomy.v1", "simple.v1")
    assert tax.wants_type and not simple.wants_type
    item = {
        "task": "relation",
        "question": "Is {x} true?",
        "reasoning": "A {brace} here.",
        "parsed_answer": "True",
    }
    msgs = tax.messages(item)
    assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
    user = msgs[-1]["content"]
    assert "Is {x} true?" in user and "A {brace} here." in user and "Model final answer: True" in user
    assert '{"aligns": true or false' in user and "#" not in msgs[0]["content"][:1]
    (tmp_path / "taxonomy.v1.txt").write_text("=== USER ===\nold {question}\n")
    (tmp_path / "taxonomy.v2.txt").write_text("=== USER ===\nnew {question}\n")
    assert resolve_prompt_path("taxonomy", tmp_path).name == "taxonomy.v2.txt"
    assert load_prompt("taxonomy.v1", tmp_path).messages({"question": "q"})[0]["content"] == "old q"
    assert load_prompt("taxonomy.v1", tmp_path).sha256 != load_prompt("taxonomy.v2", tmp_path).sha256
    with pytest.raises(FileNotFoundError):
        resolve_prompt_path("nope", tmp_path)


def rel(reasoning, answer, relation="left of"):
    return {
        "task": "relation",
        "reasoning": reasoning,
        "parsed_answer": answer,
        "relation": relation,
        "subj": "cat",
        "obj": "dog",
        "caption": f"The cat is {relation} the dog.",
    }


@pytest.mark.parametrize(
    ("reasoning", "answer", "relation", "aligns", "typ"),
    [
        ("I see the cat right of the dog. The statement says left of. They differ.", "False", "left of", True, None),
        ("I see the cat right of the dog. The statement says left of. They differ.", "True", "left of", False, "contradiction"),
        ("I see the cat left of the dog. The statement says left of. They match.", "True", "left of", True, None),
        ("I see the cat left of the dog. The statement says left of. They match.", "False", "left of", False, "contradiction"),
        ("The cat is to the left of the dog.", "True", "left of", True, None),
        ("The cat is to the left of the dog.", "False", "left of", False, "contradiction"),
        ("The cat is not left of the dog.", "False", "left of", True, None),
        ("The cat is not left of the dog.", "Yes", "left of", False, "contradiction"),
        ("The cat is behind the dog.", "True", "in front of", False, "contradiction"),
        ("The cat sits near a dog, so the statement is false.", "True", "left of", False, "contradiction"),
        ("The cat does not match the claimed position of the dog.", "False", "left of", True, None),
        ("The sky is blue and the grass is green.", "True", "left of", False, "irrelevant"),
        ("There is a cat and a dog.", "True", "left of", False, "missing_detail"),
        ("", "True", "left of", False, "missing_detail"),
    ],
)  # fmt: skip
def test_rules_relation(reasoning, answer, relation, aligns, typ):
    v = rules_verdict(rel(reasoning, answer, relation))
    assert (v["aligns"], v["type"]) == (aligns, typ), v["why"]


@pytest.mark.parametrize(
    ("task", "reasoning", "answer", "aligns", "typ"),
    [
        ("counting", "I count the circles. There are 3 red circles.", "3", True, None),
        ("counting", "I count the circles. There are 3 red circles.", "4", False, "contradiction"),
        ("counting", "I see three red circles in total.", "3", True, None),
        ("counting", "I see red circles.", "3", False, "missing_detail"),
        ("math", "2 + 3 = 5, then 5 * 2 = 10.", "10", True, None),
        ("math", "2 + 3 = 5, then 5 * 2 = 10.", "$12$", False, "contradiction"),
        ("grounding", "The pedestrian at 10,20,30,40 is crossing, so answer B.", "B", True, None),
        ("grounding", "The road is empty.", "C", False, "missing_detail"),
        ("counting", "There are 3 circles.", None, False, "other"),
    ],
)
def test_rules_counting_math_grounding(task, reasoning, answer, aligns, typ):
    v = rules_verdict({"task": task, "reasoning": reasoning, "parsed_answer": answer})
    assert (v["aligns"], v["type"]) == (aligns, typ), v["why"]


def test_rules_backend_uses_response_when_reasoning_missing_and_matches_prompt_schema():
    item = {
        **rel("", "False"),
        "response": "<think>x</think>The cat is right of the dog. They differ.<answer>False</answer>",
    }
    out = RulesBackend().judge(item, load_prompt("taxonomy"))
    assert out.status == "ok" and out.verdict["aligns"] is True and out.requests == 0
    assert parse_verdict(out.raw_replies[0]) == out.verdict
    bad = RulesBackend().judge(rel("The cat is left of the dog.", "False"), load_prompt("simple"))
    assert bad.verdict == {**bad.verdict, "aligns": False, "type": None}


def test_backoff_is_jittered_bounded_and_honours_retry_after():
    import random

    rng = random.Random(0)
    delays = [backoff_delay(a, 1.0, 8.0, rng) for a in range(10) for _ in range(20)]
    assert all(0 <= d <= 8.0 for d in delays) and len(set(delays)) > 100
    assert backoff_delay(0, 1.0, 8.0, rng, retry_after=5) == 5
    assert backoff_delay(0, 1.0, 8.0, rng, retry_after=500) == 8.0

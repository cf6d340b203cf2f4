"""Batched greedy generation over a task split, resumable through a per-split JSONL cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..data.images import load_image
from ..data.scenes import blank_like
from ..data.schema import prompt_messages
from ..models.greedy import chat_texts, greedy_completions, strip_special
from ..parsing import extract_answer, extract_think, format_ok
from ..progress import progress
from ..rewards import get_reward_funcs

EXTRA_FIELDS = ("relation", "subj", "obj", "caption", "target_shape", "count", "choices", "boxes")
#: The reward that decides an item's correctness, by task (default ``accuracy``): math answers are checked
#: for equivalence with math-verify (``$\frac{1}{2}$`` == ``0.5``), as the TRL recipe's accuracy reward does.
CORRECTNESS_REWARD = {"math": "math_accuracy"}


def chat_prompts(processor, problems: list[str], system_prompt: str | None) -> list[str]:
    return chat_texts(processor, [prompt_messages(p, system_prompt) for p in problems])


def generate_batch(model, processor, images, problems, system_prompt, max_new_tokens: int) -> list[str]:
    """Greedy completions for one batch (left padding; only the new tokens are decoded)."""
    messages = [prompt_messages(p, system_prompt) for p in problems]
    return greedy_completions(model, processor, images, messages, max_new_tokens)


#: The cache lines' digest of what an item's response was generated from (see :func:`input_key`).
INPUT_KEY = "_input"


def input_key(row: dict, blank: bool) -> str:
    """A digest of an item's prompt, solution, image file (path, size, modification time) and the blank-image
    flag: a cached response is reused only for the same input."""
    path = row.get("image_path")
    st = os.stat(path) if path and os.path.exists(path) else None
    ident = [row["problem"], row.get("solution"), path, st and st.st_size, st and st.st_mtime_ns, blank]
    return hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:16]


def score_record(
    item: dict, response: str, correctness: dict | None = None, answer_without_tags: bool = False
) -> dict:
    """One evaluated item: parsed answer, correctness (the task's accuracy reward) and format.

    ``correctness`` maps a task to the reward that decides it (``evaluation.correctness``; unset tasks use
    :data:`CORRECTNESS_REWARD`, else ``accuracy``). With ``answer_without_tags`` a response without an
    ``<answer>`` tag is itself the answer (a model trained on bare answers, ``sft.target: answer``)."""
    task = item.get("task") or "relation"
    name = (correctness or {}).get(task) or CORRECTNESS_REWARD.get(task, "accuracy")
    (accuracy,) = get_reward_funcs([name])
    answer = extract_answer(response)
    scored = response
    if answer is None and answer_without_tags:
        answer = response.strip()
        scored = f"<answer>{answer}</answer>"
    rec = {
        "id": item["id"],
        "task": task,
        "question": item["problem"],
        "response": response,
        "reasoning": extract_think(response) or "",
        "parsed_answer": answer,
        "solution": item["solution"],
        "correct": bool(accuracy([scored], solution=[item["solution"]])[0] == 1.0),
        "format_ok": bool(format_ok(response)),
    }
    for key in EXTRA_FIELDS:
        if key in item and item[key] is not None:
            rec[key] = item[key]
    return rec


def next_token_batch(model, processor, images, problems, system_prompt, labels: list[str]) -> list[str]:
    """For each prompt, the label (e.g. ``True`` / ``False``) whose first token is the more probable next
    token after the prompt (the study's scoring of direct-answer soft prompts; no generation)."""
    import torch

    tok = processor.tokenizer
    ids = [tok.encode(label, add_special_tokens=False)[0] for label in labels]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"labels {labels} share their first token; next-token scoring cannot tell them apart"
        )
    texts = chat_prompts(processor, problems, system_prompt)
    inputs = processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
    inputs = inputs.to(model.device)
    with torch.inference_mode():
        logits = model(**inputs).logits[:, -1, :]  # left padding: the last position is the next token
    choice = logits[:, ids].argmax(-1).tolist()
    return [labels[i] for i in choice]


def evaluate_split(
    model,
    processor,
    ds,
    cache_path: str | Path,
    system_prompt: str | None,
    max_new_tokens: int,
    batch_size: int,
    blank: bool = False,
    desc: str = "eval",
    correctness: dict | None = None,
    answer_without_tags: bool = False,
    next_token_labels: list[str] | None = None,
) -> list[dict]:
    """Generate for every item of ``ds`` not already in ``cache_path``; return records in dataset order.

    With ``next_token_labels`` nothing is generated: each response is the label whose first token the model
    finds more probable right after the prompt (and is scored as a bare answer)."""
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    rows = [ds[i] for i in range(len(ds))]
    keys = {r["id"]: input_key(r, blank) for r in rows}
    done: dict[str, dict] = {}
    if cache_path.exists():
        for line in cache_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: redo that item
            # an item is reused only for the same input (a regenerated dataset keeps its ids)
            if rec.get(INPUT_KEY) == keys.get(rec["id"]):
                done[rec["id"]] = {k: v for k, v in rec.items() if k != INPUT_KEY}
    todo = [r for r in rows if r["id"] not in done]
    bar = progress(total=len(rows), initial=len(rows) - len(todo), desc=desc, interval=30)
    with open(cache_path, "a", encoding="utf-8") as fh:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images = [load_image(r["image_path"]) for r in batch]
            if blank:
                images = [blank_like(im) for im in images]
            problems = [r["problem"] for r in batch]
            if next_token_labels:
                outs = next_token_batch(model, processor, images, problems, system_prompt, next_token_labels)
            else:
                outs = generate_batch(model, processor, images, problems, system_prompt, max_new_tokens)
            for r, text in zip(batch, outs, strict=True):
                rec = score_record(
                    r,
                    strip_special(text, processor),
                    correctness,
                    answer_without_tags or bool(next_token_labels),
                )
                done[rec["id"]] = rec
                fh.write(json.dumps(rec | {INPUT_KEY: keys[rec["id"]]}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(batch))
    bar.close()
    return [done[r["id"]] for r in rows]

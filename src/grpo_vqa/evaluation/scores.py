"""Scores from evaluated records: accuracy, format compliance, and breakdowns by relation and by count."""

from __future__ import annotations

from collections import defaultdict

from ..parsing import reasoning_length


def _rate(flags: list[bool]) -> float:
    return round(100.0 * sum(flags) / len(flags), 4) if flags else 0.0


def _group(records: list[dict], key: str) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if key in r:
            groups[str(r[key])].append(r)
    return {
        k: {"n": len(v), "accuracy": _rate([x["correct"] for x in v])}
        for k, v in sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0]))
    }


def split_scores(records: list[dict]) -> dict:
    """Summary of one split (percentages, 0–100)."""
    out = {
        "n": len(records),
        "accuracy": _rate([r["correct"] for r in records]),
        "format": _rate([r["format_ok"] for r in records]),
        "answered": _rate([r["parsed_answer"] is not None for r in records]),
        "mean_reasoning_words": round(
            sum(reasoning_length(r["response"]) for r in records) / max(1, len(records)), 3
        ),
    }
    for key, name in (("relation", "by_relation"), ("count", "by_count"), ("solution", "by_solution")):
        grouped = _group(records, key)
        if grouped:
            out[name] = grouped
    return out


def mean_box_iou(records: list[dict]) -> float | None:
    """Mean IoU (0-1) between the boxes a response names in its ``<think>`` part and the item's ground-truth
    ``boxes`` (the ``iou`` reward: per item, the mean over ground-truth boxes of the best-matching named box;
    no named box scores 0). Items without ground-truth boxes are skipped; None when no item has any."""
    from ..rewards import iou_reward

    scored = [r for r in records if r.get("boxes")]
    if not scored:
        return None
    values = iou_reward([r["response"] for r in scored], boxes=[r["boxes"] for r in scored])
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def mean_response_words(records: list[dict]) -> float:
    """Mean number of whitespace-separated words of the whole response (tags included)."""
    return sum(len(str(r["response"]).split()) for r in records) / max(1, len(records))

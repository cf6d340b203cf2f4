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

"""Scores from evaluated records: accuracy, format compliance, and breakdowns by relation and by count."""

from __future__ import annotations

from collections import defaultdict

from scipy.stats import binomtest, norm

from ..parsing import reasoning_length
from ..rewards import iou_reward


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


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """The Wilson score interval (95 % by default: two-sided at normal quantile ``z``) of a proportion, in
    percent, from scipy's ``binomtest(...).proportion_ci(method="wilson")``; [0, 0] for no items."""
    if n == 0:
        return [0.0, 0.0]
    ci = binomtest(successes, n).proportion_ci(confidence_level=2 * norm.cdf(z) - 1, method="wilson")
    return [round(100.0 * max(0.0, float(ci.low)), 4), round(100.0 * min(1.0, float(ci.high)), 4)]


#: The predicted label of a record whose answer is none of the gold labels (no answer, or another word).
INVALID = "<invalid>"


def predicted_label(record: dict, labels: set[str]) -> str:
    """The label a record predicts: its gold label when correct, else its parsed answer when that is another
    gold label, else :data:`INVALID` (so correctness and the confusion matrix agree)."""
    if record["correct"]:
        return str(record["solution"]).strip()
    answer = record.get("parsed_answer")
    answer = answer.strip() if isinstance(answer, str) else None
    return answer if answer in labels and answer != str(record["solution"]).strip() else INVALID


def weighted_prf(records: list[dict]) -> dict[str, float]:
    """Precision, recall and F1 per gold label, averaged with the labels' support as weights (as
    scikit-learn's ``average="weighted"``; a label never predicted has precision 0), in percent."""
    gold = [str(r["solution"]).strip() for r in records]
    labels = set(gold)
    pred = [predicted_label(r, labels) for r in records]
    total = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    for label in sorted(labels):
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        support = gold.count(label)
        predicted = pred.count(label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        for key, value in (("precision", precision), ("recall", recall), ("f1", f1)):
            total[key] += value * support
    n = max(1, len(gold))
    return {k: round(100.0 * v / n, 4) for k, v in total.items()}


def split_scores(records: list[dict]) -> dict:
    """Summary of one split (percentages, 0–100)."""
    correct = sum(bool(r["correct"]) for r in records)
    out = {
        "n": len(records),
        "accuracy": _rate([r["correct"] for r in records]),
        "accuracy_ci95": wilson_interval(correct, len(records)),
        "weighted": weighted_prf(records),
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
    scored = [r for r in records if r.get("boxes")]
    if not scored:
        return None
    values = iou_reward([r["response"] for r in scored], boxes=[r["boxes"] for r in scored])
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def mean_response_words(records: list[dict]) -> float:
    """Mean number of whitespace-separated words of the whole response (tags included)."""
    return sum(len(str(r["response"]).split()) for r in records) / max(1, len(records))

"""Alignment statistics: accuracy and misalignment shares per run/split/stage, and judge-vs-human agreement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from grpo_vqa.judge.prompts import MISALIGNMENT_TYPES

# The study's o4-mini taxonomy-prompt numbers on the first 350 test items (study project page).
STUDY_REFERENCE = {
    ("test", "base"): {"accuracy_pct": 72.29, "misaligned_pct": 11.71},
    ("test", "grpo"): {"accuracy_pct": 83.43, "misaligned_pct": 17.14},
}
TYPE_COLUMNS = [*MISALIGNMENT_TYPES, "untyped"]
_TRUE = {"1", "true", "t", "yes", "y", "aligned"}
_FALSE = {"0", "false", "f", "no", "n", "misaligned"}


def load_judged(paths: list[str | Path]) -> pd.DataFrame:
    """All judge JSONL records of ``paths`` as one frame (one row per judged response)."""
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    cols = ["id", "run", "stage", "split", "status", "aligns", "type", "correct", "model", "prompt_version"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df:
            df[c] = None
    return df


def alignment_table(df: pd.DataFrame, splits: list | None = None, stages: list | None = None) -> pd.DataFrame:
    """One row per (run, split, stage): counts and percentages, ordered as ``splits``/``stages`` when given.

    Percentages use the judged items (``ok`` + ``unparseable``) as denominator, so aligned + misaligned +
    unparseable = 100; ``failed`` items (never judged) are only counted. Accuracy is over the same items.
    """
    out = []
    for (run, split, stage), g in df.groupby(["run", "split", "stage"], sort=True, dropna=False):
        judged = g[g["status"].isin(["ok", "unparseable"])]
        ok = judged[judged["status"] == "ok"]
        n = len(judged)
        mis = ok[ok["aligns"] == False]  # noqa: E712 - pandas element-wise comparison

        def pct(k: int, n: int = n) -> float:
            return round(100.0 * k / n, 2) if n else float("nan")

        row = {
            "run": run,
            "split": split,
            "stage": stage,
            "n_judged": n,
            "n_failed": int((g["status"] == "failed").sum()),
            "accuracy_pct": pct(int(judged["correct"].fillna(False).astype(bool).sum())),
            "aligned_pct": pct(int((ok["aligns"] == True).sum())),  # noqa: E712
            "misaligned_pct": pct(len(mis)),
        }
        types = mis["type"].where(mis["type"].isin(MISALIGNMENT_TYPES), "untyped")
        for t in TYPE_COLUMNS:
            row[f"{t}_pct"] = pct(int((types == t).sum()))
        row["n_unparseable"] = int((judged["status"] == "unparseable").sum())
        row["unparseable_pct"] = pct(row["n_unparseable"])
        ref = STUDY_REFERENCE.get((split, stage), {})
        row["study_accuracy_pct"] = ref.get("accuracy_pct", float("nan"))
        row["study_misaligned_pct"] = ref.get("misaligned_pct", float("nan"))
        out.append(row)
    table = pd.DataFrame(out)
    if len(table):
        rank = {c: {v: i for i, v in enumerate(o or [])} for c, o in (("split", splits), ("stage", stages))}
        table = table.sort_values(
            ["run", "split", "stage"],
            key=lambda s: s.map(rank[s.name]).fillna(len(rank[s.name])) if s.name in rank else s,
            kind="stable",
        ).reset_index(drop=True)
    return table


def _to_bool(v) -> bool:
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"human_aligns value {v!r} is not a boolean")


def load_human_labels(path: str | Path) -> pd.DataFrame:
    """Human-label CSV: required ``id``, ``human_aligns``; optional ``run``, ``stage``, ``split`` (join keys)."""
    df = pd.read_csv(path, dtype=str, comment="#").fillna("")
    missing = {"id", "human_aligns"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    df = df[df["human_aligns"].str.strip() != ""].copy()  # unlabelled template rows are skipped
    df["human_aligns"] = df["human_aligns"].map(_to_bool)
    return df


def label_template(items: list[dict], n: int, seed: int, run: str, stage: str, split: str) -> pd.DataFrame:
    """A seeded random sample of responses to label by hand (no judge verdict shown, to keep labels blind)."""
    from grpo_vqa.judge.prompts import reasoning_text

    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(items), size=min(n, len(items)), replace=False).tolist())
    rows = [
        {
            "id": str(items[i]["id"]),
            "run": run,
            "stage": stage,
            "split": split,
            "task": items[i].get("task"),
            "question": items[i].get("question"),
            "reasoning": reasoning_text(items[i]),
            "parsed_answer": items[i].get("parsed_answer"),
            "human_aligns": "",
            "note": "",
        }
        for i in idx
    ]
    return pd.DataFrame(rows)


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two equally long label sequences (nan when undefined)."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b):
        raise ValueError("label sequences differ in length")
    if len(a) == 0:
        return float("nan")
    labels = np.union1d(a, b)
    po = float(np.mean(a == b))
    pe = float(sum(np.mean(a == k) * np.mean(b == k) for k in labels))
    if pe == 1.0:
        return 1.0 if po == 1.0 else float("nan")
    return (po - pe) / (1.0 - pe)


def agreement(judged: pd.DataFrame, human: pd.DataFrame) -> dict:
    """Join human labels to judge verdicts and return kappa, raw agreement and the 2x2 confusion matrix.

    Rows of the confusion matrix are the human label (aligned, misaligned), columns the judge's. Labelled
    items the judge called ``unparseable`` or that never got judged are counted, not silently dropped.
    """
    keys = ["id", *[k for k in ("run", "stage", "split") if k in human.columns]]
    j = judged.copy()
    for k in keys:
        j[k] = j[k].astype(str)
    try:
        merged = human.merge(j[[*keys, "status", "aligns"]], on=keys, how="left", validate="one_to_one")
    except pd.errors.MergeError as exc:
        msg = f"human labels do not identify one judged response each (add run/stage/split): {exc}"
        raise ValueError(msg) from None
    usable = merged[merged["status"] == "ok"]
    h = usable["human_aligns"].astype(bool).to_numpy()
    p = usable["aligns"].astype(bool).to_numpy()
    cm = np.array([[np.sum(h & p), np.sum(h & ~p)], [np.sum(~h & p), np.sum(~h & ~p)]], dtype=int)
    return {
        "n_labelled": len(human),
        "n_compared": len(usable),
        "n_unparseable": int((merged["status"] == "unparseable").sum()),
        "n_unmatched": int(merged["status"].isna().sum() + (merged["status"] == "failed").sum()),
        "raw_agreement": float(np.mean(h == p)) if len(usable) else float("nan"),
        "kappa": cohen_kappa(h, p),
        "confusion": cm.tolist(),
    }


def plot_confusion(agree: dict | None, path: str | Path, title: str) -> None:
    """Confusion-matrix figure (human rows vs judge columns); a labelled placeholder when no labels exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    if agree is None or agree["n_compared"] == 0:
        ax.axis("off")
        ax.text(0.5, 0.5, "no human labels to compare", ha="center", va="center")
    else:
        cm = np.array(agree["confusion"])
        ax.imshow(cm, cmap="Blues")
        for (i, k), v in np.ndenumerate(cm):
            ax.text(k, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], ["aligned", "misaligned"])
        ax.set_yticks([0, 1], ["aligned", "misaligned"])
        ax.set_xlabel("judge")
        ax.set_ylabel("human")
        title += f"\nkappa={agree['kappa']:.2f}, n={agree['n_compared']}"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.2f}"
    return str(v)


def render_markdown(table: pd.DataFrame, agree: dict | None, judge_desc: str) -> str:
    """The ``alignment.md`` report: main table, study reference columns and judge-vs-human agreement."""
    cols = ["run", "split", "stage", "n_judged", "accuracy_pct", "aligned_pct", "misaligned_pct"]
    cols += [f"{t}_pct" for t in TYPE_COLUMNS] + ["unparseable_pct", "n_failed"]
    cols += ["study_accuracy_pct", "study_misaligned_pct"]
    lines = [
        "# Reasoning–answer alignment (LLM-as-judge)",
        "",
        f"Judge: {judge_desc}. Percentages are of judged responses (ok + unparseable); `n_failed` responses "
        "could not be judged. Study columns: o4-mini with the taxonomy prompt on the first 350 test items.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    lines += ["", "## Judge vs human labels", ""]
    if agree is None:
        lines.append("No human-label file configured (`judge.human_labels: null`).")
    else:
        cm = agree["confusion"]
        lines += [
            f"- labelled: {agree['n_labelled']}, compared: {agree['n_compared']}, judge unparseable: "
            f"{agree['n_unparseable']}, unmatched/failed: {agree['n_unmatched']}",
            f"- raw agreement: {_fmt(agree['raw_agreement'])}, Cohen's kappa: {_fmt(agree['kappa'])}",
            "",
            "| human \\ judge | aligned | misaligned |",
            "|---|---|---|",
            f"| aligned | {cm[0][0]} | {cm[0][1]} |",
            f"| misaligned | {cm[1][0]} | {cm[1][1]} |",
        ]
    return "\n".join(lines) + "\n"

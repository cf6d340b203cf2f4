"""Alignment statistics: accuracy and misalignment shares per run/split/stage, and judge-vs-human agreement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from grpo_vqa.judge.prompts import MISALIGNMENT_TYPES, reasoning_text
from grpo_vqa.judge.runner import response_sha256

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


_SHA256 = r"^[0-9a-f]{64}$"


def load_human_labels(path: str | Path) -> pd.DataFrame:
    """Human-label CSV: required ``response_sha256`` (the hash of the response text the label was given for,
    :func:`grpo_vqa.judge.runner.response_sha256`) and ``human_aligns``; ``id``, ``run``, ``stage``, ``split``
    and any other columns are kept for reading only. One response (hash) with two different labels is an error.
    """
    df = pd.read_csv(path, dtype=str, comment="#").fillna("")
    missing = {"response_sha256", "human_aligns"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{path}: missing columns {sorted(missing)} (labels are keyed to the hash of the response text they "
            "were given for; `scripts/alignment_table.py --label-template` writes it)"
        )
    df = df[df["human_aligns"].str.strip() != ""].copy()  # unlabelled template rows are skipped
    df["human_aligns"] = df["human_aligns"].map(_to_bool)
    df["response_sha256"] = df["response_sha256"].str.strip().str.lower()
    bad = df[~df["response_sha256"].str.match(_SHA256)]
    if len(bad):
        raise ValueError(
            f"{path}: response_sha256 {bad['response_sha256'].iloc[0]!r} is not a SHA-256 hex digest"
        )
    labels_per_hash = df.groupby("response_sha256")["human_aligns"].nunique()
    if (labels_per_hash > 1).any():
        raise ValueError(
            f"{path}: response {labels_per_hash[labels_per_hash > 1].index[0]} has both labels (one text, one label)"
        )
    return df


def load_calibration(path: str | Path) -> tuple[list[dict], pd.DataFrame]:
    """The calibration set: JSONL of responses (as in ``generated_responses_<split>.json``) with ``human_*``
    fields. Returns the responses without the human fields (what the judge sees) and their labels as
    :func:`load_human_labels` gives them."""
    items, rows = [], []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "human_aligns" not in rec or "id" not in rec:
                raise ValueError(f"{path}:{n}: a calibration record needs id and human_aligns")
            item = {k: v for k, v in rec.items() if not k.startswith("human_")}
            items.append(item)
            rows.append(
                {
                    "id": str(rec["id"]),
                    "response_sha256": response_sha256(item),
                    "human_aligns": _to_bool(rec["human_aligns"]),
                }
            )
    if not items:
        raise ValueError(f"{path}: no calibration records")
    return items, pd.DataFrame(rows)


def label_template(items: list[dict], n: int, seed: int, run: str, stage: str, split: str) -> pd.DataFrame:
    """A seeded random sample of responses to label by hand (no judge verdict shown, to keep labels blind);
    ``response_sha256`` ties each label to the exact response text it is given for."""
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
            "response_sha256": response_sha256(items[i]),
            "human_aligns": "",
            "note": "",
        }
        for i in idx
    ]
    return pd.DataFrame(rows)


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two equally long label sequences (scikit-learn's ``cohen_kappa_score``): nan for no
    labels, 1.0 when both give every item the same one label (chance agreement 1, where scikit-learn has no
    value)."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b):
        raise ValueError("label sequences differ in length")
    if len(a) == 0:
        return float("nan")
    if len(np.union1d(a, b)) == 1:
        return 1.0
    return float(cohen_kappa_score(a, b))


def agreement(judged: pd.DataFrame, human: pd.DataFrame) -> dict:
    """Join human labels to judge verdicts on the hash of the response text and return kappa, raw agreement
    and the 2x2 confusion matrix.

    A label joins the judged response whose text (``response_sha256``) it was given for, whatever its id;
    identical texts share one verdict. Rows of the confusion matrix are the human label (aligned, misaligned),
    columns the judge's. Labels whose response the judge called ``unparseable``, could not judge (``failed``)
    or that match no judged response at all (``n_no_response``: a label for a text this run did not produce)
    are counted, never compared.
    """
    if "response_sha256" not in judged:
        raise ValueError("judged records carry no response_sha256 (judge them again)")
    j = judged.drop_duplicates("response_sha256")[["response_sha256", "status", "aligns"]]
    merged = human.merge(j, on="response_sha256", how="left", validate="many_to_one")
    usable = merged[merged["status"] == "ok"]
    h = usable["human_aligns"].astype(bool).to_numpy()
    p = usable["aligns"].astype(bool).to_numpy()
    cm = np.array([[np.sum(h & p), np.sum(h & ~p)], [np.sum(~h & p), np.sum(~h & ~p)]], dtype=int)
    return {
        "n_labelled": len(human),
        "n_compared": len(usable),
        "n_unparseable": int((merged["status"] == "unparseable").sum()),
        "n_failed": int((merged["status"] == "failed").sum()),
        "n_no_response": int(merged["status"].isna().sum()),
        "raw_agreement": float(np.mean(h == p)) if len(usable) else float("nan"),
        "kappa": cohen_kappa(h, p),
        "confusion": cm.tolist(),
    }


def no_response_warning(agree: dict, source: str) -> str | None:
    """The one-line warning for labels that match no judged response (None when every label matched)."""
    if not agree["n_no_response"]:
        return None
    return (
        f"warning: {agree['n_no_response']} of {agree['n_labelled']} human labels in {source} match no judged "
        "response (labels are keyed to the response text; this run produced other texts): not compared"
    )


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


def _agreement_lines(agree: dict) -> list[str]:
    cm = agree["confusion"]
    return [
        f"- labelled: {agree['n_labelled']}, compared: {agree['n_compared']}, judge unparseable: "
        f"{agree['n_unparseable']}, judge failed: {agree['n_failed']}, labels matching no judged response: "
        f"{agree['n_no_response']}",
        f"- raw agreement: {_fmt(agree['raw_agreement'])}, Cohen's kappa: {_fmt(agree['kappa'])}",
        "",
        "| human \\ judge | aligned | misaligned |",
        "|---|---|---|",
        f"| aligned | {cm[0][0]} | {cm[0][1]} |",
        f"| misaligned | {cm[1][0]} | {cm[1][1]} |",
    ]


def render_markdown(
    table: pd.DataFrame,
    agree: dict | None,
    judge_desc: str,
    calibration: dict | None = None,
    sources: dict[str, str] | None = None,
) -> str:
    """The ``alignment.md`` report: main table, study reference columns and judge-vs-human agreement, on the
    fixed calibration set (``calibration``) and on this run's labelled responses (``agree``); ``sources`` names
    the files (keys ``calibration``, ``labels``)."""
    sources = sources or {}
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
    if calibration is not None:
        lines += [
            f"### Calibration set ({sources.get('calibration', 'calibration set')}; the same responses on every run)",
            "",
            *_agreement_lines(calibration),
            "",
        ]
    if agree is None:
        lines.append("No human labels of this run's responses configured (`judge.human_labels: null`).")
    else:
        lines += [
            f"### This run's responses ({sources.get('labels', 'human labels')}; joined on the response text hash)",
            "",
            *_agreement_lines(agree),
        ]
    return "\n".join(lines) + "\n"

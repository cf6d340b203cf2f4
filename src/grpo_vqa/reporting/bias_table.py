"""The ``bias`` table: SFT vs GRPO trained on relation sets whose wording predicts the label, tested unbiased.

Rows: bias level × stage. Columns: test accuracy (unbiased test split), blank-image accuracy (the text-only
probe), accuracy on bias-consistent vs bias-inconsistent test items (the answer the relation word predicts in
the biased training sets is right vs wrong) and agreement with that text prior. A model that reads only the
wording scores 100 / 0 on consistent / inconsistent items; one that reads the image scores the same on both.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.relations import text_prior
from ..parsing import extract_answer, normalize_bool
from . import families as fam
from .figures import reference_comparison
from .tables import STAGE_LABELS, model_label, write_table

NAME = "bias"
TRAINED = ("sft", "grpo")
#: The study's VSR test accuracies (%) for SFT / GRPO on its unbiased, biased and strongly biased training sets
#: (../shared/reference/study-facts.md, project page; bias levels not stated there).
STUDY_BIAS = {"unbiased": (82.0, 84.8), "biased": (84.6, 82.3), "strongly biased": (79.9, 80.7)}


def _dataset(config: dict, exp: str) -> tuple[str, dict]:
    name = config["experiments"][exp]["dataset"]
    return name, config["datasets"][name]


def _train_manifest(config: dict, exp: str) -> dict:
    """The train split's entry of the experiment's dataset manifest (where ``bias_probe`` lives)."""
    name, _ = _dataset(config, exp)
    return fam.read_all({name: f"results/data/{name}/manifest.json"})[name]["splits"]["train"]


def probe(config: dict, exp: str) -> dict | None:
    """The relation-only probe of a minority-undersampled training set (``bias_keep_ratio``; the train
    manifest's ``bias_probe``), else None."""
    if _dataset(config, exp)[1]["bias_keep_ratio"] is None:
        return None
    return _train_manifest(config, exp)["bias_probe"]


def probe_level(config: dict, exp: str) -> float | None:
    """The held-out accuracy (%) of the relation-only probe on the experiment's training set (the train
    manifest's ``bias_probe``, written for every relation set), or None where the manifest has none."""
    found = _train_manifest(config, exp).get("bias_probe")
    return None if found is None or found["accuracy"] is None else float(found["accuracy"])


def bias_level(config: dict, exp: str) -> float:
    """The training set's bias: the held-out accuracy (%) of the relation-only probe for a
    minority-undersampled set (``bias_keep_ratio``); else P(caption true | text prior "True") (0.5 unset)."""
    found = probe(config, exp)
    if found is not None:
        return float("nan") if found["accuracy"] is None else float(found["accuracy"])
    return float(_dataset(config, exp)[1]["bias"])


def text_reliance(records: list[dict], majority: dict[str, str] | None = None) -> dict[str, float | None]:
    """Accuracy on bias-consistent / -inconsistent items and agreement (%) with the text prior.

    An item is bias-consistent when its solution equals the text prior of its relation word: the word's
    majority label in the training set (``majority``; a word it never saw has no prior and is left out), else
    :func:`text_prior`. Agreement is the share of items whose parsed answer is the prior (no parseable
    answer: no agreement).
    """
    consistent, inconsistent, agree = [], [], []
    for r in records:
        if "relation" not in r:
            raise ValueError(f"response {r.get('id')!r} has no relation field (not a relation item)")
        if majority is not None and str(r["relation"]) not in majority:
            continue
        prior = majority[str(r["relation"])] if majority is not None else text_prior(str(r["relation"]))
        (consistent if str(r["solution"]) == prior else inconsistent).append(bool(r["correct"]))
        answer = r.get("parsed_answer")
        if answer is None:
            answer = extract_answer(r.get("response") or "")
        agree.append(answer is not None and normalize_bool(answer) == prior)
    return {
        "consistent": fam.mean_or_none(consistent),
        "inconsistent": fam.mean_or_none(inconsistent),
        "agreement": fam.mean_or_none(agree),
    }


def inputs(config: dict, table_cfg: dict) -> list[str]:
    exps = fam.experiments_of(config, NAME, table_cfg)
    probed = sorted({_dataset(config, e)[0] for e in exps})  # every set's manifest holds its probe
    return (
        [fam.scores_path(e, s) for e in exps for s in TRAINED]
        + [fam.responses_path(e, s) for e in exps for s in TRAINED]
        + [f"results/data/{name}" for name in probed]
    )


def bias_frame(config: dict, exps: list[str], scores: dict, responses: dict) -> pd.DataFrame:
    rows = []
    for exp in sorted(exps, key=lambda e: bias_level(config, e)):
        model_cfg = config["models"][config["experiments"][exp]["model"]]
        for stage in TRAINED:
            s = scores[(exp, stage)]
            found = probe(config, exp)
            rel = text_reliance(responses[(exp, stage)], found["majority"] if found else None)
            gap = None
            if rel["consistent"] is not None and rel["inconsistent"] is not None:
                gap = rel["consistent"] - rel["inconsistent"]
            rows.append(
                {
                    "experiment": exp,
                    "model": model_label(model_cfg),
                    "train bias": bias_level(config, exp),
                    "relation-only probe": probe_level(config, exp),
                    "stage": fam.stage_label(config, exp, stage),
                    "test accuracy": fam.split_value(s, "test"),
                    "blank-image accuracy": fam.split_value(s, "test-blank"),
                    "bias-consistent accuracy": rel["consistent"],
                    "bias-inconsistent accuracy": rel["inconsistent"],
                    "consistent − inconsistent": gap,
                    "agreement with text prior": rel["agreement"],
                }
            )
    return pd.DataFrame(rows)


def build(config: dict, table_cfg: dict, out_md: str, fig_dir: str) -> list[Path]:
    exps = fam.experiments_of(config, NAME, table_cfg)
    scores = fam.read_all({(e, s): fam.scores_path(e, s) for e in exps for s in TRAINED})
    responses = fam.read_all({(e, s): fam.responses_path(e, s) for e in exps for s in TRAINED})
    df = bias_frame(config, exps, scores, responses)
    # row labels per stage ("GRPO" when it starts from the base model); one topology for the whole table
    labels = {stage: {fam.stage_label(config, e, stage) for e in exps} for stage in TRAINED}
    if any(len(v) > 1 for v in labels.values()):
        raise ValueError(f"tables.{NAME}: its experiments mix GRPO from SFT and from base ({sorted(exps)})")
    labels = {stage: v.pop() for stage, v in labels.items()}
    study = "; ".join(f"{k} {v[0]:.1f} / {v[1]:.1f}" for k, v in STUDY_BIAS.items())
    write_table(
        df,
        out_md,
        "Text bias: accuracy (%) on the unbiased test split after training on biased relation sets",
        notes=[
            "train bias: for sets with some of each relation's minority label dropped, the held-out accuracy "
            "(%) of a relation-only logistic-regression probe on the training items (the study names its sets "
            "by it: about 63 plain, 69 and 99.7); otherwise P(caption true) for relation words whose text prior "
            "is True (0.5 is unbiased). The test split is always unbiased.",
            "relation-only probe: that probe's held-out accuracy (%) on each training set, the bias it measurably "
            "carries (50 = the relation word says nothing about the label).",
            "blank-image: the test split with grey images (chance 50 %); bias-(in)consistent: test items whose "
            "answer the relation word's prior gets right (wrong); agreement: answers equal to that prior.",
            f"The study (VSR test, SFT / GRPO): {study}.",
        ],
    )
    outputs = [Path(out_md), Path(out_md).with_suffix(".csv")]
    fig = Path(fig_dir) / "accuracy_vs_bias.png"
    series: dict[str, dict[float, float | None]] = {}
    styles = {}
    for stage in TRAINED:
        label = labels[stage]
        sub = df[df["stage"] == label]
        series[f"{label}: test"] = dict(zip(sub["train bias"], sub["test accuracy"], strict=True))
        series[f"{label}: inconsistent items"] = dict(
            zip(sub["train bias"], sub["bias-inconsistent accuracy"], strict=True)
        )
        series[f"{label}: blank image"] = dict(
            zip(sub["train bias"], sub["blank-image accuracy"], strict=True)
        )
        styles |= {
            f"{label}: test": "-o",
            f"{label}: inconsistent items": "--s",
            f"{label}: blank image": ":^",
        }
    fam.line_plot(
        series, fig, "unbiased test accuracy vs training-set bias", "train bias", chance=50.0, styles=styles
    )
    outputs.append(fig)
    study_png = Path(fig_dir) / "vs_study.png"
    ours, study = study_comparison(df, labels)
    reference_comparison(ours, study, study_png)
    outputs.append(study_png)
    return fam.finish(outputs, config, table_cfg, inputs(config, table_cfg))


def study_comparison(df: pd.DataFrame, labels: dict[str, str] | None = None) -> tuple[dict, dict]:
    """Our test accuracy per (stage, bias level) beside the study's; the study's three sets (unbiased, biased,
    strongly biased) are matched to our levels in increasing order, and only when we have three levels."""
    levels = sorted(df["train bias"].unique())
    names = dict(zip(levels, STUDY_BIAS, strict=True)) if len(levels) == len(STUDY_BIAS) else {}
    ours: dict[str, dict[str, float]] = {}
    study: dict[str, dict[str, float]] = {}
    for k, stage in enumerate(TRAINED):
        label = (labels or STAGE_LABELS)[stage]
        sub = df[df["stage"] == label]
        for level, acc in zip(sub["train bias"], sub["test accuracy"], strict=True):
            setting = f"bias {level:g}" + (f" ({names[level]})" if level in names else "")
            ours.setdefault(label, {})[setting] = float("nan") if acc is None else acc
            if level in names:
                study.setdefault(label, {})[setting] = STUDY_BIAS[names[level]][k]
    return ours, study

"""The ``shape_counting`` table: the counting tutorial before and after GRPO with its three-part reward.

Rows: experiment × stage (zero-shot, SFT, SFT → GRPO). Columns: accuracy on the in-range test split (the
training counts), on the generalisation set (the experiment's first ``eval_datasets`` entry, counts up to 7)
and on its counts beyond the training range, format compliance, the tutorial's reward (``shape_count``, 0–1.7)
averaged over the test responses, and the mean reasoning length. Figures: accuracy by true count, accuracy
by reasoning length, and the GRPO reward curves.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import read_json
from ..parsing import reasoning_length
from ..rewards import shape_count_reward
from . import families as fam
from .figures import grpo_betas, grpo_curves, reasoning_length_accuracy, reasoning_length_bins
from .tables import model_label, write_table

NAME = "shape_counting"


def generalisation_set(config: dict, exp: str) -> str | None:
    extra = config["experiments"][exp]["eval_datasets"]
    return f"{extra[0]}-test" if extra else None


def train_max_count(config: dict, exp: str) -> int:
    return int(config["datasets"][config["experiments"][exp]["dataset"]]["max_count"])


def accuracy_beyond(by_count: dict[str, dict], max_count: int) -> float | None:
    """Accuracy (%) over the counts above ``max_count``, weighted by items per count (None: no such items)."""
    hits = n = 0.0
    for count, v in by_count.items():
        if int(count) > max_count:
            hits += v["accuracy"] * v["n"] / 100.0
            n += v["n"]
    return 100.0 * hits / n if n else None


def tutorial_reward(records: list[dict]) -> float | None:
    """Mean ``shape_count`` reward (the tutorial's +1.0 / +0.5 / +0.2) over evaluated counting items."""
    if not records:
        return None
    missing = next((r for r in records if "target_shape" not in r), None)
    if missing is not None:
        raise ValueError(f"response {missing.get('id')!r} has no target_shape (not a counting item)")
    values = shape_count_reward(
        [r["response"] for r in records],
        solution=[r["solution"] for r in records],
        target_shape=[r["target_shape"] for r in records],
    )
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def inputs(config: dict, table_cfg: dict) -> list[str]:
    return fam.scores_responses_adapters(config, fam.experiments_of(config, NAME, table_cfg))


def counting_frame(config: dict, exps: list[str], scores: dict, responses: dict) -> pd.DataFrame:
    rows = []
    for exp in exps:
        gen = generalisation_set(config, exp)
        hi = train_max_count(config, exp)
        model_cfg = config["models"][config["experiments"][exp]["model"]]
        for stage in fam.stages_of(config, exp):
            s = scores[(exp, stage)]
            recs = responses[(exp, stage)]
            by_count = s["splits"].get(gen, {}).get("by_count", {}) if gen else {}
            rows.append(
                {
                    "experiment": exp,
                    "model": model_label(model_cfg),
                    "stage": fam.stage_label(config, exp, stage),
                    f"test accuracy (counts ≤ {hi})": fam.split_value(s, "test"),
                    "generalisation accuracy": fam.split_value(s, gen) if gen else None,
                    f"accuracy, counts > {hi}": accuracy_beyond(by_count, hi),
                    "test format": fam.split_value(s, "test", "format"),
                    "test reward (0–1.7)": tutorial_reward(recs),
                    "reasoning words": (
                        sum(reasoning_length(r["response"]) for r in recs) / len(recs) if recs else None
                    ),
                }
            )
    return pd.DataFrame(rows)


def build(config: dict, table_cfg: dict, out_md: str, fig_dir: str) -> list[Path]:
    exps = fam.experiments_of(config, NAME, table_cfg)
    scores = fam.read_all({(e, s): fam.scores_path(e, s) for e in exps for s in fam.stages_of(config, e)})
    responses = fam.read_all(
        {(e, s): fam.responses_path(e, s) for e in exps for s in fam.stages_of(config, e)}
    )
    df = counting_frame(config, exps, scores, responses)
    write_table(
        df,
        out_md,
        "Shape counting: accuracy (%) before and after GRPO with the tutorial's reward",
        notes=[
            "test: counts in the training range; generalisation: the extra test set with counts up to its "
            "max_count (training used at most the smaller max_count).",
            "reward: the tutorial's shape_count reward on the test responses (+1.0 correct last number, "
            "+0.5 names the asked shape, +0.2 reasoning words).",
        ],
    )
    fig_dir = Path(fig_dir)
    by_count_png = fig_dir / "accuracy_by_count.png"
    series = {}
    for exp in exps:
        gen = generalisation_set(config, exp) or "test"
        for stage in fam.stages_of(config, exp):
            by_count = scores[(exp, stage)]["splits"].get(gen, {}).get("by_count", {})
            name = fam.stage_label(config, exp, stage)
            label = f"{exp} {name}" if len(exps) > 1 else name
            series[label] = {int(c): v["accuracy"] for c, v in by_count.items()}
    fam.line_plot(series, by_count_png, "accuracy by true count (generalisation set)", "true count")
    length_png = fig_dir / "reasoning_length_accuracy.png"
    reasoning_length_accuracy(
        {
            f"{e} {fam.stage_label(config, e, s)}": reasoning_length_bins(responses[(e, s)])
            for e in exps
            for s in fam.stages_of(config, e)
            if s != "base"
        },
        length_png,
    )
    rewards_png = fig_dir / "grpo_rewards.png"
    grpo_curves({e: read_json(fam.history_path(e)) for e in exps}, rewards_png, grpo_betas(config, exps))
    outputs = [Path(out_md), Path(out_md).with_suffix(".csv"), by_count_png, length_png, rewards_png]
    used = inputs(config, table_cfg) + [fam.history_path(e) for e in exps]
    return fam.finish(outputs, config, table_cfg, used)

"""The ``math_r1`` table: the TRL recipe (format + math-verify accuracy rewards) on multimodal math items.

Rows: experiment × stage (zero-shot, SFT, SFT → GRPO). Columns: val/test accuracy judged by math-verify (the
evaluation's correctness for math items), test accuracy by exact string match of the ``<answer>`` (what a
plain comparison would credit), format compliance and the share of responses with an answer. Figures: the
GRPO reward curves (total and per reward) and test accuracy by stage.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import stage_config
from ..io import read_json
from ..parsing import extract_answer
from . import families as fam
from .figures import grouped_bars, grpo_betas, grpo_curves
from .tables import model_label, write_table

NAME = "math_r1"


def exact_match(records: list[dict]) -> float | None:
    """Accuracy (%) when the ``<answer>`` text must equal the solution (strip, casefold; ``$`` ignored)."""

    def norm(text: str) -> str:
        return text.strip().strip("$").strip().casefold()

    hits = []
    for r in records:
        answer = extract_answer(r.get("response") or "")
        hits.append(answer is not None and norm(answer) == norm(str(r["solution"])))
    return fam.mean_or_none(hits)


def inputs(config: dict, table_cfg: dict) -> list[str]:
    return fam.scores_responses_adapters(config, fam.experiments_of(config, NAME, table_cfg))


def math_frame(config: dict, exps: list[str], scores: dict, responses: dict) -> pd.DataFrame:
    rows = []
    for exp in exps:
        model_cfg = config["models"][config["experiments"][exp]["model"]]
        for stage in fam.stages_of(config, exp):
            s = scores[(exp, stage)]
            rows.append(
                {
                    "experiment": exp,
                    "model": model_label(model_cfg),
                    "stage": fam.stage_label(config, exp, stage),
                    "val accuracy": fam.split_value(s, "val"),
                    "test accuracy": fam.split_value(s, "test"),
                    "test exact match": exact_match(responses[(exp, stage)]),
                    "test format": fam.split_value(s, "test", "format"),
                    "test answered": fam.split_value(s, "test", "answered"),
                }
            )
    return pd.DataFrame(rows)


def build(config: dict, table_cfg: dict, out_md: str, fig_dir: str) -> list[Path]:
    exps = fam.experiments_of(config, NAME, table_cfg)
    scores = fam.read_all({(e, s): fam.scores_path(e, s) for e in exps for s in fam.stages_of(config, e)})
    responses = fam.read_all(
        {(e, s): fam.responses_path(e, s) for e in exps for s in fam.stages_of(config, e)}
    )
    df = math_frame(config, exps, scores, responses)
    rewards = sorted({r for e in exps for r in fam_rewards(config, e)})
    write_table(
        df,
        out_md,
        "Multimodal math (TRL recipe): accuracy (%) before and after GRPO",
        notes=[
            "accuracy: math-verify equivalence of the <answer> with the LaTeX solution (plain string "
            "comparison when the solution does not parse); exact match: the answer text itself.",
            f"GRPO rewards: {', '.join(rewards)}.",
        ],
    )
    fig_dir = Path(fig_dir)
    rewards_png = fig_dir / "grpo_rewards.png"
    grpo_curves({e: read_json(fam.history_path(e)) for e in exps}, rewards_png, grpo_betas(config, exps))
    acc_png = fig_dir / "accuracy_by_stage.png"
    groups = {
        e: {
            fam.stage_label(config, e, s): fam.split_value(scores[(e, s)], "test") or 0.0
            for s in fam.stages_of(config, e)
        }
        for e in exps
    }
    grouped_bars(groups, acc_png, "test accuracy (math-verify) by stage", "accuracy (%)")
    outputs = [Path(out_md), Path(out_md).with_suffix(".csv"), rewards_png, acc_png]
    used = inputs(config, table_cfg) + [fam.history_path(e) for e in exps]
    return fam.finish(outputs, config, table_cfg, used)


def fam_rewards(config: dict, exp: str) -> list[str]:
    """The GRPO reward names an experiment trains with (defaults + its overrides)."""
    return list(stage_config(config, exp, "grpo")["rewards"])

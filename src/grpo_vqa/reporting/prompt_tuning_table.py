"""Table ``prompt_tuning``: soft prompts on the frozen base model vs zero-shot.

The study's prompt-based reasoning induction: one soft prompt (PEFT prompt tuning) trained to answer
directly, one trained to reason first, compared with the zero-shot model. Rows per experiment: zero-shot
(``base``), prompt (direct) (``pt_direct``), prompt (reasoning) (``pt_reason``). Columns: val/test accuracy,
test format compliance and the mean test response length in words (from the generated responses).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.scores import mean_response_words
from ..io import read_json
from ..provenance import write_sidecar
from . import figures
from .tables import model_label, score_at, write_table

SETTINGS = {"base": "zero-shot", "pt_direct": "prompt (direct)", "pt_reason": "prompt (reasoning)"}


def _base(exp: str, stage: str) -> str:
    return f"results/eval/{exp}/{stage}"


def inputs(config: dict, table_cfg: dict) -> list[str]:
    return [
        f"{_base(e, s)}/{name}"
        for e in table_cfg["experiments"]
        for s in SETTINGS
        for name in ("scores.json", "generated_responses_test.json")
    ]


def frame(config: dict, table_cfg: dict) -> pd.DataFrame:
    rows = []
    for exp in table_cfg["experiments"]:
        model_cfg = config["models"][config["experiments"][exp]["model"]]
        for stage, setting in SETTINGS.items():
            scores = read_json(f"{_base(exp, stage)}/scores.json")
            responses = read_json(f"{_base(exp, stage)}/generated_responses_test.json")
            rows.append(
                {
                    "setting": setting,
                    "experiment": exp,
                    "model": model_label(model_cfg),
                    "val accuracy": score_at(scores, "val"),
                    "test accuracy": score_at(scores, "test"),
                    "test format": score_at(scores, "test", "format"),
                    "test response length (words)": round(mean_response_words(responses), 2),
                }
            )
    return pd.DataFrame(rows)


def build(config: dict, table_cfg: dict, out_md: str, fig_dir: str) -> list[Path]:
    df = frame(config, table_cfg)
    write_table(
        df,
        out_md,
        "Soft-prompt tuning (frozen base model): accuracy and format (%) vs zero-shot",
        notes=[
            "prompt (direct): a soft prompt trained on <answer>X</answer> targets; prompt (reasoning): on "
            "<think>…</think><answer>…</answer> targets. The model's weights are not trained.",
            "format: share of responses matching <think>…</think><answer>…</answer> (a direct answer fails it).",
        ],
    )
    groups = {
        f"{r['experiment']} {r['setting']}": {
            "val accuracy": r["val accuracy"] or 0.0,
            "test accuracy": r["test accuracy"] or 0.0,
            "test format": r["test format"] or 0.0,
        }
        for r in df.to_dict("records")
    }
    fig = Path(fig_dir) / "accuracy_format.png"
    figures.grouped_bars(groups, fig, "soft prompts vs zero-shot", "%")
    outputs = [Path(out_md), Path(out_md).with_suffix(".csv"), fig]
    for out in outputs:
        write_sidecar(out, {"table": table_cfg, "seed": config["seed"]}, inputs(config, table_cfg))
    return outputs

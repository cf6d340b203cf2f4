"""Table ``grounding``: grounded reasoning (boxes named as ``x1,y1,x2,y2 object``), in domain and out of it.

The study's DrivingVQA experiment: SFT on reasoning with boxes, LoRA merge, then GRPO with accuracy + format
rewards or with accuracy + format + IoU; evaluated on DrivingVQA and, out of domain, on A-OKVQA. Rows: the
first experiment's zero-shot and SFT stages, then the GRPO stage of every experiment (labelled by its
rewards; the variants share the SFT model through ``sft_from``). Columns: accuracy in domain (val, test)
and on the experiment's first ``eval_datasets`` set (test), format compliance, and the mean IoU between the
boxes named in the reasoning and the ground-truth boxes on the in-domain test split (from its generated
responses; the study's out-of-domain set, A-OKVQA, has no ground-truth boxes).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import stage_config
from ..evaluation.scores import mean_box_iou
from ..io import read_json
from ..provenance import write_sidecar
from . import figures
from .tables import model_label, score_at, write_table

#: The study's out-of-domain (A-OKVQA) accuracies after DrivingVQA training, by row kind. Source:
#: ../shared/reference/study-facts.md ("DrivingVQA → out of domain", the project page).
STUDY_OOD = {"sft": 54.47, "grpo": 57.89, "grpo_iou": 61.31}


def _ood_name(config: dict, exp: str) -> str:
    extra = config["experiments"][exp]["eval_datasets"]
    if not extra:
        raise ValueError(
            f"config key experiments.{exp}.eval_datasets: the grounding table needs an out-of-domain set"
        )
    return extra[0]


def table_rows(config: dict, table_cfg: dict) -> list[dict]:
    """(label, experiment, stage, kind) of every row, in order."""
    exps = list(table_cfg["experiments"])
    rows = [
        {"setting": "zero-shot (base)", "experiment": exps[0], "stage": "base", "kind": "base"},
        {"setting": "SFT", "experiment": exps[0], "stage": "sft", "kind": "sft"},
    ]
    for exp in exps:
        rewards = list(stage_config(config, exp, "grpo")["rewards"])
        kind = "grpo_iou" if "iou" in rewards else "grpo"
        rows.append(
            {"setting": f"GRPO ({' + '.join(rewards)})", "experiment": exp, "stage": "grpo", "kind": kind}
        )
    return rows


def _paths(row: dict) -> tuple[str, str]:
    base = f"results/eval/{row['experiment']}/{row['stage']}"
    return f"{base}/scores.json", base


def inputs(config: dict, table_cfg: dict) -> list[str]:
    out = []
    for row in table_rows(config, table_cfg):
        scores, base = _paths(row)
        _ood_name(config, row["experiment"])  # fail early without an out-of-domain set
        out += [scores, f"{base}/generated_responses_test.json"]
    return list(dict.fromkeys(out))


def frame(config: dict, table_cfg: dict) -> pd.DataFrame:
    records = []
    for row in table_rows(config, table_cfg):
        scores_path, base = _paths(row)
        scores = read_json(scores_path)
        ood = _ood_name(config, row["experiment"])
        iou_in = mean_box_iou(read_json(f"{base}/generated_responses_test.json"))
        model_cfg = config["models"][config["experiments"][row["experiment"]]["model"]]
        records.append(
            {
                "setting": row["setting"],
                "experiment": row["experiment"],
                "model": model_label(model_cfg),
                "val accuracy": score_at(scores, "val"),
                "test accuracy": score_at(scores, "test"),
                "OOD set": ood,
                "OOD accuracy": score_at(scores, f"{ood}-test"),
                "test format": score_at(scores, "test", "format"),
                "test IoU": None if iou_in is None else round(iou_in, 4),
                "study OOD accuracy": STUDY_OOD.get(row["kind"]),
            }
        )
    return pd.DataFrame(records)


def build(config: dict, table_cfg: dict, out_md: str, fig_dir: str) -> list[Path]:
    df = frame(config, table_cfg)
    write_table(
        df,
        out_md,
        "Grounded reasoning: accuracy (%) in and out of domain, and IoU of the boxes named in the reasoning",
        notes=[
            "rows: the first experiment's base and SFT models, then each experiment's GRPO stage (its rewards).",
            "IoU (0-1): per item, the best match of each ground-truth box among the boxes in <think>, averaged; "
            "items without ground-truth boxes are skipped (empty: none had any).",
            "study OOD accuracy: the study's A-OKVQA accuracy after DrivingVQA training (project page).",
        ],
    )
    groups = {
        f"{r['setting']}": {
            "in-domain test accuracy": r["test accuracy"] or 0.0,
            "OOD accuracy": r["OOD accuracy"] or 0.0,
            "test IoU x 100": 100.0 * (r["test IoU"] or 0.0),
        }
        for r in df.to_dict("records")
    }
    fig = Path(fig_dir) / "accuracy_iou.png"
    figures.grouped_bars(groups, fig, "grounded reasoning: accuracy and IoU per variant", "% / IoU x 100")
    outputs = [Path(out_md), Path(out_md).with_suffix(".csv"), fig]
    for out in outputs:
        write_sidecar(out, {"table": table_cfg, "seed": config["seed"]}, inputs(config, table_cfg))
    return outputs

"""The ``sim2real`` table: trained on the synthetic domain (Rel3D slot), tested on the real one (SpatialSense).

The table's experiments take their role from their datasets: the first one trains on the source domain and
names the target domain as its extra test set (``eval_datasets: [<target>]``); an experiment that trains on
the target domain is the ceiling (its SFT row, as the study reports it, or the stages that
``tables.sim2real.ceiling_stages`` names, a key of this table alone; ``eval_datasets: [<source>]`` adds its
source-domain score).
Rows: zero-shot, SFT and SFT → GRPO trained on the source; SFT (and SFT → GRPO) trained on the target. Columns:
accuracy on the source and the target test splits, and the study's reported target accuracy where it has one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import families as fam
from .figures import grouped_bars, reference_comparison
from .tables import model_label, write_table

NAME = "sim2real"
#: The study's SpatialSense test accuracy (%) (../shared/reference/study-facts.md, project page).
STUDY_TARGET = {("source", "sft"): 50.8, ("source", "grpo"): 48.2, ("target", "sft"): 76.5}
ROW_LABELS = {
    ("source", "base"): "zero-shot",
    ("source", "sft"): "SFT on source",
    ("source", "grpo"): "SFT → GRPO on source",
    ("target", "sft"): "SFT on target (ceiling)",
    ("target", "grpo"): "SFT → GRPO on target (ceiling)",
}


def roles(config: dict, table_cfg: dict) -> tuple[str, str, list[tuple[str, str]]]:
    """(source dataset, target dataset, [(experiment, "source" | "target")]), checked against the config."""
    exps = fam.experiments_of(config, NAME, table_cfg)
    first = config["experiments"][exps[0]]
    if not first["eval_datasets"]:
        raise ValueError(
            f"config key experiments.{exps[0]}.eval_datasets: the first sim2real experiment trains on the "
            "source domain and must name the target domain here"
        )
    source, target = first["dataset"], first["eval_datasets"][0]
    out = []
    for i, exp in enumerate(exps):
        cfg = config["experiments"][exp]
        if cfg["dataset"] == source:
            role, other = "source", target
        elif cfg["dataset"] == target:
            role, other = "target", source
        else:
            raise ValueError(
                f"config key tables.{NAME}.experiments.{i}: {exp} trains on {cfg['dataset']!r}, neither the "
                f"source ({source!r}) nor the target ({target!r}) domain"
            )
        if other not in cfg["eval_datasets"]:
            raise ValueError(f"config key experiments.{exp}.eval_datasets: must include {other!r}")
        out.append((exp, role))
    return source, target, out


def stages_for(role: str, table_cfg: dict) -> tuple[str, ...]:
    """The evaluated stages of a member: every stage on the source; the configured ones of the ceiling."""
    if role == "source":
        return ("base", "sft", "grpo")
    return tuple(s for s in ("sft", "grpo") if s in table_cfg["ceiling_stages"])


def inputs(config: dict, table_cfg: dict) -> list[str]:
    _, _, members = roles(config, table_cfg)
    return [fam.scores_path(e, s) for e, role in members for s in stages_for(role, table_cfg)]


def sim2real_frame(config: dict, table_cfg: dict, scores: dict) -> pd.DataFrame:
    source, target, members = roles(config, table_cfg)
    rows = []
    for exp, role in members:
        model_cfg = config["models"][config["experiments"][exp]["model"]]
        for stage in stages_for(role, table_cfg):
            s = scores[(exp, stage)]
            own, extra = "test", f"{target if role == 'source' else source}-test"
            src_split, tgt_split = (own, extra) if role == "source" else (extra, own)
            src_acc, tgt_acc = fam.split_value(s, src_split), fam.split_value(s, tgt_split)
            rows.append(
                {
                    "experiment": exp,
                    "model": model_label(model_cfg),
                    "setting": ROW_LABELS[(role, stage)],
                    "trained on": "—" if stage == "base" else (source if role == "source" else target),
                    "source test accuracy": src_acc,
                    "target test accuracy": tgt_acc,
                    "target − source": None if src_acc is None or tgt_acc is None else tgt_acc - src_acc,
                    "study: target (reported)": STUDY_TARGET.get((role, stage)),
                }
            )
    return pd.DataFrame(rows)


def build(config: dict, table_cfg: dict, out_md: str, fig_dir: str) -> list[Path]:
    source, target, members = roles(config, table_cfg)
    scores = fam.read_all(
        {(e, s): fam.scores_path(e, s) for e, role in members for s in stages_for(role, table_cfg)}
    )
    df = sim2real_frame(config, table_cfg, scores)
    write_table(
        df,
        out_md,
        f"Sim-to-real: accuracy (%) on the source ({source}) and target ({target}) domains",
        notes=[
            "source: the synthetic domain (Rel3D slot); target: the real domain (SpatialSense slot). The ceiling "
            "is trained on the target domain itself.",
            "study: SpatialSense test accuracy reported by the study (SFT / GRPO on Rel3D, SFT on "
            "SpatialSense), for comparison on the real datasets only.",
        ],
    )
    fig = Path(fig_dir) / "source_vs_target.png"
    groups = {
        "source test": dict(zip(df["setting"], df["source test accuracy"].fillna(0.0), strict=True)),
        "target test": dict(zip(df["setting"], df["target test accuracy"].fillna(0.0), strict=True)),
    }
    grouped_bars(groups, fig, "accuracy by test domain", "accuracy (%)")
    study_png = Path(fig_dir) / "vs_study.png"
    reported = df[df["study: target (reported)"].notna()]
    panel = f"target test ({target})"
    reference_comparison(
        {
            panel: dict(
                zip(reported["setting"], reported["target test accuracy"].fillna(float("nan")), strict=True)
            )
        },
        {panel: dict(zip(reported["setting"], reported["study: target (reported)"], strict=True))},
        study_png,
    )
    outputs = [Path(out_md), Path(out_md).with_suffix(".csv"), fig, study_png]
    return fam.finish(outputs, config, table_cfg, inputs(config, table_cfg))

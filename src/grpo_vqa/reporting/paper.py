"""One builder per paper table. Each reads upstream files only and writes the table, its CSV, its figures,
and provenance sidecars."""

from __future__ import annotations

from pathlib import Path

from ..io import read_json
from ..provenance import write_sidecar
from . import figures
from .tables import load_scores, vsr_main_frame, write_table


def build_vsr_main(config: dict, table_cfg: dict, out_md: str, fig_dir: str) -> list[Path]:
    exps = list(table_cfg["experiments"])
    score_paths = {(e, s): f"results/eval/{e}/{s}/scores.json" for e in exps for s in ("base", "sft", "grpo")}
    scores = load_scores(score_paths)
    df = vsr_main_frame(config, exps, scores)
    write_table(
        df,
        out_md,
        "VSR-style spatial relations: accuracy (%) by model and training stage",
        notes=[
            "val/test: held-out splits; format: share of responses matching <think>…</think><answer>…</answer>.",
            "blank image: the test split with every image replaced by grey — chance is 50 %.",
        ],
    )
    hist_paths = {e: f"results/runs/{e}/grpo/adapter/train_history.json" for e in exps}
    outputs = [Path(out_md), Path(out_md).with_suffix(".csv")]
    rewards_png = Path(fig_dir) / "grpo_rewards.png"
    figures.grpo_curves({e: read_json(p) for e, p in hist_paths.items()}, rewards_png)
    rel_png = Path(fig_dir) / "accuracy_by_relation.png"
    groups = {
        f"{e} {s}": {
            k: v["accuracy"] for k, v in scores[(e, s)]["splits"]["test"].get("by_relation", {}).items()
        }
        for e in exps
        for s in ("sft", "grpo")
    }
    figures.grouped_bars(groups, rel_png, "test accuracy by relation", "accuracy (%)")
    outputs += [rewards_png, rel_png]
    inputs = list(score_paths.values()) + list(hist_paths.values())
    for out in outputs:
        write_sidecar(out, {"table": table_cfg, "seed": config["seed"]}, inputs)
    return outputs


BUILDERS = {"vsr_main": build_vsr_main}


def table_inputs(name: str, table_cfg: dict) -> list[str]:
    """Upstream files a table reads (for the Snakemake rule)."""
    exps = list(table_cfg["experiments"])
    if name == "vsr_main":
        return [f"results/eval/{e}/{s}/scores.json" for e in exps for s in ("base", "sft", "grpo")] + [
            f"results/runs/{e}/grpo/adapter" for e in exps
        ]
    raise KeyError(f"tables.{name}: no builder for this table; known: {', '.join(BUILDERS)}")

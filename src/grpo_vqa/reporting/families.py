"""Pieces the experiment-family tables share: upstream paths, per-stage rows, small figures and sidecars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import read_json  # noqa: E402
from ..provenance import write_sidecar  # noqa: E402
from .figures import STYLE, _save  # noqa: E402
from .tables import stage_label  # noqa: E402, F401  (the family tables' row labels)

STAGES = ("base", "sft", "grpo")


def stages_of(config: dict, exp: str) -> tuple[str, ...]:
    """The evaluated stages of an experiment: base, SFT (unless GRPO starts from the base model), GRPO."""
    if config["experiments"][exp]["grpo_from"] == "base":
        return ("base", "grpo")
    return STAGES


def scores_path(exp: str, stage: str) -> str:
    return f"results/eval/{exp}/{stage}/scores.json"


def responses_path(exp: str, stage: str, split: str = "test") -> str:
    return f"results/eval/{exp}/{stage}/generated_responses_{split}.json"


def adapter_dir(exp: str, stage: str = "grpo") -> str:
    return f"results/runs/{exp}/{stage}/adapter"


def history_path(exp: str, stage: str = "grpo") -> str:
    return f"{adapter_dir(exp, stage)}/train_history.json"


def experiments_of(config: dict, table_name: str, table_cfg: dict) -> list[str]:
    """The table's experiments, each checked to exist (one-line error naming the key)."""
    exps = list(table_cfg["experiments"])
    for i, exp in enumerate(exps):
        if exp not in config["experiments"]:
            raise KeyError(f"config key tables.{table_name}.experiments.{i}: unknown experiment {exp!r}")
    return exps


def scores_responses_adapters(config: dict, exps: list[str]) -> list[str]:
    """Every stage's scores and test responses of ``exps``, and their GRPO adapters (a table's inputs)."""
    return (
        [scores_path(e, s) for e in exps for s in stages_of(config, e)]
        + [responses_path(e, s) for e in exps for s in stages_of(config, e)]
        + [adapter_dir(e) for e in exps]
    )


def split_value(scores: dict, split: str, key: str = "accuracy") -> float | None:
    """``scores["splits"][split][key]``, or None when the split was not evaluated."""
    return scores["splits"].get(split, {}).get(key)


def mean_or_none(values: list[float]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def read_all(paths: dict) -> dict:
    return {k: read_json(p) for k, p in paths.items()}


def finish(outputs: list[Path], config: dict, table_cfg: dict, inputs: list[str]) -> list[Path]:
    """A provenance sidecar for every output (table, CSV, figures) listing the upstream files read."""
    for out in outputs:
        write_sidecar(out, {"table": table_cfg, "seed": config["seed"]}, inputs)
    return outputs


def line_plot(
    series: dict[str, dict[float, float | None]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str = "accuracy (%)",
    chance: float | None = None,
    styles: dict[str, str] | None = None,
) -> None:
    """One line per series over numeric x values (``series[name][x] = y``; None values are skipped)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.8, 3.8))
        for name, points in series.items():
            xs = sorted(x for x, y in points.items() if y is not None)
            ax.plot(xs, [points[x] for x in xs], (styles or {}).get(name, "-o"), label=name)
        if chance is not None:
            ax.axhline(chance, color="black", lw=0.8, ls=":", label="chance")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0, 105))
        if ax.lines:
            ax.legend(fontsize=7)
        _save(fig, path)

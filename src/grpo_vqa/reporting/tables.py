"""Paper tables from upstream score files: Markdown + CSV with a provenance sidecar each."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import atomic_write_text, read_json

STAGE_LABELS = {"base": "zero-shot (base)", "sft": "SFT", "grpo": "SFT → GRPO"}


def stage_label(config: dict, exp: str, stage: str) -> str:
    """A stage's row label: GRPO from the base model (``grpo_from: base``, the study's two arms) is "GRPO"."""
    if stage == "grpo" and config["experiments"][exp]["grpo_from"] == "base":
        return "GRPO"
    return STAGE_LABELS[stage]


ARCH_LABELS = {"qwen2_5_vl": "Qwen2.5-VL", "idefics3": "SmolVLM (Idefics3)"}


def model_label(model_cfg: dict) -> str:
    arch = ARCH_LABELS.get(model_cfg["arch"], model_cfg["arch"])
    return f"{arch} tiny" if model_cfg["source"] == "tiny" else f"{arch} {model_cfg['path']}".strip()


def score_at(scores: dict, split: str, key: str = "accuracy") -> float | None:
    return scores["splits"].get(split, {}).get(key)


def vsr_main_frame(config: dict, experiments: list[str], scores: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """Rows: model × stage; columns: val/test accuracy, format compliance, blank-image (text-only) accuracy."""
    rows = []
    for exp in experiments:
        model_cfg = config["models"][config["experiments"][exp]["model"]]
        for stage in ("base", "sft", "grpo"):
            s = scores[(exp, stage)]
            rows.append(
                {
                    "experiment": exp,
                    "model": model_label(model_cfg),
                    "stage": stage_label(config, exp, stage),
                    "val accuracy": score_at(s, "val"),
                    "test accuracy": score_at(s, "test"),
                    "test format": score_at(s, "test", "format"),
                    "test accuracy, blank image": score_at(s, "test-blank"),
                }
            )
    return pd.DataFrame(rows)


def seed_summary(values: list[float | None], confidence: float = 0.95) -> tuple[float | None, ...]:
    """Mean and two-sided t-interval (``scipy.stats.t``, n - 1 degrees of freedom, standard error of the mean)
    of per-seed values; seeds without a value are left out. ``(mean, low, high)``; the interval is None with
    fewer than two values and collapses to the mean when every seed gives the same value."""
    from scipy import stats

    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None, None
    sem = float(stats.sem(vals))
    if sem == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(vals) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def vsr_main_seeds_frame(
    config: dict, experiments: list[str], seeds: list[int], scores: dict[tuple[str, int, str], dict]
) -> pd.DataFrame:
    """Rows: model × stage; columns: test accuracy of every seed, their mean and 95 % t-interval, and the
    means over seeds of val accuracy, format compliance and blank-image accuracy.
    ``scores[(exp, seed, stage)]`` is that replicate's scores.json."""
    rows = []
    for exp in experiments:
        model_cfg = config["models"][config["experiments"][exp]["model"]]
        for stage in ("base", "sft", "grpo"):
            per_seed = [scores[(exp, seed, stage)] for seed in seeds]
            row = {
                "experiment": exp,
                "model": model_label(model_cfg),
                "stage": stage_label(config, exp, stage),
            }
            test = [score_at(s, "test") for s in per_seed]
            row |= {f"test accuracy, seed {seed}": v for seed, v in zip(seeds, test, strict=True)}
            mean, low, high = seed_summary(test)
            row |= {
                "test accuracy, mean": mean,
                "test accuracy, 95 % CI low": low,
                "test accuracy, 95 % CI high": high,
            }
            for col, split, key in (
                ("val accuracy, mean", "val", "accuracy"),
                ("test format, mean", "test", "format"),
                ("test accuracy, blank image, mean", "test-blank", "accuracy"),
            ):
                row[col] = seed_summary([score_at(s, split, key) for s in per_seed])[0]
            rows.append(row)
    return pd.DataFrame(rows)


def append_note(md_path: str | Path, note: str) -> None:
    """Add one ``- note`` line to the notes under a table written by :func:`write_table`."""
    md_path = Path(md_path)
    text = md_path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    sep = "" if last.startswith("- ") else "\n"
    atomic_write_text(md_path, f"{text}{sep}- {note}\n")


def write_table(df: pd.DataFrame, md_path: str | Path, title: str, notes: list[str] | None = None) -> None:
    """Write ``<name>.md`` (title, table, notes) and ``<name>.csv`` beside it."""
    md_path = Path(md_path)
    df.to_csv(md_path.with_suffix(".csv"), index=False)
    body = df.to_markdown(index=False, floatfmt=".2f")
    text = f"# {title}\n\n{body}\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(md_path, text)


def load_scores(paths: dict[tuple[str, str], str]) -> dict[tuple[str, str], dict]:
    return {k: read_json(p) for k, p in paths.items()}

"""Paper tables from upstream score files: Markdown + CSV with a provenance sidecar each."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import atomic_write_text, read_json

STAGE_LABELS = {"base": "zero-shot (base)", "sft": "SFT", "grpo": "SFT → GRPO"}
ARCH_LABELS = {"qwen2_5_vl": "Qwen2.5-VL", "idefics3": "SmolVLM (Idefics3)"}


def model_label(model_cfg: dict) -> str:
    arch = ARCH_LABELS.get(model_cfg["arch"], model_cfg["arch"])
    return (
        f"{arch} tiny" if model_cfg["source"] == "tiny" else f"{arch} {model_cfg.get('path') or ''}".strip()
    )


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
                    "stage": STAGE_LABELS[stage],
                    "val accuracy": score_at(s, "val"),
                    "test accuracy": score_at(s, "test"),
                    "test format": score_at(s, "test", "format"),
                    "test accuracy, blank image": score_at(s, "test-blank"),
                }
            )
    return pd.DataFrame(rows)


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

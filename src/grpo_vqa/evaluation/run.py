"""Evaluate one model on a dataset's splits (plus extra test sets and the blank-image probe)."""

from __future__ import annotations

from pathlib import Path

from ..data.build import load_split
from ..io import atomic_write_json
from ..provenance import config_hash, path_fingerprint
from .generate import evaluate_split
from .scores import split_scores


def model_fingerprint(model_path: str, cfg: dict) -> str:
    """Identity of the model files plus the evaluation settings (cached responses are valid for both only)."""
    return config_hash({"model": path_fingerprint(model_path), "cfg": cfg})[:16]


def load_eval_model(model_path: str, dtype: str = "float32"):
    """A model directory or hub id, a soft-prompt adapter directory (loaded onto its frozen base model), or a
    LoRA adapter directory (merged into its base model in memory, as rule merge_lora would on disk)."""
    from ..models.loading import load_model
    from ..models.merge import is_lora_adapter, merged_model
    from ..models.soft_prompt import is_prompt_adapter, load_prompt_adapter

    if is_prompt_adapter(model_path):
        return load_prompt_adapter(model_path, dtype=dtype)
    if is_lora_adapter(model_path):
        return merged_model(model_path, dtype=dtype)
    return load_model(model_path, dtype=dtype)


def evaluation_sets(
    data_dir: str, splits: list[str], extra: dict[str, str], blank_probe: bool
) -> list[tuple]:
    """(name, dataset dir, split, blank) for everything one evaluation job covers."""
    sets = [(s, data_dir, s, False) for s in splits]
    if blank_probe:
        sets.append(("test-blank", data_dir, "test", True))
    sets += [(f"{name}-test", d, "test", False) for name, d in extra.items()]
    return sets


def evaluate_model(
    model_path: str,
    data_dir: str,
    out_dir: str | Path,
    cache_dir: str | Path,
    cfg: dict,
    extra: dict[str, str] | None = None,
) -> dict:
    """Write ``generated_responses_<name>.json`` per set and ``scores.json``; return the scores."""
    from ..models.loading import load_processor

    out_dir = Path(out_dir)
    # Cached responses are only valid for this model and these settings: key the cache on both.
    cache_dir = Path(cache_dir) / model_fingerprint(model_path, cfg)
    model = load_eval_model(model_path, dtype=cfg["dtype"])
    model.eval()
    processor = load_processor(model_path, padding_side="left")
    scores: dict = {"model": model_path, "splits": {}}
    sets = evaluation_sets(data_dir, list(cfg["splits"]), extra or {}, bool(cfg["blank_image_probe"]))
    for name, ddir, split, blank in sets:
        ds = load_split(ddir, split)
        if cfg["limit"]:
            ds = ds.select(range(min(int(cfg["limit"]), len(ds))))
        records = evaluate_split(
            model,
            processor,
            ds,
            cache_dir / f"{name}.jsonl",
            cfg["system_prompt"],
            int(cfg["max_new_tokens"]),
            int(cfg["batch_size"]),
            blank=blank,
            desc=f"eval {name}",
            correctness=cfg["correctness"],
            answer_without_tags=bool(cfg["answer_without_tags"]),
            next_token_labels=cfg["next_token_labels"],
        )
        atomic_write_json(out_dir / f"generated_responses_{name}.json", records)
        scores["splits"][name] = split_scores(records)
    atomic_write_json(out_dir / "scores.json", scores)
    return scores

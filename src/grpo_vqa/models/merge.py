"""Merge a LoRA adapter into its base model (PEFT ``merge_and_unload``) and save a full model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..io import replace_dir


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model path recorded in the adapter's ``adapter_config.json``."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return cfg["base_model_name_or_path"]


def is_lora_adapter(path: str | Path) -> bool:
    """An adapter-only directory holding a LoRA adapter (not a full model, not a soft prompt)."""
    d = Path(path)
    if not (d / "adapter_config.json").is_file() or (d / "config.json").is_file():
        return False
    return json.loads((d / "adapter_config.json").read_text()).get("peft_type") == "LORA"


def merged_model(adapter_dir: str | Path, dtype: str = "float32"):
    """The base model with the LoRA adapter merged in (``merge_and_unload``), in memory: the weights
    :func:`merge_adapter` writes, so evaluating it gives what evaluating the saved merged model gives."""
    from peft import PeftModel

    from .loading import load_model  # torch and transformers: imported when a model is loaded

    base = load_model(adapter_base(adapter_dir), dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    from .loading import load_processor

    adapter_dir = Path(adapter_dir)
    merged = merged_model(adapter_dir, dtype=dtype)
    tmp = Path(str(out_dir) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    merged.save_pretrained(str(tmp))
    load_processor(str(adapter_dir)).save_pretrained(str(tmp))
    for extra in ("train_history.json",):
        if (adapter_dir / extra).exists():
            shutil.copy(adapter_dir / extra, tmp / extra)
    replace_dir(tmp, out_dir)
    return Path(out_dir)

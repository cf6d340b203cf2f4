"""Merge a LoRA adapter into its base model (PEFT ``merge_and_unload``) and save a full model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .common import replace_dir


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model path recorded in the adapter's ``adapter_config.json``."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return cfg["base_model_name_or_path"]


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    from peft import PeftModel

    from ..models.loading import load_model, load_processor

    adapter_dir = Path(adapter_dir)
    base = load_model(adapter_base(adapter_dir), dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
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

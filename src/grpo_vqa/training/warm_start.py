"""Warm start of a tiny model: full fine-tuning on scene descriptions (see :mod:`grpo_vqa.data.pretrain`)."""

from __future__ import annotations

from pathlib import Path

from ..data.pretrain import make_pretrain_items, scene_mix
from ..data.schema import prompt_messages
from .common import TrainJob
from .sft import run_sft


def pretrain_rows(n: int, seed: int, size: int, **item_kwargs):
    import datasets

    items = make_pretrain_items(n, seed, size=size, **item_kwargs)
    rows = [
        {
            "prompt": prompt_messages(it["problem"], None),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": it["text"]}]}],
            "image": it["image"],
        }
        for it in items
    ]
    return datasets.Dataset.from_list(rows)


def warm_start(
    model_dir: str | Path, out_dir: str | Path, ckpt_dir: str | Path, cfg: dict, seed: int, size: int
):
    """Pretrain ``model_dir`` for ``cfg['steps']`` steps and save the full model to ``out_dir``.

    ``cfg`` is a filled ``models.<name>.pretrain`` block (the scene mix included: the schema's defaults)."""
    # a complete training section in TRL's names (as sft_args reads one): the warm start's fixed recipe
    train_cfg = {
        "max_steps": int(cfg["steps"]),
        "num_train_epochs": 3.0,  # TRL's default; max_steps wins
        "learning_rate": float(cfg["lr"]),
        "per_device_train_batch_size": int(cfg["batch_size"]),
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.03,
        "save_steps": max(50, int(cfg["steps"]) // 4),
        "fp16": False,
        "gradient_checkpointing": False,
    }
    rows = pretrain_rows(int(cfg["n_images"]), seed, size, **scene_mix(cfg))
    return run_sft(TrainJob(model_dir, rows, out_dir, ckpt_dir, train_cfg, seed), use_lora=False)

"""Supervised fine-tuning with TRL ``SFTTrainer`` (LoRA via PEFT, or full fine-tuning for warm starts).

Checkpoints go to ``ckpt_dir`` (not a Snakemake output, so a failed or killed job keeps them); a rerun resumes
from the newest complete one with optimizer, scheduler and RNG state. Only the final model directory is
written to ``out_dir``, atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .common import (
    latest_complete_checkpoint,
    lora_config,
    make_complete_marker_callback,
    prompt_messages,
    replace_dir,
    shared_trainer_kwargs,
    target_text,
    with_images,
)
from .progress import LogProgress

log = logging.getLogger(__name__)


def sft_rows(ds, system_prompt: str | None, completion_field: str | None = None):
    """Prompt-completion conversational rows (plus ``image``) from a task split.

    The completion is ``<think>reasoning</think><answer>solution</answer>``, or the raw ``completion_field``
    column when given (captioning warm start, direct-answer prompt tuning).
    """

    def to_row(ex):
        text = ex[completion_field] if completion_field else target_text(ex["reasoning"], ex["solution"])
        return {
            "prompt": prompt_messages(ex["problem"], system_prompt),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": text}]}],
        }

    ds = with_images(ds)
    keep = {"prompt", "completion", "image"}
    return ds.map(to_row, remove_columns=[c for c in ds.column_names if c not in keep])


def run_sft(
    model_path: str,
    train_rows,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    cfg: dict,
    seed: int,
    use_lora: bool = True,
    log_dir: str | Path | None = None,
    dtype: str = "float32",
    logging_cfg: dict | None = None,
) -> dict:
    """Train and save the final model (LoRA adapter or full weights) plus processor to ``out_dir``."""
    from trl import SFTConfig, SFTTrainer

    from ..models.loading import load_model, load_processor

    ckpt_dir = Path(ckpt_dir)
    model = load_model(model_path, dtype=dtype)
    processor = load_processor(model_path, padding_side="right")
    args = SFTConfig(
        **shared_trainer_kwargs(cfg, ckpt_dir, seed, log_dir, dtype, logging_cfg),
        lr_scheduler_type=cfg.get("lr_scheduler", "cosine"),
        warmup_steps=float(cfg.get("warmup_ratio", 0.0)),  # a float in [0, 1) is a ratio
        max_length=None,  # a length limit could cut image tokens
        completion_only_loss=True,
        logging_steps=max(1, int(cfg["max_steps"]) // 25),
        save_steps=int(cfg.get("save_steps", 50)),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        processing_class=processor,
        peft_config=lora_config(cfg["lora"]) if use_lora else None,
        # the token count is saved before the completion marker (callbacks run in this order)
        callbacks=[
            _token_count_callback(lambda: trainer),
            make_complete_marker_callback(),
            LogProgress("sft"),
        ],
    )
    resume = latest_complete_checkpoint(ckpt_dir)
    if resume is not None:
        log.info("resuming SFT from %s", resume)
        print(f"[sft] resuming from {resume}", flush=True)
        _restore_token_count(trainer, resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    tmp = Path(str(out_dir) + ".tmp")
    trainer.save_model(str(tmp))
    processor.save_pretrained(str(tmp))
    history = [h for h in trainer.state.log_history if "loss" in h]
    (tmp / "train_history.json").write_text(json.dumps(history, indent=1))
    replace_dir(tmp, out_dir)
    return {"history": history, "resumed_from": str(resume) if resume else None}


TOKEN_COUNT_FILE = "num_tokens.json"


def _token_count_callback(get_trainer):
    """Saves SFTTrainer's token counter into each checkpoint (before the completion marker is written).

    TRL counts the ``num_tokens`` metric in ``SFTTrainer._total_train_tokens``, which is not part of the
    Trainer's saved state and restarts at 0 in a resumed process; without this, every history entry after a
    resume would under-count (and differ from an uninterrupted run's).
    """
    from transformers import TrainerCallback

    class TokenCount(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            trainer = get_trainer()
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir() and hasattr(trainer, "_total_train_tokens"):
                (folder / TOKEN_COUNT_FILE).write_text(
                    json.dumps({"num_tokens": trainer._total_train_tokens})
                )
            return control

    return TokenCount()


def _restore_token_count(trainer, checkpoint: Path) -> None:
    path = checkpoint / TOKEN_COUNT_FILE
    if path.is_file() and hasattr(trainer, "_total_train_tokens"):
        trainer._total_train_tokens = json.loads(path.read_text())["num_tokens"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

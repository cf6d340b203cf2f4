"""Supervised fine-tuning with TRL ``SFTTrainer`` (LoRA via PEFT, or full fine-tuning for warm starts).

Checkpoints go to ``ckpt_dir`` (not a Snakemake output, so a failed or killed job keeps them); a rerun resumes
from the newest complete one with optimizer, scheduler and RNG state. Only the final model directory is
written to ``out_dir``, atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.schema import prompt_messages
from . import collate
from .common import (
    TrainJob,
    lora_config,
    make_complete_marker_callback,
    shared_trainer_kwargs,
    target_text,
    train_resume_save,
    with_images,
)
from .progress import LogProgress


def sft_rows(
    ds, system_prompt: str | None, completion_field: str | None = None, target: str = "think_answer"
):
    """Prompt-completion conversational rows (plus ``image``) from a task split.

    The completion is :func:`~grpo_vqa.training.common.target_text` of ``target`` (``think_answer``:
    ``<think>reasoning</think><answer>solution</answer>``; ``answer``: the bare solution; ``mixed``: the two
    formats split over the items by id), or the raw ``completion_field`` column when given (captioning warm
    start, prompt tuning).
    """
    target_text("", "", target)  # reject an unknown target before touching the data

    def to_row(ex):
        text = (
            ex[completion_field]
            if completion_field
            else target_text(ex["reasoning"], ex["solution"], target, ex["id"])
        )
        return {
            "prompt": prompt_messages(ex["problem"], system_prompt),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": text}]}],
        }

    ds = with_images(ds)
    keep = {"prompt", "completion", "image"}
    return ds.map(to_row, remove_columns=[c for c in ds.column_names if c not in keep])


def sft_args(job: TrainJob):
    """The ``SFTConfig`` of a supervised stage (SFT, warm start, soft-prompt tuning) from its flat section."""
    from trl import SFTConfig

    cfg = job.cfg
    return SFTConfig(
        **shared_trainer_kwargs(job),
        warmup_steps=float(cfg["warmup_ratio"]),  # a float in [0, 1) is a ratio
        max_length=None,  # a length limit could cut image tokens
        completion_only_loss=True,
        logging_steps=max(1, int(cfg["max_steps"]) // 25),  # every step when max_steps is -1 (epochs)
    )


def run_sft(job: TrainJob, use_lora: bool = True) -> dict:
    """Train and save the final model (LoRA adapter or full weights) plus processor to ``job.out_dir``."""
    from trl import SFTTrainer

    from ..models.loading import load_model, load_processor

    model = load_model(job.model_path, dtype=job.dtype)
    processor = load_processor(job.model_path, padding_side="right")
    trainer = SFTTrainer(
        model=model,
        args=sft_args(job),
        train_dataset=job.train_rows,
        processing_class=processor,
        peft_config=lora_config(job.cfg["lora"]) if use_lora else None,
        # the token count is saved before the completion marker (callbacks run in this order)
        callbacks=[
            _token_count_callback(lambda: trainer),
            make_complete_marker_callback(),
            LogProgress("sft"),
        ],
    )
    collate.install(trainer, processor)  # each row's tensors built once, not once per epoch (same batches)
    return train_resume_save(
        trainer,
        processor,
        job.ckpt_dir,
        job.out_dir,
        "sft",
        "loss",
        on_resume=lambda ck: _restore_token_count(trainer, ck),
    )


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

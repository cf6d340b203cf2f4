"""Soft-prompt tuning: PEFT ``PromptTuningConfig`` with TRL ``SFTTrainer``; the base model stays frozen.

Two targets (the study's "prompt-based reasoning induction"): ``direct`` trains the prompt to make the model
answer at once (``<answer>X</answer>``), ``reason`` to reason first (``<think>…</think><answer>…</answer>``,
the SFT targets). SFTTrainer takes the ``PromptTuningConfig`` as its ``peft_config`` and works with image
inputs for both architectures: PEFT prepends the virtual tokens to the embeddings, pads the labels and the
attention mask, and the models find their image slots by embedding. One fix is needed for Qwen2.5-VL, whose
3D rotary positions PEFT drops (:func:`grpo_vqa.models.soft_prompt.attach_mrope_positions`).

Checkpoints and resume as in :mod:`grpo_vqa.training.sft` (``train_resume_save``): the final adapter
(``adapter_config.json`` + the virtual-token embeddings) and the processor are written atomically to
``out_dir``.
"""

from __future__ import annotations

from ..models.soft_prompt import attach_mrope_positions
from . import collate
from .common import TrainJob, make_complete_marker_callback, target_text, train_resume_save
from .progress import LogProgress
from .sft import sft_args, sft_rows

TARGETS = ("direct", "reason")
#: ``completion`` values: ``<answer>X</answer>``; the bare answer; the SFT target with the item's reasoning;
#: the GRPO model's own responses to the training prompts (distillation; rule prompt_tuning reads them).
COMPLETIONS = ("tagged", "answer", "think_answer", "grpo_responses")


def completion_kind(target: str, cfg: dict) -> str:
    """The ``completion`` a recipe trains on (config/config.yaml: ``direct: tagged``, ``reason: think_answer``)."""
    if target not in TARGETS:
        raise ValueError(f"prompt tuning target {target!r}: expected one of {', '.join(TARGETS)}")
    kind = cfg["completion"]
    if kind not in COMPLETIONS:
        raise ValueError(
            f"config key prompt_tuning.{target}.completion: {kind!r} not in {', '.join(COMPLETIONS)}"
        )
    return kind


def completion_for(kind: str, reasoning: str, solution: str) -> str:
    """The text a soft prompt is trained to produce for one item (not for ``grpo_responses``)."""
    if kind == "tagged":
        return f"<answer>{solution}</answer>"
    if kind == "answer":
        return str(solution)
    if kind == "think_answer":
        return target_text(reasoning, solution)
    raise ValueError(f"prompt tuning completion {kind!r}: expected tagged, answer or think_answer")


def prompt_tuning_rows(ds, system_prompt: str | None, target: str, cfg: dict, responses=None):
    """Prompt-completion rows (plus ``image``) whose completion is the recipe's form of each item.

    With ``completion: grpo_responses`` the completion is the GRPO model's response to the item (the
    ``response`` of its record in ``responses``, a generated-responses list); items without one are left
    out, and an empty join is an error."""
    kind = completion_kind(target, cfg)
    if kind == "grpo_responses":
        if not responses:
            raise ValueError("prompt tuning on grpo_responses: no generated responses were given")
        by_id = {str(r["id"]): str(r["response"]) for r in responses}
        ds = ds.filter(lambda ex: str(ex["id"]) in by_id)
        if len(ds) == 0:
            raise ValueError("prompt tuning on grpo_responses: no training item has a generated response")
        ds = ds.map(lambda ex: {"pt_completion": by_id[str(ex["id"])]})
    else:
        ds = ds.map(lambda ex: {"pt_completion": completion_for(kind, ex["reasoning"], ex["solution"])})
    return sft_rows(ds, system_prompt, completion_field="pt_completion")


def prompt_tuning_config(cfg: dict, tokenizer_path: str):
    """A PEFT ``PromptTuningConfig`` from the pipeline's ``prompt_tuning`` section (PEFT's names:
    ``num_virtual_tokens``, ``prompt_tuning_init`` TEXT / RANDOM, ``prompt_tuning_init_text``)."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    init = PromptTuningInit(cfg["prompt_tuning_init"])
    text = {}
    if init == PromptTuningInit.TEXT:
        text = {
            "prompt_tuning_init_text": cfg["prompt_tuning_init_text"],
            "tokenizer_name_or_path": str(tokenizer_path),
        }
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=int(cfg["num_virtual_tokens"]),
        prompt_tuning_init=init,
        **text,
    )


def run_prompt_tuning(job: TrainJob) -> dict:
    """Train one soft prompt on the frozen ``job.model_path``; save the adapter plus processor to ``job.out_dir``."""
    from trl import SFTTrainer

    from ..models.loading import load_model, load_processor

    model = load_model(job.model_path, dtype=job.dtype)
    processor = load_processor(job.model_path, padding_side="right")
    peft_config = prompt_tuning_config(job.cfg, job.model_path)
    trainer = SFTTrainer(
        model=model,
        args=sft_args(job),
        train_dataset=job.train_rows,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[make_complete_marker_callback(), LogProgress("prompt_tuning")],
    )
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    if not trainable or any("prompt_encoder" not in n for n in trainable):
        raise RuntimeError(f"prompt tuning must train the soft prompt only; trainable: {trainable[:5]}")
    attach_mrope_positions(trainer.model)
    collate.install(trainer, processor)
    return train_resume_save(trainer, processor, job.ckpt_dir, job.out_dir, "prompt_tuning", "loss")

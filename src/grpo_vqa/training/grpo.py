"""GRPO with TRL ``GRPOTrainer`` + LoRA, rewards chosen by name from :mod:`grpo_vqa.rewards`.

Like :mod:`grpo_vqa.training.sft`: checkpoints in ``ckpt_dir`` (resumed from the newest complete one, with
optimizer, scheduler and RNG state), final adapter written atomically to ``out_dir`` with the per-step
reward history (``train_history.json``, whose entries also hold ``rollouts_per_second``) and the run's rollout
rate (``rollout_rate.json``: engine, rollouts, training time, rollouts/s; also printed as one ``[grpo] rate:``
line).
"""

from __future__ import annotations

from ..data.schema import prompt_messages
from ..rewards import get_reward_funcs
from .common import (
    TrainJob,
    lora_config,
    make_complete_marker_callback,
    shared_trainer_kwargs,
    train_resume_save,
    with_images,
)
from .progress import LogProgress, RolloutRate

# Dataset columns handed to reward functions (TRL passes every non-prompt column as a keyword argument).
REWARD_COLUMNS = ("solution", "boxes", "target_shape", "choices", "relation", "task")


def grpo_rows(ds, system_prompt: str | None):
    """Conversational prompts with an ``image`` column, keeping the columns rewards need."""
    ds = with_images(ds)
    ds = ds.map(lambda ex: {"prompt": prompt_messages(ex["problem"], system_prompt)})
    keep = {"prompt", "image", *REWARD_COLUMNS}
    return ds.remove_columns([c for c in ds.column_names if c not in keep])


def grpo_args(job: TrainJob):
    """A ``GRPOConfig`` from the pipeline's flat ``grpo`` section (``job.cfg``)."""
    from trl import GRPOConfig

    cfg = job.cfg
    return GRPOConfig(
        **shared_trainer_kwargs(job),
        num_generations=int(cfg["num_generations"]),
        max_completion_length=int(cfg["max_completion_length"]),
        temperature=float(cfg["temperature"]),
        top_p=float(cfg["top_p"]),
        top_k=int(cfg["top_k"]),
        beta=float(cfg["beta"]),
        loss_type=cfg["loss_type"],
        reward_weights=cfg["reward_weights"],
        logging_steps=1,
        remove_unused_columns=False,
        log_completions=False,
    )


def trainer_class(engine: str):
    """TRL's GRPOTrainer, or the fast rollout engine's subclass of it (both with a resumable data order)."""
    if engine == "hf":
        from trl import GRPOTrainer

        base = GRPOTrainer
    else:
        from ..rollout import grpo_trainer_class

        base = grpo_trainer_class(engine)
    return _resumable(base)


def epoch_seeded_repeat_sampler_class():
    """TRL's ``RepeatSampler`` whose permutation for epoch ``e`` does not depend on what ran before.

    TRL's sampler draws one ``randperm`` per epoch from a generator seeded once, so epoch ``e`` uses the
    ``e+1``-th permutation -- but a run resumed in epoch ``e`` builds a fresh sampler and would draw the
    *first* one (and skip the first batches of the wrong order). ``set_epoch`` (called by the Trainer and by
    accelerate at the start of every epoch) reseeds and replays ``e`` permutations, so uninterrupted runs keep
    TRL's exact order and resumed runs get the same one.
    """
    import torch
    from trl.trainer.utils import RepeatSampler

    class EpochSeededRepeatSampler(RepeatSampler):
        def set_epoch(self, epoch: int) -> None:
            if not self.shuffle or self.seed is None:
                return
            self.generator.manual_seed(self.seed)
            for _ in range(int(epoch)):
                torch.randperm(self.num_samples, generator=self.generator)

    return EpochSeededRepeatSampler


def _resumable(base: type) -> type:
    """A subclass of a GRPO trainer class whose training sampler is :func:`epoch_seeded_repeat_sampler_class` and
    which reports the rollouts it generates to ``self.rollout_rate`` (a :class:`RolloutRate`, when attached)."""
    sampler_cls = epoch_seeded_repeat_sampler_class()

    class Resumable(base):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            rate = getattr(self, "rollout_rate", None)
            if rate is not None and self.model.training:  # every process's completions (equal shares)
                rate.add(len(output["completion_ids"]) * self.accelerator.num_processes)
            return output

        def _get_train_sampler(self, dataset=None):
            sampler = super()._get_train_sampler(dataset)
            if type(sampler) is not sampler_cls.__bases__[0]:
                return sampler
            return sampler_cls(
                data_source=sampler.data_source,
                mini_repeat_count=sampler.mini_repeat_count,
                batch_size=sampler.batch_size,
                repeat_count=sampler.repeat_count,
                shuffle=sampler.shuffle,
                seed=sampler.seed,
            )

    Resumable.__name__ = Resumable.__qualname__ = f"Resumable{base.__name__}"
    return Resumable


def rollout_engine_for(cfg: dict, model) -> tuple[str, str]:
    """``(engine, reason)`` for the ``grpo`` section's ``rollout_engine`` (``hf``, ``fast`` or ``auto``) and the
    loaded model: ``auto`` takes the fast engine on CUDA with a model type it supports, TRL's path otherwise."""
    import torch

    from ..rollout.config import choose_engine

    return choose_engine(
        cfg["rollout_engine"],
        getattr(getattr(model, "config", None), "model_type", None),
        torch.cuda.is_available(),
        cfg["launch"]["deepspeed_stage"],
    )


def run_grpo(job: TrainJob) -> dict:
    """GRPO with LoRA from ``job.model_path``; saves the adapter, processor and rollout rate to ``job.out_dir``."""
    from ..models.loading import load_model, load_processor

    cfg = job.cfg
    model = load_model(job.model_path, dtype=job.dtype)
    processor = load_processor(job.model_path, padding_side="left")
    engine, why = rollout_engine_for(cfg, model)
    print(f"[grpo] rollout engine: {engine} ({why})", flush=True)
    rate = RolloutRate("grpo", engine, why)
    extra = {}
    if engine == "fast":
        from ..rollout import RolloutConfig

        extra["rollout_config"] = RolloutConfig.from_dict({**cfg["rollout"], "engine": "fast"})
    trainer = trainer_class(engine)(
        **extra,
        model=model,
        reward_funcs=get_reward_funcs(list(cfg["rewards"])),
        args=grpo_args(job),
        train_dataset=job.train_rows,
        processing_class=processor,
        peft_config=lora_config(cfg["lora"]),
        callbacks=[make_complete_marker_callback(), LogProgress("grpo"), rate],
    )
    rate.attach(trainer)
    result = train_resume_save(
        trainer,
        processor,
        job.ckpt_dir,
        job.out_dir,
        "grpo",
        "reward",
        extra_files=lambda: {"rollout_rate.json": rate.summary()},
    )
    return {**result, "rollout_rate": rate.summary()}

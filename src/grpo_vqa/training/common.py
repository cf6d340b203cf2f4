"""Pieces shared by the trainers: threads and seeds, datasets with images, LoRA configs, checkpoints."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data.images import load_image
from ..data.scenes import blank_like
from ..io import atomic_write_text, replace_dir
from ..launch import world_size
from ..progress import is_tty
from ..provenance import config_hash, path_fingerprint
from ..walltime import WALLTIME_SIGNAL, WalltimeStop
from .progress import report_to

COMPLETE_MARKER = ".complete"


def setup_runtime(seed: int, threads: int | None) -> None:
    """Seed Python, NumPy and torch; cap torch threads (two jobs on two cores must not oversubscribe)."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainJob:
    """One training run: what SFT, GRPO, soft-prompt tuning and the warm start each take.

    Fields:
        model_path: the model directory to start from.
        train_rows: the training rows (a ``datasets.Dataset`` in the trainer's format).
        out_dir: the final artefact's folder (the rule's output, written atomically at the end).
        ckpt_dir: checkpoints (kept across retries, not a Snakemake output); a rerun resumes from the newest.
        cfg: the trainer's complete section (``sft``, ``grpo``, ``prompt_tuning`` or the warm start's), TRL's
            names, read without fallbacks.
        seed: the run's seed (TrainingArguments ``seed`` and ``data_seed``).
        log_dir: TensorBoard folder (``None``: no TensorBoard).
        dtype: the weights' dtype (``models.<m>.dtype``; float32, the schema's default, on CPUs).
        logging_cfg: the config's ``logging`` section (Weights & Biases); ``None``: TensorBoard only.
    """

    model_path: str
    train_rows: Any
    out_dir: Path
    ckpt_dir: Path
    cfg: dict
    seed: int
    log_dir: Path | None = None
    dtype: str = "float32"
    logging_cfg: dict | None = None

    def __post_init__(self):
        self.model_path = str(self.model_path)
        self.out_dir, self.ckpt_dir = Path(self.out_dir), Path(self.ckpt_dir)


def shared_trainer_kwargs(job: TrainJob) -> dict:
    """TrainingArguments both trainers take the same way (checkpointing, logging, seeds, precision, device).

    ``job.cfg`` is a complete training section (config/config.yaml holds every key's default) in TRL's names, read
    without fallbacks. Logs go to TensorBoard under ``log_dir``, and to Weights & Biases when
    ``logging_cfg.wandb.enabled``. ``per_device_train_batch_size`` is per process (TRL's meaning); the running
    world size must match ``cfg["launch"]`` (a section without ``launch``, e.g. prompt tuning's, runs one process).
    """
    import torch

    cfg, seed = job.cfg, job.seed
    stage = "grpo" if "num_generations" in cfg else "sft"
    check_world_size(cfg.get("launch"), f"{stage}.launch")

    # fp16 mixed precision (the study's) is a GPU setting: on CPUs the model runs in its weights' dtype
    fp16 = bool(cfg["fp16"]) and torch.cuda.is_available()
    return {
        "output_dir": str(job.ckpt_dir),
        # TRL's meaning: max_steps -1 trains num_train_epochs epochs; a positive max_steps wins over epochs
        "max_steps": int(cfg["max_steps"]),
        "num_train_epochs": float(cfg["num_train_epochs"]),
        "learning_rate": float(cfg["learning_rate"]),
        "per_device_train_batch_size": int(cfg["per_device_train_batch_size"]),
        "gradient_accumulation_steps": int(cfg["gradient_accumulation_steps"]),
        "lr_scheduler_type": cfg["lr_scheduler_type"],
        "save_steps": int(cfg["save_steps"]),
        "save_strategy": "steps",
        "save_total_limit": 2,
        "report_to": report_to(job.log_dir, job.logging_cfg),
        "seed": seed,
        "data_seed": seed,
        "bf16": job.dtype == "bfloat16" and not fp16,  # TRL defaults to bf16, very slow on CPUs without AMX
        **({"fp16": True} if fp16 else {}),
        "gradient_checkpointing": bool(cfg["gradient_checkpointing"]),
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": dataloader_workers(torch.get_num_threads()),
        "disable_tqdm": not is_tty(),  # logs get LogProgress lines instead of a carriage-return bar
    }


def dataloader_workers(threads: int) -> int:
    """Data-loader worker processes for a process with ``threads`` CPUs (its job's ``--threads``): none below
    4 CPUs (tiny CPU runs: the main process does the work), else half of them, up to 4 (8-CPU GPU ranks: 4
    workers decode and collate images while the main process drives the GPU)."""
    return 0 if threads < 4 else min(4, threads // 2)


def check_world_size(launch: dict | None, key: str = "launch") -> None:
    """The processes actually running (``WORLD_SIZE``, set by accelerate/torchrun) must be those ``launch``
    asks for: the per-process batch was computed from it."""
    running = int(os.environ.get("WORLD_SIZE", "1"))
    if running != world_size(launch):
        raise ConfigError(
            f"config key {key}: {world_size(launch)} processes configured (num_processes x num_machines) but "
            f"{running} are running (WORLD_SIZE); start training through grpo_vqa.launch"
        )


def is_main_process() -> bool:
    """Rank 0 of a (possibly) distributed run: the one process that writes outputs, sidecars and logs."""
    return int(os.environ.get("RANK", "0")) == 0


#: ``sft.target`` values: the tagged completion, the bare answer, or a tagged and an untagged format split over
#: the items (``mixed``: no tags at all on the untagged half; ``partial_tags``: no answer tags)
SFT_TARGETS = ("think_answer", "answer", "mixed", "partial_tags")


def target_text(reasoning: str, solution: str, target: str = "think_answer", item_id: str = "") -> str:
    """The SFT target: ``think_answer`` is ``<think>reasoning</think><answer>solution</answer>``; ``answer`` the
    bare solution (the study's VSR SFT baseline is trained to answer ``True`` / ``False``); ``mixed`` the tagged
    completion for half of the items and the same text without tags (``reasoning Answer: solution``) for the
    other half, chosen by a hash of ``item_id`` (a model that knows the task but often ignores the format);
    ``partial_tags`` the reasoning in its ``<think>`` tags on every item and the answer in ``<answer>`` tags on
    half of them (the same hash), after ``Answer: `` on the rest (a model that slips on the answer tag only)."""
    if target not in SFT_TARGETS:
        raise ValueError(f"SFT target {target!r}: expected one of {', '.join(SFT_TARGETS)}")
    if target == "answer":
        return str(solution)
    thought = f"<think>{reasoning}</think>"
    if target in ("mixed", "partial_tags") and zlib.crc32(item_id.encode()) % 2 == 0:  # the untagged half
        return f"{reasoning} Answer: {solution}" if target == "mixed" else f"{thought}Answer: {solution}"
    return f"{thought}<answer>{solution}</answer>"


def with_images(ds, blank: bool = False):
    """Add an ``image`` column decoded from ``image_path`` (every file checked; errors name the file)."""
    import datasets

    images = []
    for path in ds["image_path"]:
        img = load_image(path)
        images.append(blank_like(img) if blank else img)
    features = ds.features.copy()
    features["image"] = datasets.Image()
    return datasets.Dataset.from_dict(ds.to_dict() | {"image": images}, features=features)


#: ``lora.target_modules: all-linear``: every linear layer of the language model (what VLM-R1 does without a list).
ALL_LINEAR = "all-linear"
#: Module paths LoRA never touches: the vision tower (Qwen2.5-VL ``visual``, Idefics3 ``vision_model``) and
#: the vision-to-text connector (Qwen's ``merger`` lives in ``visual``; Idefics3's is ``connector``).
VISION_MODULES = r".*(visual|vision|connector|merger).*"


def lora_config(cfg: dict, task_type: str = "CAUSAL_LM"):
    """A PEFT LoraConfig from a ``lora`` section in PEFT's names (``r``, ``lora_alpha``, ``lora_dropout``,
    ``target_modules``, ``modules_to_save``), every key present.

    Targets are matched in the language model only (any module path without ``visual``/``vision``), so the
    vision tower stays frozen, as in the study. ``target_modules: all-linear`` takes every linear layer of the
    language model but the output layer.
    """
    from peft import LoraConfig

    if cfg["target_modules"] == ALL_LINEAR:
        # PEFT's "all-linear" (every nn.Linear but the output layer), less the vision tower and the connector
        where = {"target_modules": ALL_LINEAR, "exclude_modules": VISION_MODULES}
    else:
        targets = "|".join(cfg["target_modules"])
        where = {"target_modules": rf"^(?!.*(visual|vision)).*\.({targets})$"}
    return LoraConfig(
        r=int(cfg["r"]),
        lora_alpha=int(cfg["lora_alpha"]),
        lora_dropout=float(cfg["lora_dropout"]),
        **where,
        task_type=task_type,
        # e.g. [embed_tokens, lm_head]: words a tiny warm-started model never produced get usable rows
        modules_to_save=list(cfg["modules_to_save"]) or None,
    )


def run_checkpoint_dir(base: str | Path, cfg: dict, *inputs: str | Path) -> Path:
    """``base/run-<key>``: checkpoints of *this* run, keyed on its settings and its inputs' identities.

    A retried or rerun job with the same settings and inputs resumes; after a config edit or a retrained
    input model the key changes, so stale checkpoints are never resumed from.
    """
    key = config_hash({"cfg": cfg, "inputs": [path_fingerprint(p) for p in inputs]})[:12]
    return Path(base) / f"run-{key}"


def checkpoint_step(folder: Path) -> int | None:
    """N of a ``checkpoint-N`` folder, else None."""
    prefix, _, step = folder.name.partition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def is_complete_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` carries a valid completion marker: the JSON ``{"step": N}`` of its own step.

    The marker is written (atomically) only after the model, optimizer, scheduler, RNG and trainer state are
    saved, so a checkpoint cut short by a kill or a full disk has none; an empty or torn marker (a writer
    that died half-way) does not count either."""
    folder = Path(folder)
    step = checkpoint_step(folder)
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return step is not None and isinstance(marker, dict) and marker.get("step") == step


def latest_complete_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` folder carrying a valid completion marker (half-written ones are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = [
        (checkpoint_step(child), child)
        for child in ckpt_dir.iterdir()
        if child.is_dir() and checkpoint_step(child) is not None and is_complete_checkpoint(child)
    ]
    return max(found)[1] if found else None


def discard_incomplete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Delete ``checkpoint-N`` folders without a valid marker (left by a kill or a full disk).

    They are never resumed from; deleting them frees their space and keeps the trainer's rotation (which
    counts every ``checkpoint-*`` folder) from deleting a complete checkpoint in favour of a broken one."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    removed = []
    for child in sorted(ckpt_dir.iterdir()):
        if child.is_dir() and checkpoint_step(child) is not None and not is_complete_checkpoint(child):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def make_complete_marker_callback():
    """A TrainerCallback writing :data:`COMPLETE_MARKER` into each checkpoint once it is fully saved.

    The marker goes through a temp file and a rename, so it exists whole or not at all."""
    from transformers import TrainerCallback

    class CompleteMarker(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    atomic_write_text(folder / COMPLETE_MARKER, json.dumps({"step": state.global_step}))
            return control

    return CompleteMarker()


def make_walltime_callback():
    """A TrainerCallback that, once :data:`WALLTIME_SIGNAL` has arrived, saves a checkpoint at the end of the
    current optimizer step and stops training (``stopped_at`` = that step).

    Every rank of a data-parallel run gets the signal, not necessarily at the same step: the ranks agree (an
    all-reduce of the flag after each step) so that they all save and stop at the same one."""
    from transformers import TrainerCallback

    class SaveOnWalltimeSignal(TrainerCallback):
        def __init__(self):
            self.requested = False
            self.stopped_at = None
            signal.signal(WALLTIME_SIGNAL, self._on_signal)
            # grpo_vqa.launch blocks the signal before starting the script: one sent since then (during
            # start-up) is delivered now, and training stops after its first step
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {WALLTIME_SIGNAL})

        def _on_signal(self, signum, frame):
            self.requested = True

        def _agreed(self) -> bool:
            import torch
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
                return self.requested
            device = (
                torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
            )
            flag = torch.tensor([int(self.requested)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())

        def on_step_end(self, args, state, control, **kwargs):
            # the last step ends training anyway, and the final output is written
            if self._agreed() and state.global_step < state.max_steps:
                control.should_save = True
                control.should_training_stop = True
                self.stopped_at = state.global_step
            return control

    return SaveOnWalltimeSignal()


def train_resume_save(
    trainer, processor, ckpt_dir, out_dir, name: str, history_key: str, on_resume=None, extra_files=None
) -> dict:
    """Train (resuming from the newest complete checkpoint in ``ckpt_dir``), then write the final model,
    processor and per-step history (log entries holding ``history_key``) atomically to ``out_dir``.
    ``extra_files``: a callable giving ``{file name: JSON-able}`` to write beside them (a ``None`` is skipped)."""
    if trainer.is_world_process_zero():  # one rank deletes; the others wait for it
        for broken in discard_incomplete_checkpoints(ckpt_dir):
            print(
                f"[{name}] discarded incomplete checkpoint {broken} (no valid {COMPLETE_MARKER} marker)",
                flush=True,
            )
    trainer.accelerator.wait_for_everyone()
    resume = latest_complete_checkpoint(ckpt_dir)
    if resume is not None and trainer.is_world_process_zero():
        print(f"[{name}] resuming from {resume} (step {resume.name.split('-')[-1]})", flush=True)
    if resume is not None and on_resume is not None:
        on_resume(resume)
    if resume is not None and 0 < trainer.args.max_steps <= int(resume.name.split("-")[-1]):
        # Killed after the last checkpoint but before the output was written: training is finished. Resuming
        # through train() would run one extra step, so load the final checkpoint's weights and state instead.
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
    else:
        walltime = make_walltime_callback()
        trainer.add_callback(walltime)
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Exception as exc:
            raise_if_disk_full(exc, ckpt_dir)
            raise
        if walltime.stopped_at is not None:
            saved = Path(ckpt_dir) / f"checkpoint-{walltime.stopped_at}"
            trainer.accelerator.wait_for_everyone()  # rank 0 has written the completion marker
            raise WalltimeStop(
                f"[{name}] walltime warning (SIG{WALLTIME_SIGNAL.name[3:]}): saved {saved} at step "
                f"{walltime.stopped_at} of {trainer.args.max_steps}; a retry resumes from it"
            )
    # Every rank takes part in saving (ZeRO-3 gathers the weights); the Trainer writes on the main one only.
    tmp = Path(str(out_dir) + ".tmp")
    trainer.save_model(str(tmp))
    history = [h for h in trainer.state.log_history if history_key in h]
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(tmp))
        (tmp / "train_history.json").write_text(json.dumps(history, indent=1))
        for file_name, content in (extra_files() if extra_files else {}).items():
            if content is not None:
                (tmp / file_name).write_text(json.dumps(content, indent=1))
        replace_dir(tmp, out_dir)
    # no rank exits (ending the launch) before the output is in place
    trainer.accelerator.wait_for_everyone()
    return {"history": history, "resumed_from": str(resume) if resume else None}


def raise_if_disk_full(exc: BaseException, ckpt_dir: str | Path) -> None:
    """Re-raise a failure as ``OSError(ENOSPC)`` naming ``ckpt_dir`` when its disk is (nearly) full.

    torch's checkpoint writer reports a full disk as ``RuntimeError: ... unexpected pos ...``, not as
    ENOSPC; the free space tells. "Nearly full": less than the newest complete checkpoint (or 1 MiB) free."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return
    try:
        free = shutil.disk_usage(ckpt_dir).free
    except OSError:
        return
    last = latest_complete_checkpoint(ckpt_dir)
    need = sum(f.stat().st_size for f in last.rglob("*") if f.is_file()) if last else 0
    if free < max(need, 1 << 20):
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise OSError(
            errno.ENOSPC,
            f"No space left on device ({free} bytes free; {type(exc).__name__}: {detail})",
            str(ckpt_dir),
        ) from exc

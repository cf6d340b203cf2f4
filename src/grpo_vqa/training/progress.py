"""Trainer progress that reads well in log files (the loop bar for data generation, evaluation and judging is
:func:`grpo_vqa.progress.progress`).

* :class:`LogProgress` — a ``transformers.TrainerCallback`` printing one line per ``every`` optimizer steps
  (and at the end) with the latest logged metrics, elapsed time and ETA. Register it with
  ``callbacks=[..., LogProgress("sft")]`` and pass ``disable_tqdm=not is_tty()`` to the trainer's args, so a
  log gets these lines instead of tqdm's carriage-return bar.
* :class:`RolloutRate` — a ``TrainerCallback`` for GRPO: rollouts per second of every optimizer step into the
  log history (``rollouts_per_second``) and, at the end, one line and a summary (:meth:`RolloutRate.summary`).
* :func:`report_to` — ``report_to`` for the trainers: TensorBoard under ``log_dir`` plus Weights & Biases when
  ``wandb.enabled`` is set in the config (off by default, never required).
"""

from __future__ import annotations

import os
import sys
import time

from ..progress import format_seconds

#: Metrics shown in a trainer progress line when logged (first found wins the order).
SHOWN_METRICS = ("loss", "reward", "kl", "learning_rate", "mean_token_accuracy", "rollouts_per_second")


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class LogProgress(_trainer_callback_base()):
    """One line per ``every`` optimizer steps (default: about 20 lines per run) and at the end, e.g.
    ``[grpo] step 40/60 (67%) | reward 0.812 | kl 0.0031 | elapsed 2m10s | ETA 1m05s``.

    The ETA extrapolates the time per step *of this process* (a resumed run does not count the steps it
    restored), so it stays right after a resume.
    """

    def __init__(self, name: str, every: int | None = None, stream=None, clock=time.monotonic):
        self.name = name
        self.every = every
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.t0: float | None = None
        self.step0 = 0
        self.metrics: dict[str, float] = {}
        self.last_printed = -1

    def on_train_begin(self, args, state, control, **kwargs):
        self.main = bool(state.is_world_process_zero)  # one progress line per step, not one per rank
        self.t0 = self.clock()
        self.step0 = int(state.global_step)
        if self.every is None:
            self.every = max(1, int(state.max_steps or 0) // 20)
        self._line(f"start at step {self.step0}/{state.max_steps}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for k, v in (logs or {}).items():
            if isinstance(v, int | float):
                self.metrics[k] = float(v)

    def on_step_end(self, args, state, control, **kwargs):
        step = int(state.global_step)
        if step % (self.every or 1) == 0 or step >= state.max_steps:
            self._status(step, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        if self.last_printed != int(state.global_step):
            self._status(int(state.global_step), state.max_steps)

    def status_line(self, step: int, max_steps: int) -> str:
        elapsed = self.clock() - (self.t0 if self.t0 is not None else self.clock())
        done = step - self.step0
        parts = [f"step {step}/{max_steps} ({100.0 * step / max(1, max_steps):.0f}%)"]
        for key in SHOWN_METRICS:
            if key in self.metrics:
                parts.append(f"{key} {self.metrics[key]:.4g}")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        if done > 0:
            parts.append(f"ETA {format_seconds(elapsed / done * max(0, max_steps - step))}")
        return " | ".join(parts)

    def _status(self, step: int, max_steps: int) -> None:
        self.last_printed = step
        self._line(self.status_line(step, max_steps))

    def _line(self, text: str) -> None:
        if not getattr(self, "main", True):
            return
        self.stream.write(f"[{self.name}] {text}\n")
        self.stream.flush()


class RolloutRate(_trainer_callback_base()):
    """Rollouts (completions) per second of a GRPO run, as the pipeline sees it.

    The trainer reports the rollouts it generates with :meth:`add` (the global count: local completions times
    the processes). Each optimizer step's time runs from the end of the step before it (or the start of
    training) to its own end, so the steps' times add up to the training time (generation, scoring, forward,
    backward, optimizer, logging and checkpoints). :meth:`attach` puts ``rollouts_per_second`` of every step
    into the trainer's metrics (TRL averages them into that step's log entry, so into ``train_history.json``);
    at the end of training one line like ``[grpo] rate: 160 rollouts in 40 steps, 75.3 s: 2.12 rollouts/s
    (after the first step: 2.45 rollouts/s; first step 9.8 s) | engine fast`` is printed, and :meth:`summary`
    gives the numbers (``None`` when no step ran in this process).
    """

    def __init__(
        self,
        name: str = "grpo",
        engine: str | None = None,
        engine_reason: str | None = None,
        stream=None,
        clock=time.perf_counter,
    ):
        self.name = name
        self.engine = engine
        self.engine_reason = engine_reason
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.metrics = None  # the trainer's train-mode metric lists (see attach)
        self.pending = 0
        self.steps: list[tuple[int, int, float]] = []  # (global step, rollouts, seconds)
        self.t_last: float | None = None
        self.main = True

    def attach(self, trainer) -> RolloutRate:
        """Let ``trainer`` report its rollouts here (``trainer.rollout_rate``) and log the per-step rate through
        its metrics (TRL's ``_metrics["train"]``, averaged into each log entry)."""
        trainer.rollout_rate = self
        metrics = getattr(trainer, "_metrics", None)
        self.metrics = metrics.get("train") if isinstance(metrics, dict) else None
        return self

    def add(self, rollouts: int) -> None:
        self.pending += int(rollouts)

    def on_train_begin(self, args, state, control, **kwargs):
        self.main = bool(state.is_world_process_zero)
        self.t_last = self.clock()
        self.pending = 0

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        seconds = now - (self.t_last if self.t_last is not None else now)
        self.t_last = now
        rollouts, self.pending = self.pending, 0
        self.steps.append((int(state.global_step), rollouts, seconds))
        if self.metrics is not None and seconds > 0:
            self.metrics["rollouts_per_second"].append(rollouts / seconds)

    def on_train_end(self, args, state, control, **kwargs):
        summary = self.summary()
        if summary is None or not self.main:
            return
        line = (
            f"[{self.name}] rate: {summary['rollouts']} rollouts in {summary['steps']} steps, "
            f"{summary['train_s']:.1f} s: {summary['rollouts_per_s']:.3g} rollouts/s"
        )
        if summary.get("steady_rollouts_per_s") is not None:
            line += (
                f" (after the first step: {summary['steady_rollouts_per_s']:.3g} rollouts/s;"
                f" first step {summary['first_step_s']:.1f} s)"
            )
        if self.engine:
            line += f" | engine {self.engine}"
        self.stream.write(line + "\n")
        self.stream.flush()

    def summary(self) -> dict | None:
        """The run's numbers: steps and rollouts of this process's training, its time, rollouts/s overall and
        after the first step (which holds one-off work: compilation, CUDA graph capture), step times."""
        if not self.steps:
            return None
        rollouts = sum(r for _, r, _ in self.steps)
        train_s = sum(s for _, _, s in self.steps)
        times = sorted(s for _, _, s in self.steps)
        later = self.steps[1:]
        later_s = sum(s for _, _, s in later)
        return {
            "engine": self.engine,
            "engine_reason": self.engine_reason,
            "steps": len(self.steps),
            "first_step": self.steps[0][0],
            "last_step": self.steps[-1][0],
            "rollouts": rollouts,
            "rollouts_per_step": rollouts / len(self.steps),
            "train_s": train_s,
            "rollouts_per_s": rollouts / train_s if train_s > 0 else None,
            "steady_rollouts_per_s": (
                sum(r for _, r, _ in later) / later_s if later and later_s > 0 else None
            ),
            "first_step_s": self.steps[0][2],
            "median_step_s": times[len(times) // 2],
        }


def report_to(log_dir, logging_cfg: dict | None = None) -> list[str]:
    """``report_to`` for the trainers: ``["tensorboard"]`` writing under ``log_dir`` (when given), plus
    ``"wandb"`` when ``logging_cfg["wandb"]["enabled"]`` (project/entity/mode from the same section, config
    ``logging``; ``mode: offline`` keeps runs local until ``wandb sync``); no ``logging_cfg``: no W&B. Raises when
    W&B is enabled but not installed."""
    out: list[str] = []
    if log_dir:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(log_dir)
        out.append("tensorboard")
    wandb = logging_cfg["wandb"] if logging_cfg is not None else {"enabled": False}
    if wandb["enabled"]:
        try:
            import wandb as _  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "logging.wandb.enabled is true but the wandb package is not installed"
            ) from None
        os.environ.setdefault("WANDB_PROJECT", str(wandb["project"]))
        if wandb["entity"]:
            os.environ.setdefault("WANDB_ENTITY", str(wandb["entity"]))
        os.environ.setdefault("WANDB_MODE", str(wandb["mode"]))
        out.append("wandb")
    return out

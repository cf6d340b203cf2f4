"""GRPO rollouts: TRL's ``generate`` path ("hf") or the static-KV / CUDA-graph engine ("fast").

``grpo_trainer_class(engine)`` gives the trainer class to construct exactly like ``trl.GRPOTrainer``;
``RolloutConfig`` is the ``rollout:`` config block; ``RolloutEngine`` can also be used on its own.
"""

from grpo_vqa.rollout.config import RolloutConfig
from grpo_vqa.rollout.engine import RolloutEngine, RolloutOutput, SamplingParams, select_tokens
from grpo_vqa.rollout.trainer import (
    FastRolloutGRPOTrainer,
    fast_grpo_args,
    grpo_trainer_class,
    sampling_params_from,
)
from grpo_vqa.rollout.vision import install_batched_vision_attention, varlen_attention

__all__ = [
    "FastRolloutGRPOTrainer",
    "RolloutConfig",
    "RolloutEngine",
    "RolloutOutput",
    "fast_grpo_args",
    "SamplingParams",
    "grpo_trainer_class",
    "install_batched_vision_attention",
    "sampling_params_from",
    "select_tokens",
    "varlen_attention",
]

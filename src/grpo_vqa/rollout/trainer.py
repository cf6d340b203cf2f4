"""``GRPOTrainer`` whose rollouts come from ``RolloutEngine``; rewards, advantages and the loss stay TRL's."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict

import torch
from torch.utils.data import Dataset, IterableDataset
from trl import GRPOTrainer
from trl.trainer.utils import pad

from grpo_vqa.rollout.cache import (
    Idefics3ImageProcessorCache,
    ImageFeatureCache,
    ImagePrefetcher,
    ImageProcessorCache,
)
from grpo_vqa.rollout.config import RolloutConfig
from grpo_vqa.rollout.engine import SUPPORTED_MODEL_TYPES, RolloutEngine, SamplingParams, unwrap_hf_model
from grpo_vqa.rollout.vision import install_batched_vision_attention

logger = logging.getLogger(__name__)

_MM_KEYS = {"pixel_values", "image_grid_thw", "mm_token_type_ids", "pixel_attention_mask"}


class _RowCache(Dataset):
    """Map-style dataset view that keeps the last ``capacity`` rows it returned (decoded images included).

    GRPO's dataloader yields the whole generation batch at every gradient-accumulation step; with this cache its
    rows are fetched and decoded once per generation.
    """

    def __init__(self, dataset, capacity: int, on_fetch=None):
        self.dataset = dataset
        self.capacity = max(1, int(capacity))
        self.on_fetch = on_fetch
        self._rows: OrderedDict[int, dict] = OrderedDict()
        self.misses = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        index = int(index)
        row = self._rows.get(index)
        if row is None:
            self.misses += 1
            row = self.dataset[index]
            if self.on_fetch is not None:
                self.on_fetch(row)
            self._rows[index] = row
            if len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end(index)
        if isinstance(row, dict):  # fresh containers per use, shared (read-only) images
            return {k: (copy.deepcopy(v) if k == "prompt" else v) for k, v in row.items()}
        return row


class _RowHook(Dataset):
    """Map-style dataset view that calls ``on_fetch(row)`` with each row it returns."""

    def __init__(self, dataset, on_fetch):
        self.dataset = dataset
        self.on_fetch = on_fetch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        row = self.dataset[index]
        self.on_fetch(row)
        return row


def row_images(row) -> list | None:
    """A dataset row's images as TRL's GRPOTrainer finds them: ``images``, ``image``, or the prompt's image parts."""
    if not isinstance(row, dict):
        return None
    if "images" in row:
        return list(row["images"] or []) or None
    if "image" in row:
        return None if row["image"] is None else [row["image"]]
    prompt = row.get("prompt")
    if not isinstance(prompt, list):
        return None
    found = [
        part["image"]
        for message in prompt
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image" and part.get("image") is not None
    ]
    return found or None


def sampling_params_from(generation_config) -> SamplingParams:
    """``SamplingParams`` equivalent to a transformers ``GenerationConfig`` (TRL's generation settings)."""
    return SamplingParams(
        do_sample=bool(generation_config.do_sample),
        temperature=float(generation_config.temperature or 1.0),
        top_k=int(generation_config.top_k or 0),
        top_p=float(1.0 if generation_config.top_p is None else generation_config.top_p),
        min_p=generation_config.min_p,
    )


class FastRolloutGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with ``RolloutEngine`` generation (``rollout.engine: fast``).

    Constructed exactly like ``GRPOTrainer`` plus an optional ``rollout_config``. Setups the engine does not
    cover (vLLM, continuous batching, tool images, DeepSpeed/FSDP, a repetition penalty, other architectures)
    fall back to TRL's own generation with a warning.
    """

    def __init__(self, *args, rollout_config: RolloutConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollout_config = rollout_config or RolloutConfig(engine="fast")
        self.rollout_engine: RolloutEngine | None = None
        self.image_feature_cache: ImageFeatureCache | None = None
        self.image_processor_cache: ImageProcessorCache | None = None
        self.image_prefetcher: ImagePrefetcher | None = None
        reason = self._fast_unsupported_reason()
        if reason:
            logger.warning("fast rollouts disabled, using TRL's generation: %s", reason)
            return
        hf_model = unwrap_hf_model(self.accelerator.unwrap_model(self.model))
        if not self.rollout_config.cudnn_attention:
            torch.backends.cuda.enable_cudnn_sdp(False)
        if self.rollout_config.batched_vision_attention:
            install_batched_vision_attention(hf_model)
        self.rollout_engine = RolloutEngine(
            hf_model,
            self.rollout_config,
            eos_token_ids=list(self.eos_token_ids),
            pad_token_id=self._tokenizer.pad_token_id,
            suppress_token_ids=list(self.generation_config.suppress_tokens or []),
        )
        self.rollout_sampling = sampling_params_from(self.generation_config)
        if self.rollout_config.cache_images and self.rollout_engine.model_type == "qwen2_5_vl":
            self.image_feature_cache = ImageFeatureCache(hf_model.model)
        if (
            self.rollout_config.prefetch_images
            and self._image_cache_class() is not None
            and not self.args.dataloader_num_workers
        ):
            self.image_prefetcher = ImagePrefetcher(
                workers=1, capacity=max(8, 2 * self.args.generation_batch_size)
            )

    def _image_cache_class(self) -> type | None:
        """The processor cache for this processor's image processor (``None``: no cache)."""
        if self.rollout_engine is None or not self.rollout_config.cache_images:
            return None
        name = type(getattr(self.processing_class, "image_processor", None)).__name__
        if name.startswith("Qwen2VLImageProcessor"):
            return ImageProcessorCache
        if name.startswith("Idefics3ImageProcessor"):
            return Idefics3ImageProcessorCache
        return None

    def _prefetch_row(self, row) -> None:
        if self.image_prefetcher is not None:
            self.image_prefetcher.submit(row_images(row))

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.image_prefetcher is not None:
                self.image_prefetcher.shutdown()

    def _generate_and_score_completions(self, inputs):
        proc = self.processing_class
        base = getattr(proc, "image_processor", None)
        cache_cls = self._image_cache_class()
        swap = cache_cls is not None
        if self.image_feature_cache is not None:
            self.image_feature_cache.clear()
        if swap:
            self.image_processor_cache = cache_cls(
                base, prefetcher=self.image_prefetcher, device=self.accelerator.device
            )
            proc.image_processor = self.image_processor_cache
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            if swap:
                proc.image_processor = base

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, **kw
    ):
        """TRL's log-prob forwards; the no-grad ones (reference, old policy) in chunks of ``rollout.logprob_batch``
        rows where that is larger than TRL's (the micro-batch): they keep no activations for a backward."""
        wide = self.rollout_config.logprob_batch
        if wide and self.rollout_engine is not None and not torch.is_grad_enabled():
            batch_size = max(int(batch_size or input_ids.size(0)), int(wide))
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, **kw
        )

    def _fast_unsupported_reason(self) -> str | None:
        model_type = getattr(
            unwrap_hf_model(self.accelerator.unwrap_model(self.model)).config, "model_type", None
        )
        if model_type not in SUPPORTED_MODEL_TYPES:
            return f"model type {model_type!r} (supported: {SUPPORTED_MODEL_TYPES})"
        if self.use_vllm or self.use_transformers_continuous_batching:
            return "another generation backend is configured"
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return "DeepSpeed / FSDP"
        if (self.generation_config.repetition_penalty or 1.0) != 1.0:
            return "repetition_penalty != 1"
        return None

    def get_train_dataloader(self):
        dataset = self.train_dataset
        mapped = (
            dataset is not None
            and not isinstance(dataset, IterableDataset)
            and hasattr(dataset, "__getitem__")
        )
        on_fetch = self._prefetch_row if self.image_prefetcher is not None else None
        if not mapped or not (self.rollout_config.cache_dataset_rows or on_fetch):
            return super().get_train_dataloader()
        if self.rollout_config.cache_dataset_rows:
            self.train_dataset = _RowCache(
                dataset, capacity=self.args.generation_batch_size, on_fetch=on_fetch
            )
        else:
            self.train_dataset = _RowHook(dataset, on_fetch)
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset = dataset

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        extra = set(multimodal_fields) - _MM_KEYS
        if self.rollout_engine is None or has_tool_images or extra:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images=has_tool_images
            )
        device = self.accelerator.device
        prompts = [torch.as_tensor(ids) for ids in prompt_ids]
        kw = dict(padding_side="left", pad_to_multiple_of=self.pad_to_multiple_of)
        input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, **kw).to(device)
        attention_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, **kw).to(device)
        inputs = {}
        if "mm_token_type_ids" in multimodal_fields:
            mm = multimodal_fields["mm_token_type_ids"]
            rows = [torch.as_tensor(x) for x in mm] if not isinstance(mm, torch.Tensor) else list(mm)
            inputs["mm_token_type_ids"] = pad(rows, padding_value=0, **kw).to(device)
        for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask"):
            if key in multimodal_fields:
                inputs[key] = torch.as_tensor(multimodal_fields[key]).to(device)
        out = self.rollout_engine.generate(
            input_ids,
            attention_mask,
            max_new_tokens=self.max_completion_length,
            sampling=self.rollout_sampling,
            **inputs,
        )
        for key, value in out.timings.items():
            self._metrics["train" if self.model.training else "eval"][f"rollout/{key}"].append(float(value))
        return out.completion_lists()


def fast_grpo_args(rollouts_per_step: int, micro_batch: int = 8) -> dict:
    """``GRPOConfig`` overrides for the fast engine: one generation call fills the decode batch with all
    ``rollouts_per_step`` rollouts, trained in micro-batches of ``micro_batch`` without gradient checkpointing
    (measured on an H100 at Qwen2.5-VL-3B dims: 32 GB peak at 64 rollouts/step)."""
    if rollouts_per_step % micro_batch:
        raise ValueError("rollouts_per_step must be a multiple of micro_batch")
    steps = rollouts_per_step // micro_batch
    return {
        "per_device_train_batch_size": micro_batch,
        "gradient_accumulation_steps": steps,
        "steps_per_generation": steps,
        "gradient_checkpointing": False,
    }


def grpo_trainer_class(engine: str) -> type:
    """The trainer class for ``rollout.engine``: ``trl.GRPOTrainer`` for "hf", ``FastRolloutGRPOTrainer`` for "fast"."""
    if engine == "hf":
        return GRPOTrainer
    if engine == "fast":
        return FastRolloutGRPOTrainer
    raise ValueError(f"unknown rollout engine {engine!r}; expected 'hf' or 'fast'")

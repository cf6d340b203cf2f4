"""Configuration of the rollout engine (the ``rollout:`` block of a run config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ENGINES = ("hf", "fast")
# ``grpo.rollout_engine`` values: an engine, or ``auto`` (see :func:`choose_engine`)
ENGINE_CHOICES = (*ENGINES, "auto")
# ``rollout.decode_compile`` values: one torch.compile region per decode step, or one per decoder layer
DECODE_COMPILE = ("step", "layer")
# model types (``config.model_type``) the fast engine decodes
SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "idefics3")


def choose_engine(
    requested: str, model_type: str | None, cuda: bool, deepspeed_stage: int | None = None
) -> tuple[str, str]:
    """The rollout engine for ``grpo.rollout_engine`` and why: ``(engine, reason)``.

    ``hf`` and ``fast`` are taken as given. ``auto`` takes ``fast`` where a CUDA device and a model type the
    engine supports are present (and no DeepSpeed, whose sharded parameters it cannot read), else ``hf``.
    """
    if requested not in ENGINE_CHOICES:
        raise ValueError(f"rollout_engine must be one of {ENGINE_CHOICES}, got {requested!r}")
    if requested != "auto":
        return requested, f"rollout_engine: {requested}"
    if not cuda:
        return "hf", "auto: no CUDA device (the fast engine needs one)"
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (
            "hf",
            f"auto: model type {model_type!r} is not one the fast engine supports {SUPPORTED_MODEL_TYPES}",
        )
    if deepspeed_stage:
        return "hf", f"auto: DeepSpeed ZeRO-{deepspeed_stage} (the fast engine reads whole parameters)"
    return "fast", f"auto: CUDA device and model type {model_type!r}"


@dataclass
class RolloutConfig:
    """How GRPO rollouts are generated.

    Fields:
        engine: ``"hf"`` (TRL's ``transformers.generate`` path) or ``"fast"`` (``RolloutEngine``).
        max_batch: most rows decoded together; a larger generation batch is decoded in chunks of this size.
        prefill_batch: most unique prompts prefilled by one forward of the full model.
        compile: ``torch.compile`` the decode step (``None``: on CUDA only); ``decode_compile`` says how.
        decode_compile: what one ``torch.compile`` region holds: ``"step"`` (default), the whole
            one-token step (embedding, every layer, final norm, head, token choice and the EOS bookkeeping) as one
            graph, so inductor fuses the residual add with the next layer's RMSNorm and the sampling ops into few
            kernels (as gpt-fast compiles ``decode_one_token``), with the cache length and ``max_new_tokens`` as
            dynamic sizes (one compile for every length bucket) and a fallback to ``"layer"`` if it fails to
            compile; or ``"layer"``, one compiled decoder layer shared by all layers and the rest eager. ``"step"``
            gave 2.65 rollouts/s against ``"layer"``'s 2.46 in one H100 call (Qwen2.5-VL-3B dims, study recipe;
            README, "Fast GRPO rollouts"): the same decode, no recompile at a new length bucket.
        compile_autotune: inductor's autotuning for the decode step (``engine.AUTOTUNE_OPTIONS``):
            coordinate-descent block sizes for its own kernels and the matrix products chosen between cuBLAS and
            Triton templates for the small decode batch; longer compilation (no faster decode measured).
        cuda_graph: capture the one-token decode step in a CUDA graph (``None``: on CUDA only).
        length_bucket: the static KV cache length is rounded up to a multiple of this, so that prompt lengths
            that differ a little reuse one captured graph.
        dedupe_prompts: prefill each distinct (prompt, image) once and copy its KV cache to the rows that
            repeat it (GRPO repeats every prompt ``num_generations`` times).
        batched_vision_attention: run the Qwen2.5-VL vision encoder's windowed attention as one batched call
            per layer (in rollouts and in the trainer's log-prob forwards) instead of one call per window.
        cache_images: within one generation batch, preprocess each distinct image (Idefics3: each distinct
            sample's images) once (TRL processes the batch twice) and, for Qwen2.5-VL while the vision tower is
            frozen, encode it once (rollout prefill and every log-prob forward reuse the features).
        prefetch_images: with ``cache_images``, preprocess the images of the next generation batch's rows in a
            background thread (``ImagePrefetcher``, one worker) as the dataloader fetches them, so the CPU work
            (SmolVLM: the 2048-px resize and 512-px tiling) overlaps the current batch's GPU work; the caches take
            the thread's output, which is the processor's own. Off where ``dataloader_num_workers`` > 0.
        cache_dataset_rows: fetch each generation batch's dataset rows (and decode their images) once per
            generation instead of at every gradient-accumulation step.
        check_eos_every: decode steps between checks (a device sync) of whether every row has stopped.
        merge_lora: decode with static copies of the language model's weights in which the LoRA adapters are
            merged (``W + scale * B @ A``, refreshed at every ``generate`` from the live parameters, only where
            they changed) and q/k/v and gate/up are concatenated, so one decode layer runs four matrix products
            instead of seven plus two per adapter (``None``: on CUDA only). Costs one more copy of those
            weights in device memory; sampling differs from the unmerged step by bf16 rounding only (the loss
            is TRL's own forward either way).
        kv_cache: decode from a static KV cache (``True``), or recompute the whole sequence through the model's
            own forward for every new token (``False``: ``generate(use_cache=False)``, the SmolVLM study's
            setting; greedy tokens are the same either way, tests/test_rollout_idefics3_engine.py).
        cudnn_attention: leave PyTorch's cuDNN kernel among the ``scaled_dot_product_attention`` backends of the
            trainer's own forward passes (policy, reference). ``False`` (default) turns it off for the process,
            so flash attention runs instead: the cuDNN path spent about 1.1 ms of CPU per call (26 us on the GPU)
            and left the GPU idle, and turning it off gave 3.06-3.07 rollouts/s against 2.95 in one H100 call
            (Qwen2.5-VL-3B dims, study recipe; bench/results/sdpa_cudnn_ab_nvidia-h100-80gb-hbm3.json). At 64
            rollouts/step (micro-batch 16) cuDNN was the faster one: 15.06 rollouts/s against 14.37 in one H100
            call, policy forward+backward 1.86 s against 2.03 (bench/results/grpo_rollouts_fast_step_64_ab18_*).
        logprob_batch: rows per chunk of the trainer's no-grad log-prob forwards (the reference model's, the old
            policy's) where larger than the micro-batch (TRL chunks them by ``per_device_train_batch_size``);
            ``0``: TRL's chunks. Without gradients no activations are kept, so wider chunks fit; values differ from
            TRL's chunking by bf16 rounding only (matrix-product tiling).
    """

    engine: str = "hf"
    max_batch: int = 64
    prefill_batch: int = 32
    compile: bool | None = None
    cuda_graph: bool | None = None
    length_bucket: int = 64
    dedupe_prompts: bool = True
    batched_vision_attention: bool = True
    cache_images: bool = True
    prefetch_images: bool = True
    cache_dataset_rows: bool = True
    check_eos_every: int = 16
    merge_lora: bool | None = None
    kv_cache: bool = True
    decode_compile: str = "step"
    compile_autotune: bool = False
    cudnn_attention: bool = False
    logprob_batch: int = 0

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"rollout.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.decode_compile not in DECODE_COMPILE:
            raise ValueError(
                f"rollout.decode_compile must be one of {DECODE_COMPILE}, got {self.decode_compile!r}"
            )
        for name in ("max_batch", "prefill_batch", "length_bucket", "check_eos_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"rollout.{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.logprob_batch) < 0:
            raise ValueError(f"rollout.logprob_batch must be >= 0, got {self.logprob_batch!r}")

    @classmethod
    def from_dict(cls, data: dict | None) -> RolloutConfig:
        """Build from a config mapping; unknown keys are an error."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown rollout config keys: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        """Plain-dict form (for provenance records)."""
        return asdict(self)

    def resolved(self, device_type: str) -> RolloutConfig:
        """Copy with ``compile``/``cuda_graph`` defaults filled in for ``device_type``."""
        on_cuda = device_type == "cuda"
        data = self.to_dict()
        data["compile"] = on_cuda if self.compile is None else bool(self.compile)
        data["cuda_graph"] = on_cuda if self.cuda_graph is None else bool(self.cuda_graph)
        data["merge_lora"] = on_cuda if self.merge_lora is None else bool(self.merge_lora)
        if data["cuda_graph"] and not on_cuda:
            raise ValueError("rollout.cuda_graph needs a CUDA device")
        return RolloutConfig(**data)

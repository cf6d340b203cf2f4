"""Fast rollouts for Qwen2.5-VL and SmolVLM (Idefics3): full-model prefill, then a static-KV one-token decode step
in a CUDA graph.

Prefill runs the Hugging Face model (vision encoder, LoRA, M-RoPE / Idefics3's image merge included) once per distinct prompt and copies
its KV cache into a static cache. Decode runs the language model functionally (``rollout.decode``) over the live
parameter tensors or their merged copies (``rollout.weights``; LoRA adapters applied inside the step, so optimizer
updates are picked up without re-capture). The step (embedding, layers, head, sampling, EOS bookkeeping) reads and
writes only static buffers, so on CUDA it is captured once per (batch, cache length) and replayed; the whole
step's model part (embedding to logits) is ``torch.compile``-d as one graph (``rollout.decode_compile: step``; the
cache length a dynamic size, so a new length bucket or max_new_tokens re-captures without recompiling; the token
choice runs PyTorch's own kernels in the same CUDA graph) or each layer is (``layer``: one graph shared by all
layers). On CPU the same step runs eagerly, which is what the tests compare against ``generate``.
``rollout.prompts`` holds the record of a batch of prompts and the dedupe of repeated ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from grpo_vqa.rollout.config import SUPPORTED_MODEL_TYPES, RolloutConfig
from grpo_vqa.rollout.decode import (
    SamplingParams,
    decoder_layer,
    decoder_layer_fused,
    linear,
    rms_norm,
    select_tokens,
)
from grpo_vqa.rollout.prompts import Prompts, images_per_row, unique_rows
from grpo_vqa.rollout.vision import install_batched_vision_attention
from grpo_vqa.rollout.weights import DecodeWeights

logger = logging.getLogger(__name__)

#: ``torch.compile`` backend of the decode step (tests set ``"aot_eager"`` to trace the compiled region on the CPU)
COMPILE_BACKEND = "inductor"

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "RolloutEngine",
    "RolloutOutput",
    "SamplingParams",
    "select_tokens",
    "unwrap_hf_model",
]

#: inductor options of ``rollout.compile_autotune``: tuned block sizes for the step's own kernels, and the matrix
#: products autotuned between cuBLAS and Triton templates (split-K ones among them) for the small decode batch
AUTOTUNE_OPTIONS = {
    "coordinate_descent_tuning": True,
    "max_autotune_gemm": True,
    "max_autotune_gemm_backends": "ATEN,TRITON",
}


@dataclass
class RolloutOutput:
    """Completions of one ``generate`` call.

    ``tokens`` (B, T) hold each completion up to and including its EOS, then ``pad_token_id``; ``lengths`` (B,)
    count the tokens kept; ``logprobs`` (B, T) are log-softmax(logits / temperature) of the chosen tokens (the
    quantity the GRPO trainer recomputes; 0 after the end).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    logprobs: torch.Tensor
    timings: dict = field(default_factory=dict)

    def completion_lists(self) -> tuple[list[list[int]], list[list[float]]]:
        """Per-row token ids and log-probs as Python lists, cut at each row's length."""
        toks, lps, lens = self.tokens.tolist(), self.logprobs.tolist(), self.lengths.tolist()
        return [t[:n] for t, n in zip(toks, lens, strict=True)], [
            p[:n] for p, n in zip(lps, lens, strict=True)
        ]


def unwrap_hf_model(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT / accelerate wrappers (LoRA layers stay injected)."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class _Slot:
    """Static buffers (and the captured graph) for one (batch, cache length)."""

    def __init__(
        self, batch: int, length: int, max_new: int, layers: int, n_kv: int, head_dim: int, dtype, device
    ):
        def z(*shape, dtype=torch.long):
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.batch, self.length, self.max_new = batch, length, max_new
        self.k = [z(batch, n_kv, length, head_dim, dtype=dtype) for _ in range(layers)]
        self.v = [z(batch, n_kv, length, head_dim, dtype=dtype) for _ in range(layers)]
        self.key_valid = z(batch, length, dtype=torch.bool)
        self.token = z(batch)
        self.pos = z(batch)
        self.slot = z(1)
        self.step = z(1)
        self.done = z(batch, dtype=torch.bool)
        self.lengths = z(batch)
        self.out_tokens = z(batch, max_new)
        self.out_logprobs = z(batch, max_new, dtype=torch.float32)
        self.keep_logits = False
        self.logits = None
        self.graph = None
        self.signature = None


class RolloutEngine:
    """Generate completions for left-padded multimodal prompts with a Qwen2.5-VL or Idefics3 (SmolVLM) model
    (LoRA-aware). ``config.kv_cache=False`` recomputes the whole sequence for every token instead (Idefics3)."""

    def __init__(
        self,
        model: nn.Module,
        config: RolloutConfig | None = None,
        *,
        eos_token_ids: list[int],
        pad_token_id: int,
        suppress_token_ids: list[int] | None = None,
    ):
        self.model = unwrap_hf_model(model)
        cfg = self.model.config
        if cfg.model_type not in SUPPORTED_MODEL_TYPES:
            raise NotImplementedError(
                f"fast rollouts support {SUPPORTED_MODEL_TYPES}, not {cfg.model_type!r}"
            )
        self.text_config = cfg.get_text_config()
        if self.text_config.hidden_act != "silu":
            raise NotImplementedError("fast rollouts expect a SiLU MLP")
        self.device = next(self.model.parameters()).device
        self.config = (config or RolloutConfig(engine="fast")).resolved(self.device.type)
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self.pad_token_id = int(pad_token_id)
        self.suppress_token_ids = [int(t) for t in (suppress_token_ids or [])]
        self.model_type = cfg.model_type
        self.inner = self.model.model  # Qwen2_5_VLModel / Idefics3Model
        self.lm = self.inner.language_model if self.model_type == "qwen2_5_vl" else self.inner.text_model
        self.n_heads = self.text_config.num_attention_heads
        self.n_kv = self.text_config.num_key_value_heads
        self.head_dim = (
            getattr(self.text_config, "head_dim", None) or self.text_config.hidden_size // self.n_heads
        )
        if not self.config.kv_cache and self.model_type != "idefics3":
            raise NotImplementedError("rollout.kv_cache: false is implemented for Idefics3 (SmolVLM) only")
        self.dims = (
            self.n_kv,
            self.n_heads // self.n_kv,
            self.head_dim,
            float(self.text_config.rms_norm_eps),
        )
        if self.config.batched_vision_attention:
            install_batched_vision_attention(self.model, compile=self.config.compile)
        self._decode_weights = DecodeWeights(self.model, self.lm, self.config.merge_lora)
        self._layer_fn = decoder_layer if self._merged is None else decoder_layer_fused
        self._step_fn = self._step
        self._logits_fn = self._step_logits
        if self.config.compile:
            options = AUTOTUNE_OPTIONS if self.config.compile_autotune else None
            kw = dict(fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
            if COMPILE_BACKEND == "inductor":
                kw["options"] = options
            self._compile_kw = kw
            if self.config.decode_compile == "step":
                self._logits_fn = torch.compile(self._step_logits, **kw)
                self._step_fn = self._compiled_step
            else:
                self._layer_fn = torch.compile(self._layer_fn, **kw)
        #: the decode step as run: "step" / "layer" (compiled that way) or "eager"
        self.decode_compile = self.config.decode_compile if self.config.compile else "eager"
        self._slots: dict[tuple[int, int, int], _Slot] = {}
        self._sp: SamplingParams | None = None
        self._eos = torch.tensor(self.eos_token_ids, device=self.device)
        self._suppress = (
            torch.tensor(self.suppress_token_ids, device=self.device) if self.suppress_token_ids else None
        )
        self.last_timings: dict = {}

    # ---------------------------------------------------------------- weights (rollout.weights)

    @property
    def _merged(self) -> list | None:
        """The merged weight buffers per layer (``None``: the step reads the live tensors)."""
        return self._decode_weights.merged

    @property
    def last_merge_rewrites(self) -> int:
        """How many merged Linear layers the last ``generate`` / ``teacher_force`` rewrote."""
        return self._decode_weights.last_merge_rewrites

    def _weights(self) -> dict:
        return self._decode_weights.packed()

    # ---------------------------------------------------------------- decode step

    def _step(self, s: _Slot, w: dict, sp: SamplingParams) -> None:
        """Feed ``s.token`` (at position ``s.pos``, cache index ``s.slot``); choose the next token into buffers."""
        self._step_finish(s, self._step_logits(s, w), sp)

    def _compiled_step(self, s: _Slot, w: dict, sp: SamplingParams) -> None:
        """``_step`` with its model part (``_step_logits``) as one ``torch.compile`` region and the token choice
        (``_step_finish``) eager. Inductor fused the choice (two softmaxes over the vocabulary, the exponential
        noise, argmax) into one reduction kernel that took 1.9 ms of the 6.7 ms step at 64 rows (H100, Qwen2.5-VL-3B
        dims; bench/results/profile_fast_step_64_cuda_nvidia-h100-80gb-hbm3.txt); PyTorch's own kernels, replayed
        in the same CUDA graph, compute the same values."""
        self._step_finish(s, self._logits_fn(s, w), sp)

    def _step_finish(self, s: _Slot, logits: torch.Tensor, sp: SamplingParams) -> None:
        if s.keep_logits:
            s.logits.copy_(logits)
        self._emit(s, logits, sp)
        s.pos.add_(1)
        s.slot.add_(1)

    def _step_logits(self, s: _Slot, w: dict) -> torch.Tensor:
        """The decode step's model part: fp32 next-token logits of ``s.token``; writes its K/V into the cache."""
        h = F.embedding(s.token, w["embed"])
        freqs = s.pos[:, None].float() * w["inv_freq"][None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * w["rope_scale"]).to(h.dtype)[:, None, None, :]
        sin = (emb.sin() * w["rope_scale"]).to(h.dtype)[:, None, None, :]
        s.key_valid.index_fill_(1, s.slot, True)
        key_mask = s.key_valid[:, None, None, :]
        for i, lw in enumerate(w["layers"]):
            h = self._layer_fn(h, cos, sin, s.k[i], s.v[i], s.slot, key_mask, lw, self.dims)
        h = rms_norm(h, w["norm"], self.dims[3])
        return linear(h, w["head"]).float()

    def _step_checked(self, s: _Slot, w: dict, sp: SamplingParams) -> None:
        """``_step_fn`` outside a graph capture (where it compiles); if the whole-step compile fails, fall back to
        the per-layer compiled step with a warning (``decode_compile`` then says ``"layer"``)."""
        if self.decode_compile != "step":
            return self._step_fn(s, w, sp)
        # one compiled step for every cache length: a new length bucket re-captures the graph, not recompiles
        for t in (*s.k, *s.v):
            torch._dynamo.maybe_mark_dynamic(t, 2)
        for t in (s.key_valid, s.out_tokens, s.out_logprobs):  # and for every max_new_tokens
            torch._dynamo.maybe_mark_dynamic(t, 1)
        try:
            return self._step_fn(s, w, sp)
        except Exception as err:  # noqa: BLE001 - any compiler error: the per-layer step computes the same
            logger.warning("rollout decode: whole-step torch.compile failed (%s); compiling per layer", err)
            self._step_fn = self._step
            self._logits_fn = self._step_logits
            self._layer_fn = torch.compile(self._layer_fn, **self._compile_kw)
            self.decode_compile = "layer"
            return self._step_fn(s, w, sp)

    def _emit(self, s: _Slot, logits: torch.Tensor, sp: SamplingParams) -> None:
        tokens, logp = select_tokens(logits, sp, self._suppress)
        tokens = torch.where(s.done, self.pad_token_id, tokens)
        logp = torch.where(s.done, 0.0, logp)
        s.out_tokens.index_copy_(1, s.step, tokens[:, None])
        s.out_logprobs.index_copy_(1, s.step, logp[:, None])
        newly = torch.isin(tokens, self._eos) & ~s.done
        s.lengths.copy_(torch.where(newly, s.step + 1, s.lengths))
        s.done.logical_or_(newly)
        s.token.copy_(tokens)
        s.step.add_(1)

    def _get_slot(self, batch: int, length: int, max_new: int, w: dict, sp: SamplingParams) -> _Slot:
        key = (batch, length, max_new)
        slot = self._slots.get(key)
        if slot is None:
            self._slots.clear()  # keep one set of static buffers alive
            dtype = w["embed"].dtype
            slot = _Slot(
                batch, length, max_new, len(w["layers"]), self.n_kv, self.head_dim, dtype, self.device
            )
            self._slots[key] = slot
        if self.config.cuda_graph:
            sig = (DecodeWeights.signature(w), sp)
            if slot.graph is None or slot.signature != sig:
                self._capture(slot, w, sp)
                slot.signature = sig
        return slot

    def _capture(self, s: _Slot, w: dict, sp: SamplingParams) -> None:
        s.graph = None
        s.key_valid.fill_(True)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # compile + warm up outside the capture
                s.slot.zero_()
                s.step.zero_()
                self._step_checked(s, w, sp)
        torch.cuda.current_stream().wait_stream(stream)
        s.slot.zero_()
        s.step.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_fn(s, w, sp)
        s.graph = graph

    # ---------------------------------------------------------------- prefill

    def _n_images(self, input_ids, image_grid_thw) -> list[int]:
        """Qwen2.5-VL: images per row (its ``pixel_values`` are flat patches); Idefics3: unused (per-row pixels)."""
        if self.model_type != "qwen2_5_vl":
            return [0] * input_ids.shape[0]
        cfg = self.model.config
        return images_per_row(
            input_ids, cfg.image_token_id, image_grid_thw, cfg.vision_config.spatial_merge_size
        )

    @torch.no_grad()
    def _prefill(self, rows, prompts: Prompts):
        """Run the full model on ``rows``; return (per-layer K, per-layer V, last logits, first decode positions)."""
        if self.model_type == "idefics3":
            return self._prefill_idefics3(rows, prompts)
        input_ids, attention_mask, n_images = prompts.input_ids, prompts.attention_mask, prompts.n_images
        pixel_values, image_grid_thw = prompts.pixel_values, prompts.image_grid_thw
        mm_token_type_ids = prompts.mm_token_type_ids
        img_start = [0, *torch.tensor(n_images).cumsum(0).tolist()]
        patches = [0]
        if image_grid_thw is not None:
            patches += image_grid_thw.prod(-1).cumsum(0).tolist()
        idx = torch.tensor(rows, device=input_ids.device)
        ids, mask = input_ids[idx], attention_mask[idx]
        kwargs = {}
        if image_grid_thw is not None:
            img_idx = [i for r in rows for i in range(img_start[r], img_start[r + 1])]
            if img_idx:
                kwargs["pixel_values"] = torch.cat(
                    [pixel_values[patches[i] : patches[i + 1]] for i in img_idx]
                )
                kwargs["image_grid_thw"] = image_grid_thw[torch.tensor(img_idx, device=image_grid_thw.device)]
        if mm_token_type_ids is None:
            cfg = self.model.config
            mm_token_type_ids = (input_ids == cfg.image_token_id).long() + 2 * (
                input_ids == cfg.video_token_id
            ).long()
        mm = mm_token_type_ids[idx]
        if "image_grid_thw" in kwargs:
            # transformers walks each row in Python with small ops and host syncs: do it on the host, copy once
            position_ids, deltas = self.inner.get_rope_index(
                ids.cpu(), mm.cpu(), image_grid_thw=kwargs["image_grid_thw"].cpu(), attention_mask=mask.cpu()
            )
            position_ids = position_ids.to(ids.device, non_blocking=True)
            first_pos = mask.sum(-1) + deltas.view(-1).to(mask.device)
        else:  # text only: the model's own positions (0..P-1, pads counted), as in the trainer's forward
            position_ids = torch.arange(ids.shape[1], device=ids.device)[None, None].expand(
                3, ids.shape[0], -1
            )
            first_pos = torch.full_like(mask.sum(-1), ids.shape[1])
        return self._prefill_forward(ids, mask, position_ids, first_pos, kwargs)

    def _prefill_idefics3(self, rows, prompts: Prompts):
        """Idefics3: one ``pixel_values`` entry (B, images, C, H, W) per row; positions count the unpadded tokens
        (``attention_mask.cumsum - 1``, as ``generate`` gives them)."""
        pixel_values, pixel_attention_mask = prompts.pixel_values, prompts.pixel_attention_mask
        idx = torch.tensor(rows, device=prompts.input_ids.device)
        ids, mask = prompts.input_ids[idx], prompts.attention_mask[idx]
        kwargs = {}
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values[idx.to(pixel_values.device)]
            if pixel_attention_mask is not None:
                kwargs["pixel_attention_mask"] = pixel_attention_mask[idx.to(pixel_attention_mask.device)]
        position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return self._prefill_forward(ids, mask, position_ids, mask.sum(-1), kwargs)

    def _prefill_forward(self, ids, mask, position_ids, first_pos, kwargs):
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        cache = out.past_key_values
        keys = [cache.layers[i].keys for i in range(len(self.lm.layers))]
        values = [cache.layers[i].values for i in range(len(self.lm.layers))]
        return keys, values, out.logits[:, -1].float(), first_pos

    # ---------------------------------------------------------------- public API

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        sampling: SamplingParams,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
    ) -> RolloutOutput:
        """Complete left-padded prompts ``input_ids`` (B, P); images as the model's processor returns them
        (Qwen2.5-VL: flat ``pixel_values`` + ``image_grid_thw``; Idefics3: ``pixel_values`` (B, images, C, H, W)
        + ``pixel_attention_mask``)."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if attention_mask[:, -1].min() < 1:
            raise ValueError("prompts must be left-padded")
        was_training = self.model.training
        self.model.eval()
        try:
            outs = []
            timings = {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0, "prefill_rows": 0}
            batch = input_ids.shape[0]
            n_images = self._n_images(input_ids, image_grid_thw)
            img_start = [0, *torch.tensor(n_images).cumsum(0).tolist()]
            patches = [0]
            if image_grid_thw is not None:
                patches += image_grid_thw.prod(-1).cumsum(0).tolist()
            for lo in range(0, batch, self.config.max_batch):
                hi = min(batch, lo + self.config.max_batch)
                chunk = {}
                if image_grid_thw is not None:
                    chunk["image_grid_thw"] = image_grid_thw[img_start[lo] : img_start[hi]]
                    chunk["pixel_values"] = pixel_values[patches[img_start[lo]] : patches[img_start[hi]]]
                if mm_token_type_ids is not None:
                    chunk["mm_token_type_ids"] = mm_token_type_ids[lo:hi]
                if self.model_type == "idefics3" and pixel_values is not None:
                    chunk["pixel_values"] = pixel_values[lo:hi]
                    if pixel_attention_mask is not None:
                        chunk["pixel_attention_mask"] = pixel_attention_mask[lo:hi]
                run = self._generate_chunk if self.config.kv_cache else self._generate_uncached
                prompts = Prompts(input_ids[lo:hi], attention_mask[lo:hi], n_images[lo:hi], **chunk)
                outs.append(run(prompts, max_new_tokens, sampling, timings))
        finally:
            self.model.train(was_training)
        width = max(o.tokens.shape[1] for o in outs)

        def cat(key, value):
            return torch.cat(
                [F.pad(getattr(o, key), (0, width - getattr(o, key).shape[1]), value=value) for o in outs]
            )

        result = RolloutOutput(
            tokens=cat("tokens", self.pad_token_id),
            lengths=torch.cat([o.lengths for o in outs]),
            logprobs=cat("logprobs", 0.0),
            timings=timings,
        )
        self.last_timings = timings
        return result

    @torch.no_grad()
    def teacher_force(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        tokens: torch.Tensor,
        *,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) of the decode path when fed ``tokens`` (B, T): row t predicts ``tokens[:, t]``."""
        batch, plen = input_ids.shape
        n_new = tokens.shape[1]
        length = -(-(plen + n_new) // self.config.length_bucket) * self.config.length_bucket
        w = self._weights()
        sp = SamplingParams(do_sample=False)
        key = (batch, length, n_new)
        if key not in self._slots or not self._slots[key].keep_logits:
            self._slots.clear()
            slot = _Slot(
                batch,
                length,
                n_new,
                len(w["layers"]),
                self.n_kv,
                self.head_dim,
                w["embed"].dtype,
                self.device,
            )
            slot.keep_logits = True
            slot.logits = torch.zeros(
                batch, self.model.get_output_embeddings().weight.shape[0], device=self.device
            )
            self._slots[key] = slot
        s = self._get_slot(batch, length, n_new, w, sp)
        n_images = self._n_images(input_ids, image_grid_thw)
        was_training = self.model.training
        self.model.eval()
        try:
            prompts = Prompts(
                input_ids,
                attention_mask,
                n_images,
                pixel_values,
                image_grid_thw,
                mm_token_type_ids,
                pixel_attention_mask,
            )
            k, v, logits, first_pos = self._prefill(list(range(batch)), prompts)
        finally:
            self.model.train(was_training)
        for i in range(len(s.k)):
            s.k[i][:, :, :plen].copy_(k[i])
            s.v[i][:, :, :plen].copy_(v[i])
        s.key_valid.zero_()
        s.key_valid[:, :plen].copy_(attention_mask.bool())
        s.pos.copy_(first_pos)
        s.slot.fill_(plen)
        s.step.zero_()
        s.done.zero_()
        out = [logits]
        for t in range(1, n_new):
            s.token.copy_(tokens[:, t - 1])
            if s.graph is not None:
                s.graph.replay()
            else:
                self._step_checked(s, w, sp)
            out.append(s.logits.clone())
        return torch.stack(out, dim=1)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _generate_chunk(self, prompts: Prompts, max_new, sp, timings) -> RolloutOutput:
        """Prefill each distinct prompt once, then decode from the static KV cache (CUDA graph where captured)."""
        batch, plen = prompts.input_ids.shape
        bucket = self.config.length_bucket
        length = -(-(plen + max_new) // bucket) * bucket
        self._sync()
        t_w = time.perf_counter()
        w = self._weights()
        self._sync()
        timings["weights_s"] = timings.get("weights_s", 0.0) + time.perf_counter() - t_w
        s = self._get_slot(batch, length, max_new, w, sp)

        self._sync()
        t0 = time.perf_counter()
        reps, mapping = unique_rows(
            prompts.input_ids,
            prompts.attention_mask,
            prompts.pixel_values,
            prompts.image_grid_thw,
            prompts.n_images,
            dedupe=self.config.dedupe_prompts,
            model_type=self.model_type,
        )
        keys, values, logits, first_pos = [], [], [], []
        step = self.config.prefill_batch
        for lo in range(0, len(reps), step):
            k, v, lg, fp = self._prefill(reps[lo : lo + step], prompts)
            keys.append(k)
            values.append(v)
            logits.append(lg)
            first_pos.append(fp)
        index = torch.tensor(mapping, device=self.device)
        for i in range(len(s.k)):
            s.k[i][:, :, :plen].copy_(torch.cat([k[i] for k in keys])[index])
            s.v[i][:, :, :plen].copy_(torch.cat([v[i] for v in values])[index])
        s.key_valid.zero_()
        s.key_valid[:, :plen].copy_(prompts.attention_mask.bool())
        s.pos.copy_(torch.cat(first_pos)[index])
        s.slot.fill_(plen)
        s.step.zero_()
        s.done.zero_()
        s.lengths.fill_(max_new)
        s.out_tokens.fill_(self.pad_token_id)
        s.out_logprobs.zero_()
        self._emit(s, torch.cat(logits)[index], sp)
        self._sync()
        t1 = time.perf_counter()

        steps = 0
        for t in range(1, max_new):
            if s.graph is not None:
                s.graph.replay()
            else:
                self._step_checked(s, w, sp)
            steps += 1
            if t % self.config.check_eos_every == 0 and bool(s.done.all()):
                break
        self._sync()
        t2 = time.perf_counter()
        timings["prefill_s"] += t1 - t0
        timings["decode_s"] += t2 - t1
        timings["decode_steps"] += steps
        timings["prefill_rows"] += len(reps)
        timings["prompt_len"] = max(timings.get("prompt_len", 0), plen)
        n = steps + 1
        return RolloutOutput(
            tokens=s.out_tokens[:, :n].clone(),
            lengths=s.lengths.clamp(max=n).clone(),
            logprobs=s.out_logprobs[:, :n].clone(),
        )

    def _generate_uncached(self, prompts: Prompts, max_new, sp, timings) -> RolloutOutput:
        """``kv_cache: false``: every token from a forward of the whole sequence so far (the model's own forward,
        ``use_cache=False``), as ``generate(use_cache=False)`` computes it. Idefics3 only."""
        input_ids = prompts.input_ids
        batch = input_ids.shape[0]
        kwargs = {}
        if prompts.pixel_values is not None:
            kwargs["pixel_values"] = prompts.pixel_values
            if prompts.pixel_attention_mask is not None:
                kwargs["pixel_attention_mask"] = prompts.pixel_attention_mask
        ids, mask = input_ids, prompts.attention_mask
        done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        lengths = torch.full((batch,), max_new, dtype=torch.long, device=ids.device)
        tokens_out, logps_out = [], []
        self._sync()
        t0 = time.perf_counter()
        for t in range(max_new):
            position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            logits = (
                self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids,
                    use_cache=False,
                    logits_to_keep=1,
                    **kwargs,
                )
                .logits[:, -1]
                .float()
            )
            tokens, logp = select_tokens(logits, sp, self._suppress)
            tokens = torch.where(done, self.pad_token_id, tokens)
            logp = torch.where(done, 0.0, logp)
            newly = torch.isin(tokens, self._eos) & ~done
            lengths = torch.where(newly, t + 1, lengths)
            done |= newly
            tokens_out.append(tokens)
            logps_out.append(logp)
            ids = torch.cat([ids, tokens[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if (t + 1) % self.config.check_eos_every == 0 and bool(done.all()):
                break
        self._sync()
        timings["decode_s"] += time.perf_counter() - t0
        timings["decode_steps"] += len(tokens_out)
        timings["prompt_len"] = max(timings.get("prompt_len", 0), input_ids.shape[1])
        n = len(tokens_out)
        return RolloutOutput(
            tokens=torch.stack(tokens_out, 1),
            lengths=lengths.clamp(max=n),
            logprobs=torch.stack(logps_out, 1),
        )

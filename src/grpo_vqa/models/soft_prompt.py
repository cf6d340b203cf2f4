"""Soft prompts (PEFT prompt tuning) on vision-language models: adapter detection, loading, and Qwen2.5-VL's
3D rotary positions.

PEFT prepends the virtual-token embeddings and calls the model with ``inputs_embeds`` only: it drops
``input_ids`` and ``position_ids`` ("position ids are not supported for parameter efficient tuning"). Both
architectures still find their image slots (they compare embeddings with the image token's), but
Qwen2.5-VL then cannot build its 3D (temporal, height, width) rotary positions and falls back to 1D text
positions for the image tokens -- a different input than the one the model was trained on.
:func:`attach_mrope_positions` restores them: a pre-forward hook recomputes the positions with the model's
own ``get_rope_index`` for the whole sequence, the virtual tokens counted as text in front.
"""

from __future__ import annotations

import json
from pathlib import Path

PROMPT_LEARNING_TYPES = ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING")


def adapter_config(path: str | Path) -> dict | None:
    """The ``adapter_config.json`` of an adapter-only directory (no ``config.json``), else None."""
    d = Path(path)
    if d.is_dir() and (d / "adapter_config.json").is_file() and not (d / "config.json").is_file():
        return json.loads((d / "adapter_config.json").read_text())
    return None


def is_prompt_adapter(path: str | Path) -> bool:
    cfg = adapter_config(path)
    return cfg is not None and cfg.get("peft_type") in PROMPT_LEARNING_TYPES


def _image_types(model, inputs_embeds, n_prefix: int):
    """Token types (0 text, 1 image) of the real tokens, found like the model does: by embedding equality."""
    import torch

    inner = model.model
    image_embed = inner.get_input_embeddings()(
        torch.full((), model.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
    )
    return (inputs_embeds[:, n_prefix:] == image_embed).all(-1).int()


def attach_mrope_positions(peft_model):
    """Give a soft-prompted Qwen2.5-VL (a PEFT prompt-learning model) correct 3D positions.

    Registers a forward pre-hook on the wrapped ``Qwen2_5_VLForConditionalGeneration``: when it is called with
    ``inputs_embeds`` but no ``input_ids``/``position_ids`` (PEFT's training and prefill calls), the positions
    are computed with ``get_rope_index`` over [virtual tokens as text, the real tokens] and the rope deltas
    stored; decode steps continue from them. ``generate`` hands the model precomputed image features instead
    of ``image_grid_thw``, so the PEFT model's ``generate`` is wrapped to keep the grid for the prefill. Other
    architectures are left alone (their positions are 1D). Returns the hook handle, or None."""
    import torch

    model = peft_model.get_base_model()
    if getattr(model.config, "model_type", None) != "qwen2_5_vl":
        return None
    num_virtual_tokens = int(peft_model.active_peft_config.num_virtual_tokens)
    generate = peft_model.generate

    def generate_keeping_grid(*args, **kwargs):
        model._soft_prompt_image_grid = kwargs.get("image_grid_thw")
        try:
            return generate(*args, **kwargs)
        finally:
            model._soft_prompt_image_grid = None

    peft_model.generate = generate_keeping_grid

    def hook(module, args, kwargs):
        if args or kwargs.get("position_ids") is not None:
            return None
        past = kwargs.get("past_key_values")
        if past is not None and past.get_seq_length() > 0:
            return _decode_positions(module, kwargs)
        embeds = kwargs.get("inputs_embeds")
        grid = kwargs.get("image_grid_thw")
        if grid is None:
            grid = getattr(module, "_soft_prompt_image_grid", None)
        if embeds is None or grid is None or kwargs.get("input_ids") is not None:
            return None
        n_real = embeds.shape[1] - num_virtual_tokens
        types = kwargs.get("mm_token_type_ids")
        if types is None or types.shape[1] != n_real:
            types = _image_types(module, embeds, num_virtual_tokens)
        prefix = torch.zeros(types.shape[0], num_virtual_tokens, dtype=types.dtype, device=types.device)
        full_types = torch.cat([prefix, types], dim=1)
        dummy_ids = torch.zeros(full_types.shape, dtype=torch.long, device=embeds.device)
        position_ids, deltas = module.model.get_rope_index(
            dummy_ids,
            mm_token_type_ids=full_types,
            image_grid_thw=grid,
            attention_mask=kwargs.get("attention_mask"),
        )
        module.model.rope_deltas = deltas
        kwargs["position_ids"] = position_ids
        kwargs.pop("mm_token_type_ids", None)  # its length excludes the virtual tokens
        return args, kwargs

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def _decode_positions(module, kwargs):
    """Positions of the new tokens of a decode step: text positions after the prefill's, shifted by its rope
    deltas. (Generation passes these in ``position_ids``, which PEFT drops; the model's own fallback then
    builds positions for the whole attention mask instead of the new tokens.)"""
    deltas = module.model.rope_deltas
    mask = kwargs.get("attention_mask")
    new = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
    if deltas is None or mask is None or new is None or mask.dim() != 2:
        return None
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -new.shape[1] :]
    kwargs["position_ids"] = positions.unsqueeze(0).expand(3, -1, -1) + deltas.to(positions.device)
    return (), kwargs


def load_prompt_adapter(adapter_dir: str | Path, *, dtype: str = "float32"):
    """The frozen base model with the soft prompt of ``adapter_dir`` (``PeftModel.from_pretrained``)."""
    from peft import PeftModel

    from .loading import load_model

    cfg = adapter_config(adapter_dir)
    base = load_model(cfg["base_model_name_or_path"], dtype=dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    attach_mrope_positions(model)
    return model

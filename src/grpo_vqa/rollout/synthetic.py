"""Random-weight Qwen2.5-VL models and hand-built image prompts (no tokenizer, no hub) for tests and benchmarks."""

from __future__ import annotations

import torch

#: Qwen2.5-VL-3B-Instruct dimensions (text and vision towers; token ids as in the real tokenizer).
QWEN2_5_VL_3B = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "rope_theta": 1000000.0,
    "mrope_section": [16, 24, 24],
    "tie_word_embeddings": True,
    "vision_depth": 32,
    "vision_hidden_size": 1280,
    "vision_intermediate_size": 3420,
    "vision_num_heads": 16,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}

#: A tiny model for CPU tests: 2 text layers of width 64 (4 heads, 2 KV heads), a 2-block vision tower.
QWEN2_5_VL_TINY = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 10000.0,
    "mrope_section": [2, 3, 3],
    "tie_word_embeddings": False,
    "vision_depth": 2,
    "vision_hidden_size": 32,
    "vision_intermediate_size": 64,
    "vision_num_heads": 2,
    "window_size": 56,
    "fullatt_block_indexes": [1],
}

#: Special token ids (the real Qwen2.5-VL ones for the full vocabulary; the top of a small one otherwise).
REAL_IDS = {
    "eos": 151645,
    "pad": 151643,
    "vision_start": 151652,
    "vision_end": 151653,
    "image": 151655,
    "video": 151656,
}


def special_ids(vocab_size: int) -> dict[str, int]:
    """Token ids of the special tokens for a vocabulary of ``vocab_size``."""
    if vocab_size > max(REAL_IDS.values()):
        return dict(REAL_IDS)
    top = vocab_size - 1
    return {
        "eos": top,
        "pad": top - 1,
        "vision_start": top - 2,
        "vision_end": top - 3,
        "image": top - 4,
        "video": top - 5,
    }


def qwen2_5_vl_config(dims: dict | None = None, attn_implementation: str = "sdpa"):
    """A ``Qwen2_5_VLConfig`` with ``dims`` (defaults: ``QWEN2_5_VL_TINY``)."""
    from transformers import Qwen2_5_VLConfig

    d = {**QWEN2_5_VL_TINY, **(dims or {})}
    ids = special_ids(d["vocab_size"])
    head_dim = d["hidden_size"] // d["num_attention_heads"]
    if sum(d["mrope_section"]) * 2 != head_dim:
        raise ValueError("mrope_section must sum to head_dim / 2")
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": d["vocab_size"],
            "hidden_size": d["hidden_size"],
            "intermediate_size": d["intermediate_size"],
            "num_hidden_layers": d["num_hidden_layers"],
            "num_attention_heads": d["num_attention_heads"],
            "num_key_value_heads": d["num_key_value_heads"],
            "max_position_embeddings": 32768,
            "max_window_layers": d["num_hidden_layers"],
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": d["rope_theta"],
                "mrope_section": list(d["mrope_section"]),
            },
            "eos_token_id": ids["eos"],
            "pad_token_id": ids["pad"],
            "bos_token_id": None,
            "tie_word_embeddings": d["tie_word_embeddings"],
        },
        vision_config={
            "depth": d["vision_depth"],
            "hidden_size": d["vision_hidden_size"],
            "intermediate_size": d["vision_intermediate_size"],
            "num_heads": d["vision_num_heads"],
            "out_hidden_size": d["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": d["window_size"],
            "fullatt_block_indexes": list(d["fullatt_block_indexes"]),
        },
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=d["tie_word_embeddings"],
    )
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    return config


def image_grid(height: int, width: int, patch: int = 14, merge: int = 2) -> tuple[int, int, int]:
    """(t, h, w) patch grid of one ``height`` x ``width`` image after Qwen's resize to multiples of patch*merge."""
    unit = patch * merge
    h = max(unit, round(height / unit) * unit)
    w = max(unit, round(width / unit) * unit)
    return 1, h // patch, w // patch


def image_prompts(
    config,
    prompt_lengths: list[tuple[int, int]],
    image_hw: tuple[int, int] | list[tuple[int, int] | None],
    *,
    generator: torch.Generator | None = None,
    text_vocab: int | None = None,
) -> dict:
    """Left-padded batch of prompts ``[text_before] <vision_start> <image_pad>*n <vision_end> [text_after]``.

    ``prompt_lengths`` gives (text tokens before, text tokens after) the image per row; ``image_hw`` one
    (height, width) for all rows or one per row (``None``: no image in that row). Returns ``input_ids``,
    ``attention_mask``, ``mm_token_type_ids``, ``pixel_values``, ``image_grid_thw`` (the last two absent when no
    row has an image).
    """
    text_cfg = config.get_text_config()
    ids = special_ids(text_cfg.vocab_size)
    text_vocab = text_vocab or min(text_cfg.vocab_size - 8, 150000)
    merge = config.vision_config.spatial_merge_size
    patch = config.vision_config.patch_size
    channels = config.vision_config.in_channels * config.vision_config.temporal_patch_size * patch * patch
    sizes = image_hw if isinstance(image_hw, list) else [image_hw] * len(prompt_lengths)
    rows, types, pixels, grids = [], [], [], []
    for (before, after), hw in zip(prompt_lengths, sizes, strict=True):
        row = torch.randint(0, text_vocab, (before,), generator=generator).tolist()
        typ = [0] * before
        if hw is not None:
            t, h, w = image_grid(*hw, patch=patch, merge=merge)
            n = t * h * w // merge**2
            row += [ids["vision_start"]] + [ids["image"]] * n + [ids["vision_end"]]
            typ += [0] + [1] * n + [0]
            pixels.append(torch.randn(t * h * w, channels, generator=generator))
            grids.append([t, h, w])
        row += torch.randint(0, text_vocab, (after,), generator=generator).tolist()
        typ += [0] * after
        rows.append(row)
        types.append(typ)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), ids["pad"], dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    mm = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, types, strict=True)):
        input_ids[i, width - len(r) :] = torch.tensor(r)
        attention_mask[i, width - len(r) :] = 1
        mm[i, width - len(t) :] = torch.tensor(t)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm}
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
        out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    return out


def build_model(dims: dict | None = None, *, dtype=torch.float32, device="cpu", seed: int = 0):
    """Random-weight ``Qwen2_5_VLForConditionalGeneration`` (eval mode) with ``dims``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = qwen2_5_vl_config(dims)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval()

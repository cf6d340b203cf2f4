"""Tiny randomly initialised models of the real VLM architectures, saved like hub checkpoints.

``build_tiny_model`` writes a directory that ``AutoModelForImageTextToText`` / ``AutoProcessor`` load exactly as
they load ``Qwen/Qwen2.5-VL-*`` or ``HuggingFaceTB/SmolVLM-*``: real config classes, real processor classes (PIL
image processors, no video processor), a BPE tokenizer trained on the task text and our own chat templates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, GenerationConfig

from grpo_vqa.config import tiny_spec_defaults
from grpo_vqa.models.loading import make_qwen_processor
from grpo_vqa.models.tokenizer import check_arch, train_tokenizer

#: Defaults of every spec key (see ``build_tiny_model``): the schema's ``models.<name>.tiny`` defaults, their one
#: home (workflow/schemas/config.schema.yaml).
DEFAULT_SPEC: dict = tiny_spec_defaults()

# Chat templates written for this project in the style of the real ones (string or list content; images as
# {"type": "image"} items; system/user/assistant roles; add_generation_prompt).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}:"
    "{% else %}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def resolve_spec(spec: dict | None) -> dict:
    """Merge ``spec`` over ``DEFAULT_SPEC``; unknown keys are an error."""
    spec = dict(spec or {})
    unknown = set(spec) - set(DEFAULT_SPEC)
    if unknown:
        raise ValueError(f"unknown tiny-model spec keys: {sorted(unknown)}")
    out = {**DEFAULT_SPEC, **spec}
    head_dim = out["text_hidden"] // out["heads"]
    if out["text_hidden"] % out["heads"] or out["heads"] % out["kv_heads"]:
        raise ValueError("text_hidden must be divisible by heads, and heads by kv_heads")
    if sum(out["mrope_section"]) != head_dim // 2:
        raise ValueError(f"mrope_section {out['mrope_section']} must sum to head_dim/2 = {head_dim // 2}")
    return out


def image_tokens_per_image(arch: str, spec: dict) -> int:
    """Number of image placeholder tokens one ``image_size`` x ``image_size`` image expands to."""
    s = resolve_spec(spec)
    per_side = s["image_size"] // s["patch_size"]
    down = s["merge_size"] if check_arch(arch) == "qwen2_5_vl" else s["scale_factor"]
    return (per_side // down) ** 2


def _qwen(spec: dict, tok):
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil

    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": spec["text_hidden"],
            "intermediate_size": spec["intermediate"],
            "num_hidden_layers": spec["layers"],
            "num_attention_heads": spec["heads"],
            "num_key_value_heads": spec["kv_heads"],
            "max_position_embeddings": spec["max_position_embeddings"],
            "max_window_layers": spec["layers"],
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": float(spec["rope_theta"]),
                "mrope_section": list(spec["mrope_section"]),
            },
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": spec["vision_depth"],
            "hidden_size": spec["vision_hidden"],
            "intermediate_size": spec["vision_intermediate"],
            "num_heads": spec["vision_heads"],
            "patch_size": spec["patch_size"],
            "spatial_merge_size": spec["merge_size"],
            "temporal_patch_size": 2,
            "window_size": spec["image_size"],
            "fullatt_block_indexes": [spec["vision_depth"] - 1],
            "out_hidden_size": spec["text_hidden"],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    pixels = spec["image_size"] ** 2
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels,
        max_pixels=pixels,
        patch_size=spec["patch_size"],
        merge_size=spec["merge_size"],
        temporal_patch_size=2,
    )
    processor = make_qwen_processor(image_processor, tok, QWEN2_5_VL_CHAT_TEMPLATE)
    gen = GenerationConfig(
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")], pad_token_id=ids("<|endoftext|>")
    )
    return config, processor, gen


def _idefics3(spec: dict, tok):
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    ids = tok.convert_tokens_to_ids
    config = Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": spec["text_hidden"],
            "intermediate_size": spec["intermediate"],
            "num_hidden_layers": spec["layers"],
            "num_attention_heads": spec["heads"],
            "num_key_value_heads": spec["kv_heads"],
            "max_position_embeddings": spec["max_position_embeddings"],
            "rope_parameters": {"rope_type": "default", "rope_theta": float(spec["rope_theta"])},
            "rms_norm_eps": 1e-5,
            "bos_token_id": ids("<|im_start|>"),
            "eos_token_id": ids("<end_of_utterance>"),
            "pad_token_id": ids("<|im_end|>"),
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": spec["vision_hidden"],
            "intermediate_size": spec["vision_intermediate"],
            "num_hidden_layers": spec["vision_depth"],
            "num_attention_heads": spec["vision_heads"],
            "image_size": spec["image_size"],
            "patch_size": spec["patch_size"],
        },
        image_token_id=ids("<image>"),
        scale_factor=spec["scale_factor"],
        pad_token_id=ids("<|im_end|>"),
        tie_word_embeddings=False,
    )
    side = spec["image_size"]
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": side},
        max_image_size={"longest_edge": side},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=image_tokens_per_image("idefics3", spec),
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    gen = GenerationConfig(
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=[ids("<end_of_utterance>")],
        pad_token_id=ids("<|im_end|>"),
    )
    return config, processor, gen


def build_tiny_model(
    arch: str, spec: dict | None, corpus: Iterable[str], out_dir: str | Path, seed: int
) -> Path:
    """Build, randomly initialise and save a tiny ``arch`` model + processor to ``out_dir``; return the path.

    ``arch`` is ``"qwen2_5_vl"`` or ``"idefics3"``. ``spec`` keys (defaults in ``DEFAULT_SPEC``):
    text_hidden (LM hidden size), layers (LM decoder layers), heads / kv_heads (LM query / key-value heads),
    intermediate (LM MLP size), vision_depth / vision_hidden / vision_heads / vision_intermediate (vision
    encoder layers, width, heads, MLP size), patch_size (vision patch side, pixels), merge_size (Qwen spatial
    merge of merge_size^2 patches per token), scale_factor (Idefics3 pixel-shuffle factor), image_size (the
    side every image is resized to; 112 -> 16 image tokens), vocab_size (BPE vocabulary upper bound, incl.
    specials and the 256 byte symbols), rope_theta (LM RoPE base; small so tiny heads can tell positions
    apart), mrope_section (Qwen M-RoPE split of head_dim/2 over time/height/width; width largest),
    max_position_embeddings (LM context). Same ``seed`` and corpus give identical weights and tokenizer files.
    """
    check_arch(arch)
    s = resolve_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(corpus, s["vocab_size"], arch)
    config, processor, gen = (_qwen if arch == "qwen2_5_vl" else _idefics3)(s, tok)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = gen
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "tiny_spec.json").write_text(json.dumps({"arch": arch, "seed": seed, "spec": s}, indent=2) + "\n")
    return out

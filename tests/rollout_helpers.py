"""Shared pieces of the fast-rollout trainer tests (Qwen2.5-VL and Idefics3): one tiny GRPO step on the CPU."""

from __future__ import annotations


def tiny_lora():
    """A LoRA on q/v with random (non-zero) B, so the adapter changes the model's outputs from the start."""
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def tiny_grpo_args(tmp_path, **overrides):
    """GRPOConfig for one CPU step: 2 prompts x 4 generations over 2 micro-steps, 12-token completions."""
    from trl import GRPOConfig

    kw = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        steps_per_generation=2,
        gradient_accumulation_steps=2,
        max_completion_length=12,
        temperature=0.9,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        max_steps=1,
        seed=0,
    )
    kw.update(overrides)
    return GRPOConfig(**kw)


def tiling_idefics3_processor(tiny):
    """A SmolVLM-like processor on ``tiny``'s tokenizer whose images are split into 112-px tiles (several per
    image, unequal counts), as SmolVLM's 2048-px resize and 512-px split make them."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    from grpo_vqa.models.tiny import IDEFICS3_CHAT_TEMPLATE

    base = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 224}, max_image_size={"longest_edge": 112}
    )
    return Idefics3Processor(
        image_processor=base,
        tokenizer=tiny.tokenizer,
        image_seq_len=tiny.image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )


def engine_generate(engine, inp: dict, n: int, sampling):
    """``engine.generate`` on a processor's batch ``inp`` (Qwen2.5-VL's or Idefics3's image inputs, whichever it
    holds), ``n`` new tokens."""
    images = ("pixel_values", "image_grid_thw", "mm_token_type_ids", "pixel_attention_mask")
    return engine.generate(
        inp["input_ids"],
        inp["attention_mask"],
        max_new_tokens=n,
        sampling=sampling,
        **{k: inp[k] for k in images if k in inp},
    )

"""Greedy completions of one-image chat prompts (evaluation's generation and the warm start's listing probe)."""

from __future__ import annotations

#: The tags a completion keeps when special tokens are stripped (the answer format is made of them).
FORMAT_TAGS = frozenset({"<think>", "</think>", "<answer>", "</answer>"})


def chat_texts(processor, messages: list[list[dict]]) -> list[str]:
    """Each conversation rendered by the processor's chat template, ready for the assistant's turn."""
    return [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]


def greedy_completions(
    model, processor, images, messages: list[list[dict]], max_new_tokens: int
) -> list[str]:
    """Greedy completions for one batch (one image per conversation; the processor pads on the left; only the
    new tokens are decoded, special tokens kept)."""
    import torch

    inputs = processor(
        text=chat_texts(processor, messages),
        images=[[im] for im in images],
        padding=True,
        return_tensors="pt",
    )
    inputs = inputs.to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True)
    new = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def strip_special(text: str, processor) -> str:
    """Drop padding/end-of-turn tokens from a decoded completion (keep the <think>/<answer> tags)."""
    for special in processor.tokenizer.all_special_tokens:
        if special not in FORMAT_TAGS and special:
            text = text.replace(special, "")
    return text.replace("<end_of_utterance>", "").strip()

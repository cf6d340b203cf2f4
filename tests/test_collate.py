"""The caching collator (grpo_vqa.training.collate) gives exactly TRL's batches, and steps aside where it cannot."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling  # noqa: E402

from grpo_vqa.data.schema import prompt_messages  # noqa: E402
from grpo_vqa.models.loading import load_processor  # noqa: E402
from grpo_vqa.models.tiny import build_tiny_model  # noqa: E402
from grpo_vqa.training.collate import CachedCollator, row_key, same_batch, split_rows  # noqa: E402

torch.set_num_threads(1)

CORPUS = [
    "Name the shapes from left to right.",
    "Left to right: the blue circle, the red triangle, the green square.",
    "<think>The red triangle is left of the blue circle.</think><answer>True</answer>",
] * 10


def rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt-completion rows as sft_rows makes them, with texts of different lengths and distinct images."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        img = Image.new("RGB", (112, 112), "white")
        x = rng.randrange(10, 90)
        ImageDraw.Draw(img).ellipse([x, 30, x + 20, 50], fill=rng.choice(["red", "blue", "green"]))
        words = " ".join(["the red triangle"] * rng.randrange(1, 5))
        out.append(
            {
                "prompt": prompt_messages(f"Name the shapes from left to right. {i}", None),
                "completion": [
                    {"role": "assistant", "content": [{"type": "text", "text": f"Left: {words}."}]}
                ],
                "image": img,
            }
        )
    return out


@pytest.fixture(scope="module", params=["qwen2_5_vl", "idefics3"])
def processor(request, tmp_path_factory):
    path = build_tiny_model(request.param, {}, CORPUS, tmp_path_factory.mktemp(request.param), seed=0)
    return load_processor(str(path), padding_side="right")


def trl_collator(processor):
    return DataCollatorForVisionLanguageModeling(processor=processor, completion_only_loss=True)


def test_cached_batches_equal_trl_batches_every_epoch(processor):
    data = rows(24)
    reference = trl_collator(processor)
    cached = CachedCollator(trl_collator(processor), processor.tokenizer.pad_token_id)
    rng = random.Random(1)
    for _epoch in range(3):
        order = list(range(len(data)))
        rng.shuffle(order)
        for b in range(0, len(order), 8):
            batch = [data[i] for i in order[b : b + 8]]
            want = reference([dict(r) for r in batch])
            got = cached([dict(r) for r in batch])
            assert same_batch(got, want)
            assert type(got) is type(want)  # a BatchFeature: the trainer moves it with .to()
    assert cached.enabled is True
    assert cached.misses == len(data) and cached.hits == 2 * len(data)
    # the token rows differ in length, so the batches were padded (the case that needs the padding right)
    assert len({int(m.sum()) for m in want["attention_mask"]}) > 1


def test_a_batch_cut_into_rows_gives_the_one_row_outputs(processor):
    """New rows are collated together and cut apart: each piece must be what TRL gives for that row alone."""
    data = rows(7, seed=3)
    batch = trl_collator(processor)([dict(r) for r in data])
    cut = split_rows(batch, data)
    assert cut is not None and len(cut) == len(data)
    for piece, row in zip(cut, data, strict=True):
        assert same_batch(piece, trl_collator(processor)([dict(row)]))


def test_rows_are_left_as_they_came(processor):
    """TRL's collator edits its rows in place (image -> images); the cache's calls must not leak that back."""
    data = rows(4)
    cached = CachedCollator(trl_collator(processor), processor.tokenizer.pad_token_id)
    batch = [dict(r) for r in data]
    cached(batch)
    assert all("image" in r and "images" not in r for r in batch)


def test_a_batch_that_is_not_the_rows_concatenation_turns_the_cache_off():
    """An inner collator whose batch carries something no row has: the first batch's check fails, the cache turns
    off, and every batch is the inner collator's own."""

    def inner(examples):
        n = torch.tensor([len(examples)])
        return {"input_ids": torch.tensor([[1, 2, 3]] * len(examples)), "batch_size": n}

    cached = CachedCollator(inner, pad_token_id=0)
    data = rows(6)
    first = cached([dict(r) for r in data[:3]])
    assert cached.enabled is False and not cached.cache
    assert first["batch_size"].item() == 3
    assert cached([dict(r) for r in data[3:5]])["batch_size"].item() == 2


def test_the_key_sees_the_pixels_and_the_texts():
    a, b = rows(2)
    assert row_key(a) != row_key(b)
    same_text = dict(a, image=b["image"])
    assert row_key(same_text) != row_key(a)
    assert row_key(dict(a)) == row_key(a)


def test_memory_cap_keeps_nothing_past_it(processor):
    data = rows(6)
    cached = CachedCollator(trl_collator(processor), processor.tokenizer.pad_token_id, max_bytes=1)
    want = trl_collator(processor)([dict(r) for r in data])
    assert same_batch(cached([dict(r) for r in data]), want)
    assert not cached.cache and cached.kept_bytes == 0

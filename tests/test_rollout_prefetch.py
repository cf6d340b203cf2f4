"""Background image prefetch of the processor caches (``rollout.prefetch_images``): the prefetched features are
the processor's own, GRPO with prefetch on and off gives the same log-probs and losses, and an exception raised
in the prefetch thread reaches the main thread."""

import os
import threading

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from grpo_vqa.rollout.cache import (  # noqa: E402
    Idefics3ImageProcessorCache,
    ImagePrefetcher,
    ImageProcessorCache,
)

CORPUS = [
    "What color is the sky? <think> it is day </think> <answer>blue</answer>",
    "How many cats are in the picture? <think> count </think> <answer>2</answer>",
] * 10


def _images(shapes, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)) for hw in shapes]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from grpo_vqa.models.tiny import build_tiny_model

    spec = {"image_size": 112, "rope_theta": 10.0}
    return build_tiny_model("idefics3", spec, CORPUS, tmp_path_factory.mktemp("tinyp"), seed=0)


def _idefics3_processor(checkpoint):
    """SmolVLM-like processor with image splitting (several tiles per image, unequal counts)."""
    from rollout_helpers import tiling_idefics3_processor

    from grpo_vqa.models.loading import load_processor

    proc = tiling_idefics3_processor(load_processor(str(checkpoint)))
    proc.tokenizer.padding_side = "left"
    return proc


def test_idefics3_prefetched_features_equal_the_processors(checkpoint):
    proc = _idefics3_processor(checkpoint)
    base = proc.image_processor
    *images, first = _images([(84, 112), (112, 56), (40, 40), (56, 56)], seed=2)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    order = [0, 0, 1, 2, 1, 0]
    kw = dict(
        text=[text] * len(order), images=[[images[i]] for i in order], return_tensors="pt", padding=True
    )
    ref = proc(**kw)
    pre = ImagePrefetcher(workers=1)
    pre.submit([images[0]])  # before any call: waits for the processor's kwargs
    try:
        proc.image_processor = Idefics3ImageProcessorCache(base, prefetcher=pre)
        proc(**dict(kw, text=[text], images=[[first]]))  # a first batch gives the kwargs
        for im in images:  # the rows of the next batch, as the dataloader fetches them
            pre.submit([im])
        cache = proc.image_processor = Idefics3ImageProcessorCache(base, prefetcher=pre)
        out = proc(**kw)
    finally:
        proc.image_processor = base
        pre.shutdown()
    assert ref["pixel_values"].shape[1] > 1 and (ref["pixel_attention_mask"].flatten(2).sum(-1) == 0).any()
    assert set(out.keys()) == set(ref.keys())
    for key in ref:
        assert torch.equal(out[key], ref[key]), key
    assert cache.prefetched == 3 and cache.processed == 0  # all three from the thread, none in the call
    assert pre.submitted == 3  # images[0] once: it was waiting for the kwargs, then pending


def test_idefics3_cache_on_a_grpo_batch_equals_the_processor(checkpoint):
    """One sample repeated (GRPO's num_generations): stacked without padding, and TRL's second pass over the same
    batch gets the first pass's tensors; both equal the processor's output."""
    proc = _idefics3_processor(checkpoint)
    base = proc.image_processor
    (image,) = _images([(84, 112)], seed=6)
    copy = image.copy()  # equal pixels, another object: the same sample
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    kw = dict(text=[text] * 4, images=[[image]] * 3 + [[copy]], return_tensors="pt", padding=True)
    ref = proc(**kw)
    cache = proc.image_processor = Idefics3ImageProcessorCache(base)
    try:
        first, second = proc(**kw), proc(**kw)
    finally:
        proc.image_processor = base
    for out in (first, second):
        assert set(out.keys()) == set(ref.keys())
        for key in ref:
            assert torch.equal(out[key], ref[key]), key
    assert second["pixel_values"] is first["pixel_values"] and cache.processed == 1 and cache.calls == 2


def test_qwen_prefetched_features_equal_the_processors():
    from transformers import Qwen2VLImageProcessorPil

    base = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=112 * 112)
    images = _images([(56, 84), (84, 56), (28, 112)], seed=3)
    ref = base(images + images[:1], return_tensors="pt")
    pre = ImagePrefetcher(workers=2)
    try:
        ImageProcessorCache(base, prefetcher=pre)(images[:1], return_tensors="pt")  # gives the kwargs
        pre.submit(images[1:])  # one row with two images
        pre.submit(images[:1])
        cache = ImageProcessorCache(base, prefetcher=pre)
        out = cache(images + images[:1], return_tensors="pt")
    finally:
        pre.shutdown()
    for key in ref:
        assert torch.equal(torch.as_tensor(out[key]), torch.as_tensor(ref[key])), key
    assert cache.prefetched == 3 and cache.processed == 0 and pre.submitted == 2


def test_exception_in_the_prefetch_thread_surfaces(checkpoint):
    proc = _idefics3_processor(checkpoint)
    good, bad = _images([(40, 40), (56, 56)], seed=4)
    threads = []

    class Failing:
        def __getattr__(self, name):
            return getattr(proc.image_processor, name)

        def __call__(self, images, **kwargs):
            threads.append(threading.current_thread().name)
            if images[0][0] is bad:
                raise RuntimeError("corrupt image")
            return proc.image_processor(images, **kwargs)

    failing = Failing()
    pre = ImagePrefetcher()
    try:
        Idefics3ImageProcessorCache(failing, prefetcher=pre)([[good]], return_tensors="pt")
        pre.submit([bad])
        cache = Idefics3ImageProcessorCache(failing, prefetcher=pre)
        with pytest.raises(RuntimeError, match="corrupt image"):
            cache([[bad]], return_tensors="pt")
    finally:
        pre.shutdown()
    assert threads[-1].startswith("image-prefetch")  # it was raised in the thread, re-raised here


def _grpo_run(checkpoint, tmp_path, prefetch):
    from datasets import Dataset
    from peft import get_peft_model
    from rollout_helpers import tiny_grpo_args, tiny_lora

    from grpo_vqa.models.loading import load_model
    from grpo_vqa.rollout import FastRolloutGRPOTrainer, RolloutConfig

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(checkpoint)), tiny_lora())
    questions = ["What is it?", "What color is the sky?", "How many cats are in the picture?"]
    n = 6
    prompts = [[{"role": "user", "content": questions[i % 3]}] for i in range(n)]
    ds = Dataset.from_dict({"prompt": prompts, "image": _images([(84, 112)] * n, seed=7)})
    tr = FastRolloutGRPOTrainer(
        model=model,
        processing_class=_idefics3_processor(checkpoint),
        reward_funcs=[lambda completions, **kw: [float(len(c[0]["content"]) % 7) for c in completions]],
        args=tiny_grpo_args(tmp_path, max_steps=3, logging_steps=1, beta=0.04),
        train_dataset=ds,
        rollout_config=RolloutConfig(engine="fast", prefetch_images=prefetch),
    )
    logps = []
    inner = tr._generate_and_score_completions

    def record(inputs):
        out = inner(inputs)
        logps.append((out["completion_ids"].clone(), out["sampling_per_token_logps"].clone()))
        return out

    tr._generate_and_score_completions = record
    tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    return tr, logps, losses


def test_grpo_with_and_without_prefetch_gives_the_same_run(checkpoint, tmp_path):
    on, logps_on, losses_on = _grpo_run(checkpoint, tmp_path / "on", True)
    off, logps_off, losses_off = _grpo_run(checkpoint, tmp_path / "off", False)
    assert off.image_prefetcher is None
    assert on.image_prefetcher.taken >= 4  # the 2nd and 3rd generation batches' samples came from the thread
    assert on.image_prefetcher._executor is None  # shut down at the end of training
    assert len(logps_on) == len(logps_off) == 3 and len(losses_on) == 3
    for (ids_a, lp_a), (ids_b, lp_b) in zip(logps_on, logps_off, strict=True):
        assert torch.equal(ids_a, ids_b)
        assert torch.equal(lp_a, lp_b)
    assert losses_on == losses_off

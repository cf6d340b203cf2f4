"""FastRolloutGRPOTrainer on a tiny Qwen2.5-VL checkpoint with LoRA (CPU, fp32): log-probs, LoRA freshness, steps."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402
from peft import get_peft_model  # noqa: E402
from PIL import Image  # noqa: E402
from rollout_helpers import tiny_grpo_args, tiny_lora  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from grpo_vqa.rollout import FastRolloutGRPOTrainer, RolloutConfig, grpo_trainer_class  # noqa: E402
from grpo_vqa.rollout.cache import ImageFeatureCache  # noqa: E402
from grpo_vqa.rollout.trainer import _RowCache  # noqa: E402

CORPUS = [
    "What color is the sky? <think> it is day </think> <answer>blue</answer>",
    "How many cats are in the picture? <think> count </think> <answer>2</answer>",
] * 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from grpo_vqa.models.tiny import build_tiny_model

    return build_tiny_model(
        "qwen2_5_vl", {"image_size": 112}, CORPUS, tmp_path_factory.mktemp("tinyq"), seed=0
    )


def _dataset(n=4):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8)) for _ in range(n)]
    questions = ["What color is the sky?", "How many cats are in the picture?", "What is it?", "Count them."]
    prompts = [[{"role": "user", "content": questions[i % 4]}] for i in range(n)]
    return Dataset.from_dict({"prompt": prompts, "image": images})


def _reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 7) for c in completions]


def _trainer(checkpoint, tmp_path, engine="fast", rollout_config=None, **overrides):
    from grpo_vqa.models.loading import load_model, load_processor

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(checkpoint)), tiny_lora())
    cls = grpo_trainer_class(engine)
    return cls(
        model=model,
        processing_class=load_processor(str(checkpoint)),
        reward_funcs=[_reward],
        args=tiny_grpo_args(
            tmp_path, **({"top_p": 0.95, "logging_steps": 1, "learning_rate": 0.05} | overrides)
        ),
        train_dataset=_dataset(),
        **({} if rollout_config is None else {"rollout_config": rollout_config}),
    )


def test_grpo_trainer_class():
    assert grpo_trainer_class("hf") is GRPOTrainer
    assert grpo_trainer_class("fast") is FastRolloutGRPOTrainer
    assert issubclass(FastRolloutGRPOTrainer, GRPOTrainer)
    with pytest.raises(ValueError):
        grpo_trainer_class("vllm")


def test_fast_grpo_args():
    from grpo_vqa.rollout import fast_grpo_args

    args = fast_grpo_args(64)
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 64
    assert args["steps_per_generation"] == args["gradient_accumulation_steps"] == 8
    assert args["gradient_checkpointing"] is False
    with pytest.raises(ValueError):
        fast_grpo_args(20, 8)


def test_rollout_logprobs_match_trainer_recompute(checkpoint, tmp_path):
    tr = _trainer(checkpoint, tmp_path)
    assert tr.rollout_engine is not None
    ds = _dataset()
    batch = [ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    tr.model.train()
    torch.manual_seed(1)
    out = tr._generate_and_score_completions(batch)
    assert tr.rollout_engine.last_timings["prefill_rows"] == 2  # each prompt prefilled once
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        logps, _, _ = tr._get_per_token_logps_and_entropies(
            tr.model,
            ids,
            mask,
            out["completion_ids"].shape[1],
            pixel_values=out["pixel_values"],
            image_grid_thw=out["image_grid_thw"],
            num_images=out["num_images"],
            mm_token_type_ids=out["mm_token_type_ids"],
        )
    valid = out["completion_mask"].bool()
    assert valid.sum() > 20
    diff = (logps - out["sampling_per_token_logps"])[valid].abs().max().item()
    assert diff < 1e-3, diff
    # the completions really are samples (not all equal within a group)
    assert len({tuple(r) for r in out["completion_ids"][:4].tolist()}) > 1


def test_lora_updates_reach_the_engine(checkpoint, tmp_path):
    from grpo_vqa.rollout import SamplingParams

    tr = _trainer(checkpoint, tmp_path)
    proc = tr.processing_class
    ds = _dataset()
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inp = proc(text=text, images=[ds[0]["image"]], return_tensors="pt")
    engine, model = tr.rollout_engine, tr.model

    def both():
        out = engine.generate(
            inp["input_ids"],
            inp["attention_mask"],
            max_new_tokens=10,
            sampling=SamplingParams(do_sample=False),
            pixel_values=inp["pixel_values"],
            image_grid_thw=inp["image_grid_thw"],
            mm_token_type_ids=inp.get("mm_token_type_ids"),
        )
        model.eval()
        ref = model.generate(
            **inp, max_new_tokens=10, do_sample=False, eos_token_id=tr.eos_token_ids, suppress_tokens=None
        )
        ref = ref[0, inp["input_ids"].shape[1] :].tolist()
        return out.completion_lists()[0][0], ref

    before, ref_before = both()
    with torch.no_grad():  # an optimizer-like in-place update of the adapter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 2.0)
    after, ref_after = both()
    assert before == ref_before[: len(before)]
    assert after == ref_after[: len(after)]
    assert before != after


def test_training_steps_run_and_rows_are_fetched_once_per_generation(checkpoint, tmp_path):
    tr = _trainer(checkpoint, tmp_path, max_steps=2)
    loader = tr.get_train_dataloader()
    assert tr.train_dataset.__class__.__name__ == "Dataset"  # the cache wraps the loader's view only
    tr.train()
    hist = [h for h in tr.state.log_history if "loss" in h]
    assert len(hist) == 2
    assert all(np.isfinite(h["loss"]) for h in hist)
    assert hist[0]["rollout/prefill_rows"] == 2  # 8 rollouts from 2 prompts
    del loader


def test_row_cache_fetches_each_row_once():
    calls = []

    class Rows:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            calls.append(i)
            return {"prompt": [{"role": "user", "content": f"q{i}"}], "image": i}

    cache = _RowCache(Rows(), capacity=4)
    seq = [1, 1, 1, 1, 2, 2, 2, 2] * 3  # a generation batch repeated over 3 accumulation steps
    rows = [cache[i] for i in seq]
    assert calls == [1, 2] and cache.misses == 2
    rows[0]["prompt"][0]["content"] = "changed"
    assert cache[1]["prompt"][0]["content"] == "q1"  # callers cannot corrupt the cached row
    for i in range(3, 8):
        cache[i]
    cache[1]
    assert calls[-1] == 1  # evicted after `capacity` newer rows


def test_cudnn_attention_is_turned_off_unless_asked(checkpoint, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    _trainer(checkpoint, tmp_path)
    assert calls == [False]
    calls.clear()
    _trainer(checkpoint, tmp_path, rollout_config=RolloutConfig(engine="fast", cudnn_attention=True))
    assert calls == []


def test_hf_fallback_for_unsupported_settings(checkpoint, tmp_path):
    tr = _trainer(checkpoint, tmp_path, generation_kwargs={"repetition_penalty": 1.2})
    assert tr.rollout_engine is None
    assert RolloutConfig(engine="fast").engine == "fast"


def test_image_caches_process_each_distinct_image_once(checkpoint, tmp_path):
    tr = _trainer(checkpoint, tmp_path)
    ds = _dataset()
    batch = [ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    tr.model.train()
    out = tr._generate_and_score_completions(batch)
    cache = tr.image_processor_cache
    assert cache.calls == 2 and cache.processed == 2  # two processor calls, two distinct images
    assert type(tr.processing_class.image_processor).__name__.startswith("Qwen2VLImageProcessor")  # restored
    feats = tr.image_feature_cache
    assert feats.misses == 2  # the prefill encoded the two distinct images once
    ref = tr.processing_class.image_processor([ds[0]["image"], ds[1]["image"]], return_tensors="pt")
    n0 = int(ref["image_grid_thw"][0].prod())
    torch.testing.assert_close(out["pixel_values"][:n0], ref["pixel_values"][:n0])
    # log-prob forwards reuse the features; cached and recomputed features agree
    args, kw = _logprob_inputs(out)
    with torch.no_grad():
        cached, _, _ = tr._get_per_token_logps_and_entropies(tr.model, *args, **kw)
        assert feats.misses == 2 and feats.hits >= 8
        feats.clear()
        feats._frozen = False  # bypass the cache
        fresh, _, _ = tr._get_per_token_logps_and_entropies(tr.model, *args, **kw)
    torch.testing.assert_close(cached, fresh, atol=1e-5, rtol=1e-5)
    other = ImageFeatureCache.__module__
    assert other == "grpo_vqa.rollout.cache"


def _logprob_inputs(out: dict) -> tuple[tuple, dict]:
    """The positional and keyword arguments of ``_get_per_token_logps_and_entropies`` for a scored batch."""
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    kw = dict(
        pixel_values=out["pixel_values"],
        image_grid_thw=out["image_grid_thw"],
        num_images=out["num_images"],
        mm_token_type_ids=out["mm_token_type_ids"],
    )
    return (ids, mask, out["completion_ids"].shape[1]), kw


def test_image_feature_cache_is_bypassed_when_vision_trains(checkpoint, tmp_path):
    tr = _trainer(checkpoint, tmp_path)
    visual = tr.image_feature_cache.inner.visual
    next(visual.parameters()).requires_grad_(True)
    tr.image_feature_cache.clear()
    assert tr.image_feature_cache._frozen is False


def test_wide_logprob_chunks_give_the_same_logprobs(checkpoint, tmp_path):
    """``rollout.logprob_batch``: the no-grad log-prob forwards in wider chunks than the micro-batch compute the
    same values (fp32 on the CPU); forwards with gradients keep TRL's chunks."""
    tr = _trainer(checkpoint, tmp_path, rollout_config=RolloutConfig(engine="fast", logprob_batch=8))
    ds = _dataset()
    batch = [ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    tr.model.train()
    out = tr._generate_and_score_completions(batch)
    args, kw = _logprob_inputs(out)
    sizes = []
    forward = tr.model.forward

    def counting(*a, **k):
        sizes.append(k["input_ids"].shape[0])
        return forward(*a, **k)

    tr.model.forward = counting
    try:
        with torch.no_grad():
            wide, _, _ = tr._get_per_token_logps_and_entropies(tr.model, *args, batch_size=2, **kw)
        assert sizes == [8]
        tr.rollout_config.logprob_batch = 0
        with torch.no_grad():
            narrow, _, _ = tr._get_per_token_logps_and_entropies(tr.model, *args, batch_size=2, **kw)
        assert sizes == [8, 2, 2, 2, 2]
    finally:
        tr.model.forward = forward
    torch.testing.assert_close(wide, narrow, atol=1e-5, rtol=1e-5)


def test_image_processor_cache_fingerprints_each_image_object_once(monkeypatch):
    from transformers import Qwen2VLImageProcessorPil

    import grpo_vqa.rollout.cache as cache_module

    calls = []
    real = cache_module._image_key
    monkeypatch.setattr(cache_module, "_image_key", lambda img: calls.append(1) or real(img))
    base = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=112 * 112)
    rng = np.random.default_rng(0)
    a, b = (Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)) for _ in range(2))
    ref = base([a, a, b, b], return_tensors="pt")
    cache = cache_module.ImageProcessorCache(base, device="cpu")
    for _ in range(2):  # TRL processes the batch twice
        out = cache([a, a, b, b], return_tensors="pt")
        for key in ref:
            assert torch.equal(torch.as_tensor(out[key]), torch.as_tensor(ref[key])), key
    assert len(calls) == 2 and cache.processed == 2

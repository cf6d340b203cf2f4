"""RolloutEngine on a tiny random SmolVLM / Idefics3 (CPU, fp32): greedy tokens with the engine's KV cache equal
those without it (``kv_cache: false``) and transformers' ``generate`` with and without its cache; EOS, dedupe,
LoRA, and the GRPO trainer's rollouts against its own log-prob forward."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from rollout_helpers import engine_generate  # noqa: E402

from grpo_vqa.rollout import RolloutConfig, RolloutEngine, SamplingParams  # noqa: E402

CORPUS = [
    "What color is the sky? <think> it is day </think> <answer>blue</answer>",
    "How many cats are in the picture? <think> count </think> <answer>2</answer>",
] * 10
IMAGE_SIZE = 112
GREEDY = SamplingParams(do_sample=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from grpo_vqa.models.tiny import build_tiny_model

    # small RoPE base: positions change the logits a lot, so a wrong position shows up in the tokens
    spec = {"image_size": IMAGE_SIZE, "rope_theta": 10.0}
    return build_tiny_model("idefics3", spec, CORPUS, tmp_path_factory.mktemp("tinyi"), seed=0)


@pytest.fixture(scope="module")
def model(checkpoint):
    from grpo_vqa.models.loading import load_model

    return load_model(str(checkpoint)).eval()


@pytest.fixture(scope="module")
def processor(checkpoint):
    from grpo_vqa.models.loading import load_processor

    return load_processor(str(checkpoint))


def _images(n, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8)) for _ in range(n)]


def _inputs(processor, questions, images):
    msgs = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions
    ]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    processor.tokenizer.padding_side = "left"
    inp = processor(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True)
    assert inp["pixel_values"].dim() == 5  # (B, images, C, H, W)
    return dict(inp)


def _prompts(processor, seed=0):
    # three prompts of different lengths (left padding), three images
    questions = ["What color is the sky?", "How many cats are in the picture?", "What is it?"]
    inp = _inputs(processor, questions, _images(3, seed))
    assert (inp["attention_mask"] == 0).any()
    return inp


def _engine(model, eos, pad, **cfg):
    return RolloutEngine(model, RolloutConfig(engine="fast", **cfg), eos_token_ids=eos, pad_token_id=pad)


def _run(engine, inp, n, sampling=GREEDY):
    return engine_generate(engine, inp, n, sampling)


def _hf(model, inp, n, eos, pad, use_cache):
    out = model.generate(
        **inp, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad, use_cache=use_cache
    )
    return out[:, inp["input_ids"].shape[1] :]


def _never_eos(model):
    """A token greedy decoding is never seen to emit here, so every step is compared."""
    return [model.config.image_token_id]


def test_greedy_cached_equals_uncached_and_generate(model, processor):
    inp = _prompts(processor)
    pad = processor.tokenizer.pad_token_id
    eos = _never_eos(model)
    n = 40
    cached = _run(_engine(model, eos, pad), inp, n)
    uncached = _run(_engine(model, eos, pad, kv_cache=False), inp, n)
    hf_cached = _hf(model, inp, n, eos, pad, True)
    hf_uncached = _hf(model, inp, n, eos, pad, False)
    assert cached.tokens.shape == (3, n) and uncached.tokens.shape == (3, n)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert torch.equal(cached.tokens, hf_cached)
    assert torch.equal(cached.tokens, hf_uncached)
    torch.testing.assert_close(cached.logprobs, uncached.logprobs, atol=1e-4, rtol=0)
    assert cached.lengths.tolist() == [n] * 3
    assert len(set(map(tuple, cached.tokens.tolist()))) == 3  # rows really differ
    assert uncached.timings["decode_steps"] == n and cached.timings["decode_steps"] == n - 1
    # the image matters: other pixels give other completions
    other = dict(inp, pixel_values=torch.randn_like(inp["pixel_values"]) * 3)
    assert not torch.equal(_run(_engine(model, eos, pad), other, n).tokens, cached.tokens)


def test_eos_stops_rows_and_pads_with_and_without_cache(model, processor):
    inp = _prompts(processor)
    pad = processor.tokenizer.pad_token_id
    free = _run(_engine(model, _never_eos(model), pad), inp, 24)
    eos_tok = free.tokens[1, 5].item()  # the token row 1 emits at step 5
    first = [
        (row == eos_tok).nonzero()[0].item() + 1 if (row == eos_tok).any() else 24 for row in free.tokens
    ]
    ref = _hf(model, inp, 24, [eos_tok], pad, False)
    for kv_cache in (True, False):
        out = _run(_engine(model, [eos_tok], pad, kv_cache=kv_cache, check_eos_every=4), inp, 24)
        assert out.lengths.tolist() == first
        for b, n in enumerate(first):
            assert torch.equal(out.tokens[b, :n], free.tokens[b, :n])
            assert (out.tokens[b, n:] == pad).all() and (out.logprobs[b, n:] == 0).all()
        assert torch.equal(out.tokens[:, : ref.shape[1]], ref[:, : out.tokens.shape[1]])


def test_dedupe_and_chunking_do_not_change_tokens(model, processor):
    pad = processor.tokenizer.pad_token_id
    eos = _never_eos(model)
    images = _images(2, seed=3)
    questions = ["What is it?", "How many cats are in the picture?"]
    inp = _inputs(processor, [questions[i] for i in (0, 0, 1, 1)], [images[i] for i in (0, 0, 1, 1)])
    ref = _run(_engine(model, eos, pad, dedupe_prompts=False), inp, 16)
    dedup = _run(_engine(model, eos, pad), inp, 16)
    chunked = _run(_engine(model, eos, pad, max_batch=3, prefill_batch=1), inp, 16)
    assert ref.timings["prefill_rows"] == 4 and dedup.timings["prefill_rows"] == 2
    assert torch.equal(ref.tokens, dedup.tokens) and torch.equal(ref.tokens, chunked.tokens)
    assert torch.equal(ref.tokens[0], ref.tokens[1]) and not torch.equal(ref.tokens[1], ref.tokens[2])
    # same text, other image: not merged
    other = _inputs(processor, [questions[0]] * 2, images)
    assert _run(_engine(model, eos, pad), other, 4).timings["prefill_rows"] == 2


def test_lora_merged_and_unmerged_decode_match_peft_generate(checkpoint, processor):
    from peft import LoraConfig, get_peft_model

    from grpo_vqa.models.loading import load_model

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(load_model(str(checkpoint)), lora).eval()
    inp = _prompts(processor, seed=1)
    pad = processor.tokenizer.pad_token_id
    eos = [peft_model.config.image_token_id]
    ref = _hf(peft_model, inp, 24, eos, pad, False)
    plain = _run(_engine(peft_model, eos, pad, merge_lora=False), inp, 24)
    merged = _run(_engine(peft_model, eos, pad, merge_lora=True), inp, 24)
    assert torch.equal(plain.tokens, ref) and torch.equal(merged.tokens, ref)


def test_kv_cache_off_is_refused_for_qwen():
    from grpo_vqa.rollout.synthetic import build_model

    with pytest.raises(NotImplementedError, match="kv_cache"):
        _engine(build_model(seed=0), [0], 0, kv_cache=False)


def test_trainer_rollouts_match_its_logprob_forward(checkpoint, tmp_path):
    """GRPO on Idefics3 with the engine: sampled tokens' log-probs equal the trainer's own forward (the loss's)."""
    from datasets import Dataset
    from peft import get_peft_model
    from rollout_helpers import tiny_grpo_args, tiny_lora

    from grpo_vqa.models.loading import load_model, load_processor
    from grpo_vqa.rollout import FastRolloutGRPOTrainer

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(checkpoint)), tiny_lora())
    # equal-length prompts: TRL's log-prob forward numbers positions 0..L-1, pads included, while generate
    # (and so the engine) counts real tokens only; without padding the two agree
    prompts = [[{"role": "user", "content": "What is it?"}]] * 2
    ds = Dataset.from_dict({"prompt": prompts, "image": _images(2, seed=5)})
    args = tiny_grpo_args(tmp_path)
    tr = FastRolloutGRPOTrainer(
        model=model,
        processing_class=load_processor(str(checkpoint)),
        reward_funcs=[lambda completions, **kw: [float(len(c[0]["content"]) % 7) for c in completions]],
        args=args,
        train_dataset=ds,
    )
    assert tr.rollout_engine is not None and tr.rollout_engine.model_type == "idefics3"
    tr.model.train()
    torch.manual_seed(1)
    out = tr._generate_and_score_completions([ds[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)])
    assert tr.rollout_engine.last_timings["prefill_rows"] == 2
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        logps, _, _ = tr._get_per_token_logps_and_entropies(
            tr.model,
            ids,
            mask,
            out["completion_ids"].shape[1],
            pixel_values=out["pixel_values"],
            pixel_attention_mask=out.get("pixel_attention_mask"),
            num_images=out["num_images"],
        )
    valid = out["completion_mask"].bool()
    assert valid.sum() > 20
    diff = (logps - out["sampling_per_token_logps"])[valid].abs().max().item()
    assert diff < 1e-3, diff
    assert len({tuple(r) for r in out["completion_ids"][:4].tolist()}) > 1


def test_image_processor_cache_gives_the_processors_output(processor):
    """SmolVLM's processor with image splitting, through the sample cache: same ids, pixels, masks; repeated
    samples processed once, batches re-padded to their largest sample."""
    from PIL import Image
    from rollout_helpers import tiling_idefics3_processor

    from grpo_vqa.rollout.cache import Idefics3ImageProcessorCache

    proc = tiling_idefics3_processor(processor)
    base = proc.image_processor
    rng = np.random.default_rng(2)
    shapes = [(84, 112), (112, 56), (40, 40)]
    images = [Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)) for hw in shapes]
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]]
    text = proc.apply_chat_template(msgs[0], add_generation_prompt=True, tokenize=False)
    order = [0, 0, 1, 2, 1, 0]
    kw = dict(
        text=[text] * len(order), images=[[images[i]] for i in order], return_tensors="pt", padding=True
    )
    proc.tokenizer.padding_side = "left"
    ref = proc(**kw)
    cache = Idefics3ImageProcessorCache(base)
    proc.image_processor = cache
    try:
        first = proc(**kw)
        again = proc(**kw)
        small = proc(**dict(kw, text=[text], images=[[images[2]]]))
    finally:
        proc.image_processor = base
    assert ref["pixel_values"].shape[1] > 1  # the splitting really made several tiles...
    assert (ref["pixel_attention_mask"].flatten(2).sum(-1) == 0).any()  # ...and unequal counts (padding)
    for out in (first, again):
        assert set(out.keys()) == set(ref.keys())
        for key in ref:
            assert torch.equal(out[key], ref[key]), key
    assert cache.processed == 3 and cache.calls == 3
    alone = proc(**dict(kw, text=[text], images=[[images[2]]]))
    for key in alone:
        assert torch.equal(small[key], alone[key]), key

"""Decode over merged LoRA weights (``rollout.merge_lora``) on a tiny random Qwen2.5-VL (CPU, fp32).

The merged step must give the tokens and log-probs of the unmerged one and of ``generate``, follow adapter
updates made in place (as the optimizer makes them), and never write to the model's own weights.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from grpo_vqa.rollout import RolloutConfig, RolloutEngine, SamplingParams
from grpo_vqa.rollout.synthetic import build_model, image_prompts, special_ids

torch.set_num_threads(1)

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GREEDY = SamplingParams(do_sample=False)


def _lora_model(targets, seed=1):
    model = build_model({"rope_theta": 10.0}, seed=seed)
    torch.manual_seed(seed + 10)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    return get_peft_model(model, cfg).eval()


def _prompts(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.get_base_model().config
    return image_prompts(cfg, [(3, 4), (1, 2), (6, 1)], (112, 84), generator=g, text_vocab=300)


def _engine(model, merge, eos):
    ids = special_ids(model.get_base_model().config.text_config.vocab_size)
    return RolloutEngine(
        model,
        RolloutConfig(engine="fast", merge_lora=merge),
        eos_token_ids=eos,
        pad_token_id=ids["pad"],
        suppress_token_ids=[ids["image"]],
    )


def _run(engine, inp, n, sampling=GREEDY):
    mm = {k: inp[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")}
    return engine.generate(inp["input_ids"], inp["attention_mask"], max_new_tokens=n, sampling=sampling, **mm)


def test_merge_lora_defaults_to_cuda_only():
    assert RolloutConfig(engine="fast").resolved("cpu").merge_lora is False
    assert RolloutConfig(engine="fast").resolved("cuda").merge_lora is True
    assert RolloutConfig(engine="fast", merge_lora=True).resolved("cpu").merge_lora is True


def test_merged_decode_matches_unmerged_and_generate():
    model = _lora_model(ALL_LINEAR)
    ids = special_ids(model.get_base_model().config.text_config.vocab_size)
    eos = [ids["vision_end"]]  # never reached greedily: all 48 steps compared
    inp = _prompts(model)
    merged, plain = _engine(model, True, eos), _engine(model, False, eos)
    assert merged._merged is not None and plain._merged is None
    a, b = _run(merged, inp, 48), _run(plain, inp, 48)
    with torch.no_grad():
        ref = model.generate(
            **inp,
            max_new_tokens=48,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=ids["pad"],
            suppress_tokens=[ids["image"]],
        )[:, inp["input_ids"].shape[1] :]
    assert torch.equal(a.tokens, ref) and torch.equal(b.tokens, ref)
    assert len(set(map(tuple, ref.tolist()))) == 3
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
    # sampled: same seed, same tokens
    sp = SamplingParams(do_sample=True, temperature=1.2, top_p=0.9)
    torch.manual_seed(3)
    sa = _run(merged, inp, 24, sp)
    torch.manual_seed(3)
    sb = _run(plain, inp, 24, sp)
    assert torch.equal(sa.tokens, sb.tokens)


def test_merged_buffers_follow_in_place_adapter_updates_and_leave_weights_alone():
    model = _lora_model(["q_proj", "v_proj", "gate_proj"], seed=2)
    ids = special_ids(model.get_base_model().config.text_config.vocab_size)
    eos = [ids["vision_end"]]
    inp = _prompts(model, seed=1)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    merged = _engine(model, True, eos)
    layers = len(model.get_base_model().model.language_model.layers)
    before = _run(merged, inp, 20)
    assert merged.last_merge_rewrites == 7 * layers  # first call: every Linear copied or merged
    _run(merged, inp, 4)
    assert merged.last_merge_rewrites == 0  # nothing changed
    with torch.no_grad():  # an "optimizer step" on the adapters, in place
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.5)
    after = _run(merged, inp, 20)
    assert merged.last_merge_rewrites == 3 * layers  # only the adapted layers were re-merged
    fresh = _run(_engine(model, False, eos), inp, 20)
    assert torch.equal(after.tokens, fresh.tokens)
    assert not torch.equal(after.tokens, before.tokens)
    torch.testing.assert_close(after.logprobs, fresh.logprobs, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n


def test_merged_teacher_forcing_matches_full_forward():
    model = _lora_model(ALL_LINEAR, seed=3)
    ids = special_ids(model.get_base_model().config.text_config.vocab_size)
    inp = _prompts(model, seed=2)
    eng = _engine(model, True, [ids["vision_end"]])
    tokens = _run(eng, inp, 10).tokens
    mm = {k: inp[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")}
    logits = eng.teacher_force(inp["input_ids"], inp["attention_mask"], tokens, **mm)
    with torch.no_grad():
        ref = model(
            input_ids=torch.cat([inp["input_ids"], tokens], 1),
            attention_mask=torch.cat([inp["attention_mask"], torch.ones_like(tokens)], 1),
            mm_token_type_ids=torch.cat([inp["mm_token_type_ids"], torch.zeros_like(tokens)], 1),
            pixel_values=inp["pixel_values"],
            image_grid_thw=inp["image_grid_thw"],
        ).logits[:, inp["input_ids"].shape[1] - 1 : -1]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("merge", [True, False])
def test_engine_without_lora_runs_merged_or_not(merge):
    model = build_model({"rope_theta": 10.0}, seed=4)
    ids = special_ids(model.config.text_config.vocab_size)
    eng = RolloutEngine(
        model,
        RolloutConfig(engine="fast", merge_lora=merge),
        eos_token_ids=[ids["vision_end"]],
        pad_token_id=ids["pad"],
    )
    g = torch.Generator().manual_seed(0)
    inp = image_prompts(model.config, [(2, 2), (1, 3)], (112, 84), generator=g, text_vocab=300)
    with torch.no_grad():
        ref = model.generate(
            **inp,
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=[ids["vision_end"]],
            pad_token_id=ids["pad"],
        )[:, inp["input_ids"].shape[1] :]
    mm = {k: inp[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")}
    out = eng.generate(inp["input_ids"], inp["attention_mask"], max_new_tokens=16, sampling=GREEDY, **mm)
    assert torch.equal(out.tokens, ref)

"""RolloutEngine on a tiny random Qwen2.5-VL (CPU, fp32): greedy parity with ``generate``, EOS/padding, sampling."""

import pytest
import torch
from rollout_helpers import engine_generate

from grpo_vqa.rollout import RolloutConfig, RolloutEngine, SamplingParams, select_tokens, varlen_attention
from grpo_vqa.rollout.synthetic import build_model, image_prompts, special_ids

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return build_model({"rope_theta": 10.0}, seed=1)  # small base: positions change the logits a lot


@pytest.fixture(scope="module")
def ids(model):
    return special_ids(model.config.text_config.vocab_size)


def _prompts(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    # three left-padded image prompts of different lengths; 112x84 images make unequal vision windows
    return image_prompts(model.config, [(3, 4), (1, 2), (6, 1)], (112, 84), generator=g, text_vocab=300)


def _engine(model, ids, eos=None, **cfg):
    return RolloutEngine(
        model,
        RolloutConfig(engine="fast", **cfg),
        eos_token_ids=eos if eos is not None else [ids["eos"]],
        pad_token_id=ids["pad"],
        suppress_token_ids=[ids["image"]],
    )


GREEDY = SamplingParams(do_sample=False)


def _run(engine, inp, n, sampling=GREEDY):
    return engine_generate(engine, inp, n, sampling)


def _hf_greedy(model, inp, n, eos, pad, suppress):
    out = model.generate(
        **inp, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad, suppress_tokens=suppress
    )
    return out[:, inp["input_ids"].shape[1] :]


def test_greedy_matches_generate_for_64_steps(model, ids):
    inp = _prompts(model)
    eos = [ids["vision_end"]]  # a token greedy decoding never reaches here, so all 64 steps are compared
    ref = _hf_greedy(model, inp, 64, eos, ids["pad"], [ids["image"]])
    out = _run(_engine(model, ids, eos=eos), inp, 64)
    assert ref.shape == (3, 64)
    assert out.tokens.shape == (3, 64)
    assert torch.equal(out.tokens, ref)
    assert out.lengths.tolist() == [64, 64, 64]
    assert len(set(map(tuple, ref.tolist()))) == 3  # rows really differ


def test_eos_stops_rows_and_pads(model, ids):
    inp = _prompts(model)
    free = _run(_engine(model, ids, eos=[ids["vision_end"]]), inp, 24)
    # make the token that row 1 emits at step 5 the EOS
    eos_tok = free.tokens[1, 5].item()
    ref = _hf_greedy(model, inp, 24, [eos_tok], ids["pad"], [ids["image"]])
    out = _run(_engine(model, ids, eos=[eos_tok]), inp, 24)
    first = [
        (row == eos_tok).nonzero()[0].item() + 1 if (row == eos_tok).any() else 24 for row in free.tokens
    ]
    assert out.lengths.tolist() == first
    assert first[1] <= 6
    for b, n in enumerate(first):
        assert torch.equal(out.tokens[b, :n], free.tokens[b, :n])
        assert (out.tokens[b, n:] == ids["pad"]).all()
        assert (out.logprobs[b, n:] == 0).all()
    # generate pads after EOS the same way (its width may stop early when every row ended)
    assert torch.equal(out.tokens[:, : ref.shape[1]], ref)
    tokens, logprobs = out.completion_lists()
    assert [len(t) for t in tokens] == first and tokens[1][-1] == eos_tok
    assert [len(p) for p in logprobs] == first


def test_all_rows_finished_stops_early(model, ids):
    inp = _prompts(model)
    free = _run(_engine(model, ids), inp, 8)
    eos = sorted({t for row in free.tokens[:, :2].tolist() for t in row})
    out = _run(_engine(model, ids, eos=eos, check_eos_every=4), inp, 64)
    assert out.lengths.max().item() <= 2
    assert out.tokens.shape[1] <= 5  # stopped at the first check after every row ended
    assert out.timings["decode_steps"] <= 4


def test_chunking_and_dedupe_do_not_change_tokens(model, ids):
    g = torch.Generator().manual_seed(3)
    base = image_prompts(model.config, [(2, 3), (4, 1)], (84, 112), generator=g, text_vocab=300)
    # repeat each prompt twice (as GRPO does) -> 4 rows, 2 unique
    order = torch.tensor([0, 0, 1, 1])
    n_patch = base["image_grid_thw"].prod(-1)
    pix = torch.cat([base["pixel_values"][: n_patch[0]]] * 2 + [base["pixel_values"][n_patch[0] :]] * 2)
    inp = {k: base[k][order] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    inp["pixel_values"] = pix
    ref = _run(_engine(model, ids, dedupe_prompts=False), inp, 20)
    dedup = _run(_engine(model, ids, dedupe_prompts=True), inp, 20)
    chunked = _run(_engine(model, ids, max_batch=3, prefill_batch=1), inp, 20)
    assert dedup.timings["prefill_rows"] == 2 and ref.timings["prefill_rows"] == 4
    assert torch.equal(ref.tokens, dedup.tokens) and torch.equal(ref.tokens, chunked.tokens)
    torch.testing.assert_close(ref.logprobs, dedup.logprobs)
    assert torch.equal(ref.tokens[0], ref.tokens[1])  # greedy: identical prompts, identical completions


def test_sampling_is_seeded_and_top_k_1_is_greedy(model, ids):
    inp = _prompts(model)
    eng = _engine(model, ids, eos=[ids["vision_end"]])
    greedy = _run(eng, inp, 16)
    top1 = _run(eng, inp, 16, SamplingParams(do_sample=True, temperature=0.7, top_k=1))
    assert torch.equal(greedy.tokens, top1.tokens)
    sp = SamplingParams(do_sample=True, temperature=1.3, top_p=0.9)
    torch.manual_seed(5)
    a = _run(eng, inp, 16, sp)
    torch.manual_seed(5)
    b = _run(eng, inp, 16, sp)
    torch.manual_seed(6)
    c = _run(eng, inp, 16, sp)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert not torch.equal(a.tokens, greedy.tokens)
    assert (a.tokens != ids["image"]).all()  # suppressed token never sampled


def test_select_tokens_distribution_and_filters():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    toks, lp = select_tokens(logits, SamplingParams(temperature=1.0), None)
    freq = torch.bincount(toks, minlength=4).float() / toks.numel()
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015, rtol=0)
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).gather(1, toks[:, None]).squeeze(1))
    toks, _ = select_tokens(logits, SamplingParams(top_p=0.7), None)  # keeps {0, 1}
    assert set(toks.tolist()) == {0, 1}
    toks, _ = select_tokens(logits, SamplingParams(top_k=2), torch.tensor([0]))  # suppress 0, keep {1, 2}
    assert set(toks.tolist()) == {1, 2}
    toks, _ = select_tokens(logits, SamplingParams(min_p=0.5), None)  # p >= 0.25 -> {0, 1}
    assert set(toks.tolist()) == {0, 1}
    # log-prob is under logits / temperature, before filtering (what the trainer recomputes)
    toks, lp = select_tokens(logits[:5], SamplingParams(temperature=2.0, top_k=1), None)
    torch.testing.assert_close(lp, torch.log_softmax(logits[:5] / 2.0, -1)[:, 0])


def test_varlen_attention_matches_per_segment_loop():
    torch.manual_seed(0)
    q, k, v = (torch.randn(23, 3, 8) for _ in range(3))
    for cu in (torch.tensor([0, 5, 16, 23]), torch.tensor([0, 8, 16])):
        n = int(cu[-1])
        out = varlen_attention(q[:n], k[:n], v[:n], cu, 0.3)
        ref = [
            torch.nn.functional.scaled_dot_product_attention(
                *(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=0.3
            ).transpose(0, 1)
            for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
        ]
        torch.testing.assert_close(out, torch.cat(ref), atol=1e-6, rtol=1e-5)


def test_batched_vision_attention_matches_transformers():
    from grpo_vqa.rollout import install_batched_vision_attention

    plain = build_model(seed=2)
    patched = build_model(seed=2)
    assert install_batched_vision_attention(patched) == 2
    g = torch.Generator().manual_seed(0)
    inp = image_prompts(plain.config, [(1, 1), (1, 1)], [(112, 84), (56, 140)], generator=g)
    with torch.no_grad():
        a = plain.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"]).pooler_output
        b = patched.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"]).pooler_output
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_rollout_config_validation():
    assert RolloutConfig.from_dict({"engine": "fast", "max_batch": 8}).max_batch == 8
    with pytest.raises(ValueError):
        RolloutConfig.from_dict({"engine": "vllm"})
    with pytest.raises(ValueError):
        RolloutConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError):
        RolloutConfig(engine="fast", cuda_graph=True).resolved("cpu")
    cpu = RolloutConfig(engine="fast").resolved("cpu")
    assert cpu.compile is False and cpu.cuda_graph is False
    gpu = RolloutConfig(engine="fast").resolved("cuda")
    assert gpu.compile is True and gpu.cuda_graph is True


def test_teacher_forced_logits_match_full_forward(model, ids):
    inp = _prompts(model)
    eng = _engine(model, ids, eos=[ids["vision_end"]])
    tokens = _run(eng, inp, 12).tokens
    logits = eng.teacher_force(
        inp["input_ids"],
        inp["attention_mask"],
        tokens,
        pixel_values=inp["pixel_values"],
        image_grid_thw=inp["image_grid_thw"],
        mm_token_type_ids=inp["mm_token_type_ids"],
    )
    full_ids = torch.cat([inp["input_ids"], tokens], 1)
    mask = torch.cat([inp["attention_mask"], torch.ones_like(tokens)], 1)
    mm = torch.cat([inp["mm_token_type_ids"], torch.zeros_like(tokens)], 1)
    with torch.no_grad():
        ref = model(
            input_ids=full_ids,
            attention_mask=mask,
            mm_token_type_ids=mm,
            pixel_values=inp["pixel_values"],
            image_grid_thw=inp["image_grid_thw"],
        ).logits[:, inp["input_ids"].shape[1] - 1 : -1]
    assert logits.shape == ref.shape
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)

"""``rollout.decode_compile``: the whole one-token decode step as one ``torch.compile`` region (``"step"``) or one
compiled decoder layer (``"layer"``) must choose the tokens, log-probs and lengths of the eager step.

The compiled regions are traced with the ``aot_eager`` backend (Dynamo's full-graph capture and AOT autograd's
functionalization of the step's in-place buffer updates, without inductor's code generation), so the test runs
in seconds on the CPU and compares exactly. Tiny Qwen2.5-VL with LoRA (merged and unmerged step) and tiny
Idefics3 (SmolVLM), CPU fp32.
"""

import os

import pytest
import torch
from peft import LoraConfig, get_peft_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from rollout_helpers import engine_generate  # noqa: E402

import grpo_vqa.rollout.engine as engine_module  # noqa: E402
from grpo_vqa.rollout import RolloutConfig, RolloutEngine, SamplingParams  # noqa: E402
from grpo_vqa.rollout.synthetic import build_model, image_prompts, special_ids  # noqa: E402

GREEDY = SamplingParams(do_sample=False)
SAMPLED = SamplingParams(do_sample=True, temperature=0.9, top_k=50)


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    monkeypatch.setattr(engine_module, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def qwen():
    model = build_model({"rope_theta": 10.0}, seed=1)
    torch.manual_seed(11)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, cfg).eval()


def _qwen_run(model, n, sampling=GREEDY, **cfg):
    ids = special_ids(model.get_base_model().config.text_config.vocab_size)
    eng = RolloutEngine(
        model,
        RolloutConfig(engine="fast", batched_vision_attention=False, **cfg),
        eos_token_ids=[ids["vision_end"]],  # never reached greedily: every step is compared
        pad_token_id=ids["pad"],
        suppress_token_ids=[ids["image"]],
    )
    inp = _qwen_inputs(model)
    torch.manual_seed(5)
    return eng, engine_generate(eng, inp, n, sampling)


def _qwen_inputs(model):
    g = torch.Generator().manual_seed(0)
    return image_prompts(
        model.get_base_model().config, [(3, 4), (1, 2), (6, 1)], (112, 84), generator=g, text_vocab=300
    )


def _same(a, b):
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-6, rtol=1e-6)


def test_config_values():
    assert RolloutConfig(engine="fast").decode_compile == "step"
    assert RolloutConfig.from_dict({"engine": "fast", "decode_compile": "layer"}).decode_compile == "layer"
    with pytest.raises(ValueError, match="decode_compile"):
        RolloutConfig(engine="fast", decode_compile="model")


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("mode", ["step", "layer"])
def test_compiled_qwen_step_equals_eager(qwen, merge, mode):
    _, ref = _qwen_run(qwen, 24, merge_lora=merge, compile=False)
    eng, got = _qwen_run(qwen, 24, merge_lora=merge, compile=True, decode_compile=mode)
    assert (eng._step_fn != eng._step) == (mode == "step")
    assert len(set(map(tuple, ref.tokens.tolist()))) == 3  # rows really differ
    _same(got, ref)


def test_compiled_qwen_step_samples_as_eager(qwen):
    _, ref = _qwen_run(qwen, 16, SAMPLED, merge_lora=True, compile=False)
    _, got = _qwen_run(qwen, 16, SAMPLED, merge_lora=True, compile=True, decode_compile="step")
    _same(got, ref)


def test_compiled_idefics3_step_equals_eager_and_generate(tmp_path):
    from grpo_vqa.models.loading import load_model, load_processor
    from grpo_vqa.models.tiny import build_tiny_model

    corpus = ["What color is the sky? <think> it is day </think> <answer>blue</answer>"] * 10
    ckpt = build_tiny_model("idefics3", {"image_size": 112, "rope_theta": 10.0}, corpus, tmp_path, seed=0)
    model, proc = load_model(str(ckpt)).eval(), load_processor(str(ckpt))
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8)) for _ in range(2)]
    msgs = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        for q in ("What color is the sky?", "What is it?")
    ]
    texts = [proc.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    proc.tokenizer.padding_side = "left"
    inp = dict(proc(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True))
    pad, eos, n = proc.tokenizer.pad_token_id, [model.config.image_token_id], 20

    def run(**cfg):
        eng = RolloutEngine(model, RolloutConfig(engine="fast", **cfg), eos_token_ids=eos, pad_token_id=pad)
        return engine_generate(eng, inp, n, GREEDY)

    ref = run(compile=False)
    got = run(compile=True, decode_compile="step", merge_lora=True)
    hf = model.generate(**inp, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    assert torch.equal(ref.tokens, hf[:, inp["input_ids"].shape[1] :])
    _same(got, ref)


def test_step_compiles_once_for_every_cache_length(qwen):
    from torch._dynamo.utils import counters

    counters.clear()
    eng, a = _qwen_run(qwen, 8, merge_lora=True, compile=True, decode_compile="step", length_bucket=8)
    inp = _qwen_inputs(qwen)
    for n in (8, 20, 37):  # three cache lengths (multiples of 8) and completion lengths
        out = engine_generate(eng, inp, n, GREEDY)
        assert torch.equal(out.tokens[:, :8], a.tokens)
    assert counters["stats"]["unique_graphs"] == 1


def test_failed_step_compile_falls_back_to_layer_compile(qwen, monkeypatch):
    def picky(gm, example_inputs):  # compiles a layer's graph, refuses the whole step's
        if sum(node.op == "call_function" for node in gm.graph.nodes) > 60:
            raise RuntimeError("graph too large for this test backend")
        return gm.forward

    monkeypatch.setattr(engine_module, "COMPILE_BACKEND", picky)
    _, ref = _qwen_run(qwen, 12, merge_lora=True, compile=False)
    eng, got = _qwen_run(qwen, 12, merge_lora=True, compile=True, decode_compile="step")
    assert eng.decode_compile == "layer" and eng._step_fn == eng._step
    _same(got, ref)

"""Soft-prompt tuning on the tiny real-architecture models: targets, Qwen2.5-VL's 3D positions behind a soft
prompt, training only the prompt, resume, and evaluation of a prompt adapter."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from config_helpers import train_section  # noqa: E402
from PIL import Image  # noqa: E402

from grpo_vqa.models.loading import build_messages, load_model, load_processor  # noqa: E402
from grpo_vqa.models.soft_prompt import attach_mrope_positions, is_prompt_adapter  # noqa: E402
from grpo_vqa.models.tiny import build_tiny_model  # noqa: E402
from grpo_vqa.training.prompt_tuning import (  # noqa: E402
    completion_for,
    completion_kind,
    prompt_tuning_config,
    prompt_tuning_rows,
)

torch.set_num_threads(1)
CORPUS = [
    "Is the following statement true: The red circle is left of the blue square.",
    "<think>The red circle is on the left.</think><answer>True</answer>",
    "<answer>False</answer> Look at the image and answer the question.",
] * 10
N_VIRTUAL = 4


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return str(build_tiny_model("qwen2_5_vl", {}, CORPUS, tmp_path_factory.mktemp("pt") / "qwen", seed=0))


def batch(processor):
    texts = [
        processor.apply_chat_template(build_messages(q), add_generation_prompt=True, tokenize=False)
        for q in ("Is the red circle left?", "Is the following statement true: the blue square is above it?")
    ]
    images = [[Image.new("RGB", (112, 112), (255, 0, 0))], [Image.new("RGB", (112, 112), (0, 0, 255))]]
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def soft_prompted(path: str):
    from peft import get_peft_model

    model = get_peft_model(
        load_model(path),
        prompt_tuning_config(train_section("prompt_tuning", num_virtual_tokens=N_VIRTUAL), path),
    )
    torch.manual_seed(0)
    with torch.no_grad():  # a prompt far from the init text, so that a wrong position would show
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 1)
    return model.eval()


def test_completion_targets():
    # config/config.yaml's recipes: direct trains <answer>X</answer>, reason the SFT target
    kind = {t: completion_kind(t, train_section("prompt_tuning", t)) for t in ("direct", "reason")}
    assert completion_for(kind["direct"], "I see it.", "True") == "<answer>True</answer>"
    assert (
        completion_for(kind["reason"], "I see it.", "True") == "<think>I see it.</think><answer>True</answer>"
    )
    assert completion_for(completion_kind("direct", {"completion": "answer"}), "I see it.", "True") == "True"
    with pytest.raises(ValueError, match="target 'both'"):
        completion_kind("both", {"completion": "answer"})
    with pytest.raises(ValueError, match="prompt_tuning.reason.completion"):
        completion_kind("reason", {"completion": "bare"})


def test_grpo_response_rows_join_by_id(tmp_path):
    """Distillation rows: each training item's completion is the GRPO model's response to it, by id; items
    without a response are left out; no response at all is an error."""
    import datasets
    from PIL import Image

    rows = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(path)
        rows.append(
            {"id": f"x{i}", "image_path": str(path), "problem": f"q{i}", "solution": "True", "reasoning": ""}
        )
    ds = datasets.Dataset.from_list(rows)
    responses = [
        {"id": "x2", "response": "<think>b</think><answer>False</answer>"},
        {"id": "x0", "response": "<think>a</think><answer>True</answer>"},
    ]
    cfg = {"completion": "grpo_responses"}
    out = prompt_tuning_rows(ds, None, "reason", cfg, responses)
    assert [r["completion"][0]["content"][0]["text"] for r in out] == [
        "<think>a</think><answer>True</answer>",
        "<think>b</think><answer>False</answer>",
    ]
    assert [r["prompt"][-1]["content"][-1]["text"] for r in out] == ["q0", "q2"]
    with pytest.raises(ValueError, match="no generated responses"):
        prompt_tuning_rows(ds, None, "reason", cfg, [])
    with pytest.raises(ValueError, match="no training item"):
        prompt_tuning_rows(ds, None, "reason", cfg, [{"id": "other", "response": "x"}])


def test_soft_prompt_keeps_qwen_3d_positions(qwen):
    """Behind the virtual tokens, every real token gets the position the model gives it without them, + N."""
    processor = load_processor(qwen, padding_side="left")
    inputs = batch(processor)
    model = soft_prompted(qwen)
    inner = model.get_base_model().model
    expected, _ = inner.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    seen = []
    inner.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k.get("position_ids")), with_kwargs=True
    )
    with torch.no_grad():
        model(**inputs)  # PEFT alone: no 3D positions for the image tokens
    assert seen[-1] is None or seen[-1].shape[-1] != expected.shape[-1] + N_VIRTUAL
    attach_mrope_positions(model)
    with torch.no_grad():
        model(**inputs)
    got = seen[-1]
    assert got.shape == (3, 2, expected.shape[-1] + N_VIRTUAL)
    mask = inputs["attention_mask"].bool()
    for b in range(2):
        assert torch.equal(got[:, b, N_VIRTUAL:][:, mask[b]], expected[:, b][:, mask[b]] + N_VIRTUAL)
        assert got[:, b, :N_VIRTUAL].tolist() == [list(range(N_VIRTUAL))] * 3
    # the image tokens really have 2D positions (height and width differ somewhere)
    assert not torch.equal(got[1], got[2])


def test_soft_prompt_generation_matches_a_full_forward(qwen):
    """Cached greedy decoding behind a soft prompt (PEFT + the position fix) computes, at every step, the
    logits a full forward pass over prompt + generated text gives: decode positions continue the prefill's."""
    processor = load_processor(qwen, padding_side="left")
    inputs = batch(processor)
    model = soft_prompted(qwen)
    attach_mrope_positions(model)
    with torch.no_grad():
        gen = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, use_cache=True,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    out = gen.sequences
    n_in = inputs["input_ids"].shape[1]
    new = out[:, n_in:]
    assert new.shape == (2, 6)
    full = dict(inputs)
    full["input_ids"] = out
    full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(new)], dim=1)
    full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], dim=1)
    with torch.no_grad():
        logits = model(**full).logits[:, N_VIRTUAL + n_in - 1 : -1]
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for b in range(2):
        steps = new.shape[1]
        if (new[b] == eos).any():  # after the end of turn generate only pads
            steps = int((new[b] == eos).nonzero()[0]) + 1
        cached = torch.stack([gen.logits[t][b] for t in range(steps)])
        torch.testing.assert_close(cached, logits[b, :steps], atol=1e-4, rtol=1e-4)


def test_prompt_tuning_trains_the_prompt_only_resumes_and_evaluates(qwen, tmp_path):
    import datasets
    from safetensors.torch import load_file

    from grpo_vqa.evaluation.generate import evaluate_split
    from grpo_vqa.evaluation.run import load_eval_model
    from grpo_vqa.training.common import TrainJob
    from grpo_vqa.training.prompt_tuning import prompt_tuning_rows, run_prompt_tuning

    img_dir = tmp_path / "img"
    img_dir.mkdir()
    items = []
    for i in range(6):
        path = img_dir / f"{i}.png"
        Image.new("RGB", (112, 112), (255, 0, 0) if i % 2 else (0, 0, 255)).save(path)
        items.append(
            {
                "id": f"x{i}",
                "image_path": str(path),
                "problem": "Is the red circle left of the blue square?",
                "solution": "True" if i % 2 else "False",
                "reasoning": "I see a red circle." if i % 2 else "I see a blue square.",
                "task": "relation",
            }
        )
    ds = datasets.Dataset.from_list(items)
    rows = prompt_tuning_rows(ds, None, "reason", train_section("prompt_tuning", "reason"))
    assert rows[1]["completion"][0]["content"][0]["text"] == (
        "<think>I see a red circle.</think><answer>True</answer>"
    )
    cfg = train_section(
        "prompt_tuning", "reason", num_virtual_tokens=N_VIRTUAL, max_steps=2, learning_rate=0.05
    )
    cfg |= {
        "per_device_train_batch_size": 2,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.0,
        "save_steps": 1,
    }
    first = run_prompt_tuning(TrainJob(qwen, rows, tmp_path / "a", tmp_path / "ck", cfg, seed=0))
    assert [h["step"] for h in first["history"]] == [1, 2]
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert list(weights) == ["prompt_embeddings"] and weights["prompt_embeddings"].shape[0] == N_VIRTUAL
    init = prompt_tuning_config(cfg, qwen)
    assert init.num_virtual_tokens == N_VIRTUAL and init.prompt_tuning_init_text
    # a rerun finds the final checkpoint and trains no further
    again = run_prompt_tuning(TrainJob(qwen, rows, tmp_path / "b", tmp_path / "ck", cfg, seed=0))
    assert again["resumed_from"].endswith("checkpoint-2")
    assert torch.equal(load_file(tmp_path / "b" / "adapter_model.safetensors")["prompt_embeddings"],
                       weights["prompt_embeddings"])  # fmt: skip

    # evaluation loads the adapter onto the frozen base model and generates behind the soft prompt
    assert is_prompt_adapter(tmp_path / "a") and not is_prompt_adapter(qwen)
    model = load_eval_model(str(tmp_path / "a")).eval()
    assert torch.equal(
        model.prompt_encoder["default"].embedding.weight.detach(), weights["prompt_embeddings"]
    )
    base = load_model(qwen)
    name, param = next((n, p) for n, p in base.named_parameters() if "q_proj.weight" in n)
    assert torch.equal(model.get_base_model().get_parameter(name), param)  # base weights untouched
    processor = load_processor(str(tmp_path / "a"), padding_side="left")
    records = evaluate_split(model, processor, ds, tmp_path / "cache.jsonl", None, 5, 4)
    assert [r["id"] for r in records] == [it["id"] for it in items]
    assert all(isinstance(r["response"], str) for r in records)

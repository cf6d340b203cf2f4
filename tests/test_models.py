"""Tiny real-architecture models: tokenizer, build, loading, chat template, generation, TRL smoke test."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from config_helpers import lora, train_section  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from grpo_vqa.models.loading import (  # noqa: E402
    ModelNotFoundError,
    build_messages,
    load_model,
    load_processor,
    model_arch,
)
from grpo_vqa.models.tiny import build_tiny_model, image_tokens_per_image, resolve_spec  # noqa: E402
from grpo_vqa.models.tokenizer import REASONING_TOKENS, SPECIAL_TOKENS, train_tokenizer  # noqa: E402

torch.set_num_threads(1)

ARCHS = ["qwen2_5_vl", "idefics3"]
CORPUS = [
    "Is the following statement true: The car is behind the suitcase.",
    "Is the following statement true: The cat is left of the dog.",
    "<think>The cat is on the left, the dog is on the right.</think><answer>True</answer>",
    "<think>The car is in front of it.</think><answer>False</answer>",
    "How many shapes are there? 12, 7 or 3,456 — naïve café.",
] * 10
SYSTEM = "Think, then answer."
TEXT = "Is 1,234 left of 56? café — 日本 🙂 <think>ok</think><answer>True</answer>"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both archs built once with default spec and seed 0: {arch: path}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, {}, CORPUS, root / arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="module")
def loaded(built):
    """Reloaded (model, processor) per arch, as the pipeline loads them."""
    return {arch: (load_model(str(p)).eval(), load_processor(str(p))) for arch, p in built.items()}


def red_image(size=(112, 112)):
    return Image.new("RGB", size, (200, 30, 30))


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_specials_are_single_tokens(arch, loaded):
    tok = loaded[arch][1].tokenizer
    assert type(tok).__name__ == {"qwen2_5_vl": "Qwen2Tokenizer", "idefics3": "GPT2Tokenizer"}[arch]
    for t in SPECIAL_TOKENS[arch] + REASONING_TOKENS:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [t], t
    # reasoning markers survive skip_special_tokens (GRPO rewards read them); chat specials do not
    ids = tok("<|im_start|><think>a</think><answer>b</answer><|im_end|>", add_special_tokens=False)[
        "input_ids"
    ]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>a</think><answer>b</answer>"


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_roundtrip_any_unicode(arch, loaded):
    tok = loaded[arch][1].tokenizer
    for text in [TEXT, "12,345.6 apples\n\n  tabs\tand ∑ ∫ 𝔘 ñ", CORPUS[0]]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert all(0 <= i < len(tok) for i in ids)
    if arch == "qwen2_5_vl":  # Qwen2 pre-tokenizer splits digits individually
        assert len(tok("1234", add_special_tokens=False)["input_ids"]) == 4
    # BPE learned merges from the corpus: a frequent word is shorter than its bytes
    assert len(tok(" statement", add_special_tokens=False)["input_ids"]) < len(" statement")


def test_train_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown arch"):
        train_tokenizer(CORPUS, 512, "llava")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, 100, "qwen2_5_vl")


EXPECTED_PROMPT = {
    "qwen2_5_vl": (
        "<|im_start|>system\nThink, then answer.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "idefics3": "<|im_start|>System: Think, then answer.<end_of_utterance>\nUser:<image>Is it?<end_of_utterance>\nAssistant:",
}
EXPECTED_NO_SYSTEM_FULL = {
    "qwen2_5_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nIs it?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>True</answer><|im_end|>\n"
    ),
    "idefics3": "<|im_start|>User: Is it?<end_of_utterance>\nAssistant: <answer>True</answer><end_of_utterance>\n",
}


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_template(arch, loaded):
    proc = loaded[arch][1]
    text = proc.apply_chat_template(build_messages("Is it?", SYSTEM), add_generation_prompt=True)
    assert text == EXPECTED_PROMPT[arch]
    msgs = build_messages("Is it?", with_image=False) + [
        {"role": "assistant", "content": "<answer>True</answer>"}
    ]
    assert proc.apply_chat_template(msgs) == EXPECTED_NO_SYSTEM_FULL[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_processor_save_reload(arch, built, loaded, tmp_path):
    """A processor saved by a trainer checkpoint reloads identically (no torchvision needed)."""
    proc = loaded[arch][1]
    proc.save_pretrained(tmp_path)  # processor files only, as in a LoRA adapter directory
    assert model_arch(str(tmp_path)) == arch
    again = load_processor(str(tmp_path), padding_side="right")
    assert type(again) is type(proc) and again.tokenizer.padding_side == "right"
    msgs = build_messages("Is it?", SYSTEM)
    assert again.apply_chat_template(msgs, add_generation_prompt=True) == EXPECTED_PROMPT[arch]
    assert again(text=[TEXT])["input_ids"] == proc(text=[TEXT])["input_ids"]


@pytest.mark.parametrize("arch", ARCHS)
def test_processor_loads_where_autoprocessor_has_no_pil_video_backend(arch, built, loaded, monkeypatch):
    """With torchvision installed, transformers 5.23's AutoProcessor refuses Qwen2-VL's video processor under
    backend="pil" (an ImportError, seen on the GPU machine): a Qwen2.5-VL processor is then assembled from its
    parts and matches the usual one; any other architecture keeps the error."""
    from grpo_vqa.models import loading

    def refuse(*args, **kwargs):
        raise ImportError("Video processor cannot be loaded - requested pil backend is not available.")

    assembled = []
    real_assemble = loading._processor_without_video

    def assemble(path):
        assembled.append(path)
        # this CPU machine has no torchvision: assemble as it can (the GPU machine's gets the real one)
        monkeypatch.setattr(loading, "is_torchvision_available", lambda: False)
        return real_assemble(path)

    monkeypatch.setattr(loading, "is_torchvision_available", lambda: True)
    monkeypatch.setattr(loading.AutoProcessor, "from_pretrained", refuse)
    monkeypatch.setattr(loading, "_processor_without_video", assemble)
    if arch != "qwen2_5_vl":
        with pytest.raises(ImportError, match="pil backend"):
            load_processor(str(built[arch]))
        return
    proc = load_processor(str(built[arch]), padding_side="left")
    assert assembled == [str(built[arch])]
    usual = loaded[arch][1]
    assert type(proc) is type(usual) and proc.tokenizer.padding_side == "left"
    assert type(proc.image_processor) is type(usual.image_processor)
    msgs = build_messages("Is it?", SYSTEM)
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt == EXPECTED_PROMPT[arch]
    image = red_image()
    got = proc(text=[prompt], images=[image])
    want = usual(text=[prompt], images=[image])
    assert got["input_ids"] == want["input_ids"]
    assert torch.equal(torch.as_tensor(got["pixel_values"]), torch.as_tensor(want["pixel_values"]))


def test_build_messages():
    assert build_messages("Q") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}
    ]
    msgs = build_messages("Q", "S", with_image=False)
    assert msgs == [
        {"role": "system", "content": [{"type": "text", "text": "S"}]},
        {"role": "user", "content": [{"type": "text", "text": "Q"}]},
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_processor_image_tokens(arch, loaded):
    model, proc = loaded[arch]
    assert image_tokens_per_image(arch, {}) == 16
    text = proc.apply_chat_template(build_messages("Is it?", SYSTEM), add_generation_prompt=True)
    enc = proc(text=[text], images=[red_image()], return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 16
    if arch == "qwen2_5_vl":
        assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]
        # larger images are scaled to at most image_size**2 pixels: never more than 16 tokens
        enc = proc(text=[text], images=[red_image((200, 150))], return_tensors="pt")
        assert 0 < int((enc["input_ids"] == model.config.image_token_id).sum()) <= 16
    else:
        assert tuple(enc["pixel_values"].shape) == (1, 1, 3, 112, 112)
        enc = proc(text=[text], images=[red_image((200, 150))], return_tensors="pt")
        assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 16


@pytest.mark.parametrize("arch", ARCHS)
def test_config_matches_spec(arch, loaded):
    model, _ = loaded[arch]
    assert model_arch(model) == arch
    tc = model.config.text_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads) == (
        128,
        2,
        4,
        2,
    )
    assert tc.rope_parameters["rope_theta"] == 10.0
    assert model.get_input_embeddings().weight.shape[0] == tc.vocab_size
    if arch == "qwen2_5_vl":
        assert tc.rope_parameters["mrope_section"] == [2, 5, 9]
        assert model.config.vision_config.spatial_merge_size == 2
    else:
        assert model.config.scale_factor == 2 and model.config.vision_config.image_size == 112


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_and_generate(arch, loaded):
    model, proc = loaded[arch]
    prompts = [
        proc.apply_chat_template(build_messages(q, SYSTEM), add_generation_prompt=True)
        for q in ["Is it?", "Is the cat left of the dog, really?"]
    ]
    enc = proc(text=prompts, images=[red_image(), red_image()], padding=True, return_tensors="pt")
    assert enc["attention_mask"][0, 0] == 0  # left padding
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape and logits.shape[2] == len(proc.tokenizer)
    assert torch.isfinite(logits).all()
    gen = dict(max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        cached = model.generate(**enc, **gen, use_cache=True)
        uncached = model.generate(**enc, **gen, use_cache=False)
    assert cached.shape[1] <= enc["input_ids"].shape[1] + 5
    assert torch.equal(cached, uncached)  # the KV cache reproduces full recomputation
    assert isinstance(proc.batch_decode(cached[:, enc["input_ids"].shape[1] :]), list)


def test_deterministic_build(tmp_path):
    spec = {"text_hidden": 64, "heads": 2, "kv_heads": 1, "intermediate": 64, "mrope_section": [2, 6, 8]}
    a = build_tiny_model("qwen2_5_vl", spec, CORPUS, tmp_path / "a", seed=3)
    b = build_tiny_model("qwen2_5_vl", spec, CORPUS, tmp_path / "b", seed=3)
    c = build_tiny_model("qwen2_5_vl", spec, CORPUS, tmp_path / "c", seed=4)
    sa, sb, sc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_spec_validation():
    assert resolve_spec(None)["image_size"] == 112
    with pytest.raises(ValueError, match="unknown"):
        resolve_spec({"hidden": 3})
    with pytest.raises(ValueError, match="mrope_section"):
        resolve_spec({"mrope_section": [4, 4, 4]})


def test_missing_model_one_line_error(tmp_path):
    for target in [str(tmp_path / "nope"), "no-such-org/no-such-model", str(tmp_path)]:
        for fn in (load_model, load_processor, model_arch):
            with pytest.raises(ModelNotFoundError) as info:
                fn(target)
            msg = str(info.value)
            assert "\n" not in msg and f"model '{target}' not found" in msg


def test_trl_sft_and_grpo_smoke(built, tmp_path):
    """SFT (2 steps) and GRPO (1 step) with LoRA on the tiny Qwen model, conversational rows + image column."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    path = str(built["qwen2_5_vl"])
    images = [red_image(), Image.new("RGB", (112, 112), (0, 0, 255))] * 2
    prompts = [build_messages(f"Is the car left of the dog {i}?", SYSTEM) for i in range(4)]
    answer = [
        {"role": "assistant", "content": [{"type": "text", "text": "<think>x</think><answer>True</answer>"}]}
    ]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    common = dict(
        per_device_train_batch_size=2, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True
    )

    sft = SFTTrainer(
        model=load_model(path),
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"), max_steps=2, max_length=None, learning_rate=1e-3, **common
        ),
        train_dataset=Dataset.from_dict({"prompt": prompts, "completion": [answer] * 4, "image": images}),
        processing_class=load_processor(path),
        peft_config=lora,
    )
    sft.train()
    losses = [h["loss"] for h in sft.state.log_history if "loss" in h]
    assert sft.state.global_step == 2 and len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any(
        n.endswith("lora_B.default.weight") and p.abs().sum() > 0 for n, p in sft.model.named_parameters()
    )
    sft.save_model(str(tmp_path / "adapter"))  # adapter + processor files, no config.json (merge input)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert model_arch(str(tmp_path / "adapter")) == "qwen2_5_vl"
    assert load_processor(str(tmp_path / "adapter")).tokenizer.convert_tokens_to_ids("<think>") > 0

    seen = []

    def reward_len(completions, **kwargs):
        seen.extend(completions)
        return [float(len(c[0]["content"])) for c in completions]

    grpo = GRPOTrainer(
        model=load_model(path),
        reward_funcs=[reward_len],
        args=GRPOConfig(
            output_dir=str(tmp_path / "grpo"),
            max_steps=1,
            num_generations=2,
            max_completion_length=8,
            **common,
        ),
        train_dataset=Dataset.from_dict({"prompt": prompts, "image": images}),
        processing_class=load_processor(path),
        peft_config=lora,
    )
    grpo.train()
    assert grpo.state.global_step == 1
    assert len(seen) == 2 and all(
        c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in seen
    )


def sft_rows_answering_true(n: int):
    """``n`` prompt-completion rows (one red image each) whose completion is ``<answer>True</answer>``."""
    import datasets

    completion = [{"role": "assistant", "content": [{"type": "text", "text": "<answer>True</answer>"}]}]
    return datasets.Dataset.from_list(
        [
            {
                "prompt": build_messages(f"Is the cat left of the dog? {i}"),
                "completion": completion,
                "image": red_image(),
            }
            for i in range(n)
        ]
    )


def test_rerun_after_the_final_checkpoint_trains_no_extra_step(built, tmp_path):
    """A job killed after its last checkpoint but before writing its output must not train again on rerun."""
    from safetensors.torch import load_file

    from grpo_vqa.training.common import TrainJob
    from grpo_vqa.training.sft import run_sft

    rows = sft_rows_answering_true(7)  # the last checkpoint falls mid-epoch, as in a real run
    cfg = train_section(
        "sft",
        max_steps=2,
        learning_rate=1e-3,
        per_device_train_batch_size=2,
        warmup_ratio=0.0,
        save_steps=1,
        lora=lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    path = str(built["qwen2_5_vl"])
    first = run_sft(TrainJob(path, rows, tmp_path / "a", tmp_path / "ck", cfg, seed=0))
    again = run_sft(TrainJob(path, rows, tmp_path / "b", tmp_path / "ck", cfg, seed=0))
    assert again["resumed_from"].endswith("checkpoint-2")
    assert [h["step"] for h in again["history"]] == [h["step"] for h in first["history"]] == [1, 2]
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_modules_to_save_trains_the_lm_head_and_the_merge_keeps_it(built, tmp_path):
    """``lora.modules_to_save``: the LM head is trained in full beside LoRA and lands in the merged model."""
    from safetensors.torch import load_file

    from grpo_vqa.models.merge import merge_adapter
    from grpo_vqa.training.common import TrainJob
    from grpo_vqa.training.sft import run_sft

    rows = sft_rows_answering_true(4)
    path = str(built["qwen2_5_vl"])
    cfg = train_section(
        "sft", max_steps=2, learning_rate=1e-2, per_device_train_batch_size=2, warmup_ratio=0.0, save_steps=10
    )
    for name, mts in (("plain", []), ("mts", ["lm_head"])):
        adapter = lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=mts)
        run_sft(
            TrainJob(path, rows, tmp_path / name, tmp_path / f"ck-{name}", cfg | {"lora": adapter}, seed=0)
        )
        merge_adapter(tmp_path / name, tmp_path / f"{name}-merged")
    saved = load_file(tmp_path / "mts" / "adapter_model.safetensors")
    assert any("lm_head" in k for k in saved)
    assert not any("lm_head" in k for k in load_file(tmp_path / "plain" / "adapter_model.safetensors"))
    base, plain, mts = (
        load_file(d / "model.safetensors")
        for d in (built["qwen2_5_vl"], tmp_path / "plain-merged", tmp_path / "mts-merged")
    )
    key = next(k for k in base if k.endswith("lm_head.weight"))
    assert torch.equal(plain[key], base[key])  # LoRA alone leaves the head as it was
    assert not torch.allclose(mts[key], base[key])  # trained in full and merged


@pytest.mark.parametrize("arch", ARCHS)
def test_evaluating_an_adapter_loads_the_weights_merge_lora_saves(built, tmp_path, arch):
    """``evaluation.from_adapter``: rule evaluate loads a LoRA adapter merged in memory; those are the weights of
    the merged model rule merge_lora writes (so the evaluation is the same), and not the base model's."""
    from grpo_vqa.evaluation.run import load_eval_model
    from grpo_vqa.models.merge import is_lora_adapter, merge_adapter
    from grpo_vqa.training.common import TrainJob
    from grpo_vqa.training.sft import run_sft

    adapter = lora(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["lm_head"])
    cfg = train_section(
        "sft", max_steps=2, learning_rate=1e-2, per_device_train_batch_size=2, warmup_ratio=0.0, save_steps=10
    )
    cfg |= {"lora": adapter}
    run_sft(TrainJob(built[arch], sft_rows_answering_true(4), tmp_path / "a", tmp_path / "ck", cfg, seed=0))
    merge_adapter(tmp_path / "a", tmp_path / "merged")
    assert is_lora_adapter(tmp_path / "a") and not is_lora_adapter(tmp_path / "merged")
    in_memory = load_eval_model(str(tmp_path / "a")).state_dict()
    on_disk = load_eval_model(str(tmp_path / "merged")).state_dict()
    base = load_eval_model(str(built[arch])).state_dict()
    assert sorted(in_memory) == sorted(on_disk)
    assert all(torch.equal(in_memory[k], on_disk[k]) for k in on_disk)
    assert any(not torch.equal(in_memory[k], base[k]) for k in base)

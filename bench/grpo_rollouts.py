"""GRPO rollout benchmark on one GPU: TRL's generate path vs the fast engine, Qwen2.5-VL-3B dims, random weights.

Subcommands (run on the device machine):
  prefill prefill of 32 distinct image prompts: transformers' vision forward vs the fast one (time split into
          vision / rest, a kernel profile of each, vision features of both against an fp32 reference).
  micro   correctness + microbenchmarks: decode ms/step at batch 32/64 vs the weight+KV bandwidth floor, prefill
          of 32 image prompts, bf16 teacher-forced agreement with transformers, SmolVLM KV-cache parity/speed.
  tf      bf16 teacher forcing: engine, generate's decode and the bf16 full forward, each against an fp32 forward.
  grpo    whole GRPO steps of one configuration in this process (``--setting trl_default|trl_tuned|trl_nocache|
          fast|fast_noprefetch``; ``--model qwen3b|smolvlm``).
  all     every configuration, each in a fresh process, within ``--budget`` seconds; writes one JSON.
          ``--plan smolvlm``: SmolVLM-500M dims at the study's recipe, the engine against TRL with and without
          the KV cache (the study ran SmolVLM with ``use_cache=False``) and the engine without its
          background image prefetch (``fast_noprefetch``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from grpo_vqa.rollout.synthetic import QWEN2_5_VL_3B, image_prompts, qwen2_5_vl_config  # noqa: E402

QUESTIONS = [
    "What color is the car in the picture?",
    "How many people are standing near the door?",
    "What is written on the sign?",
    "Which animal is shown in the image?",
    "Is the light on or off?",
    "What shape is the table?",
]


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def copy_bandwidth() -> float:
    """Device-to-device copy rate (bytes read + written per second)."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    sync()
    return 2 * x.numel() * 20 / (time.perf_counter() - t)


#: LoRA targets: ``all``, every linear layer of the language model, is config/paper.yaml's (the study's VLM-R1 script
#: gave no target list, so PEFT wrapped every linear layer: ../shared/reference/study-facts.md); ``qv``, q and v
#: only, is what the benchmarks before 2026-12-07 ran (the fast engine decodes merged weights either way)
LORA_TARGETS = {
    "qv": ["q_proj", "v_proj"],
    "all": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
}


def build_3b(dtype=torch.bfloat16, lora=True, token_ids=None, dims=None, device="cuda", lora_targets="qv"):
    """Qwen2.5-VL-3B-dims model with random weights on the GPU (+ LoRA r16/alpha32 on ``LORA_TARGETS``)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = qwen2_5_vl_config(dims or QWEN2_5_VL_3B)
    if token_ids:
        for key, value in token_ids.items():
            setattr(config, key, value)
        config.text_config.eos_token_id = token_ids.get("eos_token_id", config.text_config.eos_token_id)
        config.text_config.pad_token_id = token_ids.get("pad_token_id", config.text_config.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    if lora:
        model = with_trained_looking_lora(model, LORA_TARGETS[lora_targets])
    return model


def with_trained_looking_lora(model, targets):
    """``model`` with LoRA r16/alpha32 on ``targets``, B drawn at random (PEFT starts it at zero, which no trained
    adapter is)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return model


#: SmolVLM-500M-Instruct's dims: SmolLM2-360M language model, SigLIP-B/16 at 512 px, pixel shuffle 4 (64 tokens a
#: 512-px tile), images split into 512-px tiles after resizing the longest edge to 2048 (plus a global view)
SMOLVLM_500M_TEXT = {
    "model_type": "llama",
    "vocab_size": 49280,
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "tie_word_embeddings": True,
}
SMOLVLM_500M_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 512,
    "patch_size": 16,
}
#: SmolVLM LoRA targets: the language model only (``text_model``), as LORA_TARGETS
SMOLVLM_LORA_TARGETS = {
    "qv": r".*text_model.*\.(q_proj|v_proj)",
    "all": r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
}


def smolvlm_processor_and_token_ids(tiny=False):
    """An Idefics3 processor like SmolVLM-500M-Instruct's (tokenizer trained on the bench's questions)."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    from grpo_vqa.models.tiny import IDEFICS3_CHAT_TEMPLATE
    from grpo_vqa.models.tokenizer import train_tokenizer

    corpus = QUESTIONS * 5 + ["<think> the answer </think> <answer>blue</answer>"] * 5
    tok = train_tokenizer(corpus, 1000, "idefics3")
    tok.padding_side = "left"
    tile = 56 if tiny else 512
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True,
        size={"longest_edge": 2 * tile if tiny else 4 * tile},
        max_image_size={"longest_edge": tile},
    )
    proc = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=(tile // (14 if tiny else 16) // (2 if tiny else 4)) ** 2,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    ids = tok.convert_tokens_to_ids
    return proc, {
        "image_token_id": ids("<image>"),
        "eos_token_id": ids("<end_of_utterance>"),
        "pad_token_id": ids("<|im_end|>"),
        "bos_token_id": ids("<|im_start|>"),
    }


def build_smolvlm(token_ids, dtype=torch.bfloat16, device="cuda", lora_targets="all", tiny=False):
    """SmolVLM-500M-dims Idefics3 with random weights (+ LoRA r16/alpha32 on the language model's layers)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    text = dict(SMOLVLM_500M_TEXT)
    vision = dict(SMOLVLM_500M_VISION)
    if tiny:
        text.update(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        text.update(num_attention_heads=4, num_key_value_heads=2)
        vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        vision.update(image_size=56, patch_size=14)
    text.update(
        pad_token_id=token_ids["pad_token_id"],
        bos_token_id=token_ids["bos_token_id"],
        eos_token_id=token_ids["eos_token_id"],
    )
    config = Idefics3Config(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["image_token_id"],
        scale_factor=2 if tiny else 4,
        pad_token_id=token_ids["pad_token_id"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Idefics3ForConditionalGeneration._from_config(config, dtype=dtype)
    return with_trained_looking_lora(model, SMOLVLM_LORA_TARGETS[lora_targets])


# ------------------------------------------------------------------------------------------------- prefill


def prefill_study(args) -> dict:
    """Prefill of 32 distinct 640x480 image prompts, old (transformers) vs fast vision forward, on one GPU."""
    from transformers import Qwen2_5_VisionTransformerPretrainedModel

    from grpo_vqa.rollout import RolloutConfig, RolloutEngine, SamplingParams
    from grpo_vqa.rollout.engine import unwrap_hf_model
    from grpo_vqa.rollout.synthetic import special_ids
    from grpo_vqa.rollout.vision import set_fast_vision

    res = {"device": device_name(), "torch": torch.__version__}
    model = build_3b()
    hf = unwrap_hf_model(model)
    ids = special_ids(hf.config.text_config.vocab_size)
    engine = RolloutEngine(
        model, RolloutConfig(engine="fast"), eos_token_ids=[ids["eos"]], pad_token_id=ids["pad"]
    )
    g = torch.Generator().manual_seed(1)
    lens = [
        (int(a), int(b))
        for a, b in zip(
            torch.randint(15, 25, (32,), generator=g), torch.randint(8, 16, (32,), generator=g), strict=True
        )
    ]
    inp = {k: v.cuda() for k, v in image_prompts(hf.config, lens, (480, 640), generator=g).items()}
    sp = SamplingParams(do_sample=True)

    def prefill():
        engine.generate(**inp, max_new_tokens=1, sampling=sp)
        return engine.last_timings["prefill_s"]

    def vision():
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            hf.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"])
        sync()
        return time.perf_counter() - t

    def profile(tag):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            prefill()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60)
        if args.out:
            Path(args.out).with_name(f"profile_{tag}.txt").write_text(table)
        print(tag, "\n", table[:3500], flush=True)

    for tag, fast in (("before", False), ("after", True)):
        set_fast_vision(hf, fast)
        t = time.perf_counter()
        prefill()
        first = time.perf_counter() - t
        pre = min(prefill() for _ in range(3))
        vis = min(vision() for _ in range(3))
        res[tag] = {"prefill_32_distinct_s": pre, "vision_s": vis, "rest_s": pre - vis, "first_call_s": first}
        print(tag, json.dumps(res[tag]), flush=True)
        profile(tag)

    # vision features of 3 images, bf16 old / fast, each against transformers' own forward in fp32
    cfg = hf.config.vision_config
    ref = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg, dtype=torch.float32).cuda().eval()
    ref.load_state_dict({k: v.float() for k, v in hf.model.visual.state_dict().items()})
    n = 3
    pv = inp["pixel_values"][: int(inp["image_grid_thw"][:n].prod(-1).sum())]
    grid = inp["image_grid_thw"][:n]
    with torch.no_grad():
        want = ref(pv, grid_thw=grid).pooler_output.double()
        err = {}
        for tag, fast in (("before", False), ("after", True)):
            set_fast_vision(hf, fast)
            got = hf.model.get_image_features(pv, grid).pooler_output
            got = torch.cat(got).double()
            err[tag] = ((got - want).norm() / want.norm()).item()
    res["vision_rel_l2_vs_fp32"] = err
    res["speedup"] = res["before"]["prefill_32_distinct_s"] / res["after"]["prefill_32_distinct_s"]
    print(json.dumps(res), flush=True)
    return res


# ------------------------------------------------------------------------------------------------- decode


def decode_study(args) -> dict:
    """Decode ms/step at batch 4 and 64 (256 new tokens), LoRA merged or not, against the weight+KV floor; a
    kernel profile of the merged step at batch 4."""
    from grpo_vqa.rollout import RolloutConfig, RolloutEngine, SamplingParams
    from grpo_vqa.rollout.engine import unwrap_hf_model
    from grpo_vqa.rollout.synthetic import special_ids

    res = {"device": device_name(), "torch": torch.__version__, "lora": args.lora}
    bw = copy_bandwidth()
    res["copy_bandwidth_TBps"] = bw / 1e12
    model = build_3b(lora_targets=args.lora)
    hf = unwrap_hf_model(model)
    ids = special_ids(hf.config.text_config.vocab_size)
    wbytes = decoder_bytes(model)
    res["decoder_weight_bytes"] = wbytes
    kv_per_token = None
    sp = SamplingParams(do_sample=True)
    for merge in (False, True):
        engine = RolloutEngine(
            model,
            RolloutConfig(engine="fast", merge_lora=merge),
            eos_token_ids=[ids["eos"]],
            pad_token_id=ids["pad"],
            suppress_token_ids=[ids["image"]],
        )
        kv_per_token = 2 * hf.config.text_config.num_hidden_layers * engine.n_kv * engine.head_dim * 2
        for batch in (4, 64):
            g = torch.Generator().manual_seed(batch)
            lens = [
                (int(a), int(b))
                for a, b in zip(
                    torch.randint(15, 25, (batch,), generator=g),
                    torch.randint(8, 16, (batch,), generator=g),
                    strict=True,
                )
            ]
            inp = {k: v.cuda() for k, v in image_prompts(hf.config, lens, (480, 640), generator=g).items()}
            engine.generate(**inp, max_new_tokens=256, sampling=sp)  # compile + capture
            runs = []
            for _ in range(2):
                engine.generate(**inp, max_new_tokens=256, sampling=sp)
                runs.append(dict(engine.last_timings))
            best = min(runs, key=lambda r: r["decode_s"])
            ms = 1e3 * best["decode_s"] / best["decode_steps"]
            plen = inp["input_ids"].shape[1]
            floor = (wbytes + batch * (plen + 128) * kv_per_token) / bw * 1e3
            key = f"{'merged' if merge else 'unmerged'}_b{batch}"
            res[key] = {
                "ms_per_step": ms,
                "floor_ms": floor,
                "ratio_to_floor": ms / floor,
                "prompt_len": plen,
                "weights_s": best.get("weights_s"),
                "prefill_s": best["prefill_s"],
            }
            print(key, json.dumps(res[key]), flush=True)
            if merge and batch == 4 and args.out:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    engine.generate(**inp, max_new_tokens=32, sampling=sp)
                table = prof.key_averages().table(
                    sort_by="cuda_time_total", row_limit=25, max_name_column_width=70
                )
                Path(args.out).with_name("decode_profile_b4.txt").write_text(table)
        del engine
        torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------------------------- micro


def decoder_bytes(model) -> int:
    from grpo_vqa.rollout.engine import unwrap_hf_model

    hf = unwrap_hf_model(model)
    lm = hf.model.language_model if hasattr(hf.model, "language_model") else hf.model.text_model
    n = sum(p.numel() * p.element_size() for p in lm.layers.parameters())
    n += sum(p.numel() * p.element_size() for p in lm.norm.parameters())
    head = hf.get_output_embeddings().weight
    return n + head.numel() * head.element_size()


def micro(args) -> dict:
    from grpo_vqa.rollout import RolloutConfig, RolloutEngine, SamplingParams
    from grpo_vqa.rollout.engine import unwrap_hf_model
    from grpo_vqa.rollout.synthetic import special_ids

    res = {"device": device_name(), "torch": torch.__version__}
    bw = copy_bandwidth()
    res["copy_bandwidth_TBps"] = bw / 1e12
    model = build_3b()
    hf = unwrap_hf_model(model)
    ids = special_ids(hf.config.text_config.vocab_size)
    eos, pad = [ids["eos"]], ids["pad"]
    g = torch.Generator().manual_seed(0)
    hf_config = hf.config

    def prompts(n, seed=0):
        g.manual_seed(seed)
        lens = [
            (int(a), int(b))
            for a, b in zip(
                torch.randint(15, 25, (n,), generator=g), torch.randint(8, 16, (n,), generator=g), strict=True
            )
        ]
        inp = image_prompts(hf_config, lens, (480, 640), generator=g)
        return {k: v.cuda() for k, v in inp.items()}

    engine = RolloutEngine(
        model,
        RolloutConfig(engine="fast"),
        eos_token_ids=eos,
        pad_token_id=pad,
        suppress_token_ids=[ids["image"]],
    )
    sp = SamplingParams(do_sample=True, temperature=1.0)
    kv_per_token = 2 * hf.config.text_config.num_hidden_layers * engine.n_kv * engine.head_dim * 2
    wbytes = decoder_bytes(model)
    res["decoder_weight_bytes"] = wbytes
    for batch in (32, 64):
        inp = prompts(batch, seed=batch)
        t0 = time.perf_counter()
        engine.generate(
            **{k: inp[k] for k in inp if k != "input_ids"},
            input_ids=inp["input_ids"],
            max_new_tokens=256,
            sampling=sp,
        )
        first_call = time.perf_counter() - t0
        runs = []
        for _ in range(2):
            engine.generate(
                **{k: inp[k] for k in inp if k != "input_ids"},
                input_ids=inp["input_ids"],
                max_new_tokens=256,
                sampling=sp,
            )
            runs.append(dict(engine.last_timings))
        best = min(runs, key=lambda r: r["decode_s"])
        step_ms = 1e3 * best["decode_s"] / best["decode_steps"]
        plen = inp["input_ids"].shape[1]
        static_len = next(iter(engine._slots))[1]
        mean_len = plen + 128
        floor_mean = (wbytes + batch * mean_len * kv_per_token) / bw * 1e3
        floor_static = (wbytes + batch * static_len * kv_per_token) / bw * 1e3
        res[f"decode_b{batch}"] = {
            "ms_per_step": step_ms,
            "floor_ms_mean_context": floor_mean,
            "floor_ms_static_cache": floor_static,
            "ratio_to_floor": step_ms / floor_mean,
            "prompt_len": plen,
            "static_cache_len": static_len,
            "first_call_s_incl_compile_capture": first_call,
            "prefill_s_deduped_distinct": best["prefill_s"],
        }
        print(json.dumps({f"decode_b{batch}": res[f"decode_b{batch}"]}), flush=True)
    # prefill of 32 distinct image prompts (no dedupe possible), and of 32 rows = 8 prompts x 4 generations
    inp = prompts(32, seed=1)
    pre = []
    for _ in range(3):
        engine.generate(
            **{k: inp[k] for k in inp if k != "input_ids"},
            input_ids=inp["input_ids"],
            max_new_tokens=1,
            sampling=sp,
        )
        pre.append(engine.last_timings["prefill_s"])
    res["prefill_32_distinct_s"] = min(pre)
    plain = build_3b(lora=False)
    x = prompts(8, seed=3)
    with torch.no_grad():
        sync()
        t = time.perf_counter()
        plain.model.get_image_features(x["pixel_values"], x["image_grid_thw"])
        sync()
        t_loop = time.perf_counter() - t
        from grpo_vqa.rollout import install_batched_vision_attention

        install_batched_vision_attention(plain)
        plain.model.get_image_features(x["pixel_values"], x["image_grid_thw"])
        sync()
        t = time.perf_counter()
        plain.model.get_image_features(x["pixel_values"], x["image_grid_thw"])
        sync()
        t_batched = time.perf_counter() - t
    res["vision_8_images_s"] = {"per_window_loop": t_loop, "batched": t_batched}
    del plain
    torch.cuda.empty_cache()
    print(
        json.dumps(
            {"prefill_32_distinct_s": res["prefill_32_distinct_s"], "vision": res["vision_8_images_s"]}
        ),
        flush=True,
    )

    # plain generate (TRL's backend) ms/step at batch 32, 32 new tokens
    inp = prompts(32, seed=2)
    hf.eval()
    gen_kw = dict(
        max_new_tokens=32,
        min_new_tokens=32,
        do_sample=True,
        pad_token_id=pad,
        eos_token_id=eos,
        suppress_tokens=[ids["image"]],
    )
    with torch.no_grad():
        model.generate(**inp, **dict(gen_kw, max_new_tokens=4, min_new_tokens=4))
        sync()
        t = time.perf_counter()
        model.generate(**inp, **dict(gen_kw, max_new_tokens=1, min_new_tokens=1))
        sync()
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(**inp, **gen_kw)
        sync()
        t32 = time.perf_counter() - t
    res["hf_generate_b32_ms_per_step"] = 1e3 * (t32 - t1) / 31
    print(json.dumps({"hf_generate_b32_ms_per_step": res["hf_generate_b32_ms_per_step"]}), flush=True)

    # bf16 teacher forcing: the engine fed generate's greedy tokens vs transformers' full forward
    inp = prompts(8, seed=4)
    with torch.no_grad():
        out = model.generate(
            **inp,
            max_new_tokens=64,
            min_new_tokens=64,
            do_sample=False,
            pad_token_id=pad,
            suppress_tokens=[ids["image"]],
        )
        tokens = out[:, inp["input_ids"].shape[1] :]
        logits = engine.teacher_force(
            inp["input_ids"],
            inp["attention_mask"],
            tokens,
            pixel_values=inp["pixel_values"],
            image_grid_thw=inp["image_grid_thw"],
            mm_token_type_ids=inp["mm_token_type_ids"],
        ).float()
        full = torch.cat([inp["input_ids"], tokens], 1)
        mask = torch.cat([inp["attention_mask"], torch.ones_like(tokens)], 1)
        mm = torch.cat([inp["mm_token_type_ids"], torch.zeros_like(tokens)], 1)
        ref = model(
            input_ids=full,
            attention_mask=mask,
            mm_token_type_ids=mm,
            pixel_values=inp["pixel_values"],
            image_grid_thw=inp["image_grid_thw"],
        ).logits
        ref = ref[:, inp["input_ids"].shape[1] - 1 : -1].float()
    rel = ((logits - ref).norm(dim=-1) / ref.norm(dim=-1)).mean(0)
    top1 = (logits.argmax(-1) == tokens).float().mean(0)
    top1_ref = (ref.argmax(-1) == tokens).float().mean(0)
    res["teacher_forced_bf16"] = {
        "rel_l2_mean": rel.mean().item(),
        "rel_l2_max_step": rel.max().item(),
        "top1_agreement_with_generate": top1.mean().item(),
        "top1_agreement_full_forward_vs_generate": top1_ref.mean().item(),
        "top1_engine_vs_full_forward": (logits.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        "rel_l2_per_step": [round(v, 5) for v in rel.tolist()],
        "top1_per_step": [round(v, 3) for v in top1.tolist()],
    }
    print(
        json.dumps(
            {
                "teacher_forced_bf16": {
                    k: v for k, v in res["teacher_forced_bf16"].items() if "per_step" not in k
                }
            }
        ),
        flush=True,
    )
    del engine, model, hf
    torch.cuda.empty_cache()
    res["smolvlm_kv_cache"] = smolvlm_cache()
    print(json.dumps({"smolvlm_kv_cache": res["smolvlm_kv_cache"]}), flush=True)
    return res


def smolvlm_cache() -> dict:
    """SmolVLM-256M dims (Idefics3), random weights: greedy with vs without the KV cache, tokens and speed."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    config = Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": 49280,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
            "pad_token_id": 2,
            "bos_token_id": 1,
            "eos_token_id": 49279,
            "tie_word_embeddings": True,
        },
        vision_config=dict(SMOLVLM_500M_VISION),  # SmolVLM-256M and -500M share SigLIP-B/16 at 512 px
        image_token_id=49190,
        scale_factor=4,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Idefics3ForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    n_img = (512 // 16) ** 2 // 16
    g = torch.Generator().manual_seed(0)
    rows = [
        torch.randint(3, 49000, (20,), generator=g).tolist()
        + [49190] * n_img
        + torch.randint(3, 49000, (10 + i,), generator=g).tolist()
        for i in range(16)
    ]
    width = max(map(len, rows))
    ids = torch.full((16, width), 2, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    inp = {
        "input_ids": ids.cuda(),
        "attention_mask": mask.cuda(),
        "pixel_values": torch.randn(16, 1, 3, 512, 512, generator=g).cuda().bfloat16(),
    }
    kw = dict(max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=2)
    out = {}
    with torch.no_grad():
        for use_cache in (True, False):
            model.generate(**inp, use_cache=use_cache, **dict(kw, max_new_tokens=4, min_new_tokens=4))
            sync()
            t = time.perf_counter()
            out[use_cache] = (model.generate(**inp, use_cache=use_cache, **kw), time.perf_counter() - t)
            sync()
    a, b = out[True][0], out[False][0]
    n = ids.shape[1]
    same = (a[:, n:] == b[:, n:]).all(-1)
    first_diff = [(int((a[i, n:] != b[i, n:]).nonzero()[0]) if not same[i] else 128) for i in range(16)]
    return {
        "batch": 16,
        "new_tokens": 128,
        "rows_identical": int(same.sum()),
        "median_first_divergence_step": float(np.median(first_diff)),
        "with_cache_s": out[True][1],
        "without_cache_s": out[False][1],
        "speedup": out[False][1] / out[True][1],
    }


def gpu_check(args) -> dict:
    """The engine on the GPU after #18's changes: greedy tokens of the compiled, CUDA-graphed step (``step`` and
    ``layer`` compile) against transformers' ``generate`` for tiny Qwen2.5-VL (LoRA, merged) and SmolVLM
    (Idefics3) models in fp32; then SmolVLM-500M dims in bf16 with and without the engine's KV cache
    (``rollout.kv_cache: false``), tokens and time. ``--tiny``: the same on the CPU (eager, small)."""
    from peft import LoraConfig, get_peft_model

    from grpo_vqa.rollout import RolloutConfig, RolloutEngine, SamplingParams
    from grpo_vqa.rollout.synthetic import QWEN2_5_VL_TINY, build_model, image_prompts, special_ids

    cuda = torch.cuda.is_available() and not args.tiny
    dev = "cuda" if cuda else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    res = {"device": device_name() if cuda else "cpu", "torch": torch.__version__}
    greedy = SamplingParams(do_sample=False)
    modes = [("step", True), ("layer", True)] if cuda else [("eager", False)]

    def compare(tag, tokens, ref, t_first):
        rows = (tokens == ref).all(-1)
        res[tag] = {
            "rows_equal": int(rows.sum()),
            "rows": len(ref),
            "first_divergence": first_divergence(tokens, ref),
            "first_call_s": t_first,
        }
        print(tag, json.dumps(res[tag]), flush=True)
        save()

    def save():  # after every check: a call stopped at its time limit keeps what it measured
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    # tiny Qwen2.5-VL with LoRA on q/v, fp32
    model = build_model({**QWEN2_5_VL_TINY, "rope_theta": 10.0}, seed=1, device=dev)
    torch.manual_seed(11)
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(model, lcfg).eval()
    cfg = model.get_base_model().config
    ids = special_ids(cfg.text_config.vocab_size)
    g = torch.Generator().manual_seed(0)
    inp = image_prompts(cfg, [(3, 4), (1, 2), (6, 1), (2, 9)], (112, 84), generator=g, text_vocab=300)
    inp = {k: v.to(dev) for k, v in inp.items()}
    eos, n = [ids["vision_end"]], 48
    with torch.no_grad():
        ref = model.generate(
            **inp,
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=ids["pad"],
            suppress_tokens=[ids["image"]],
        )[:, inp["input_ids"].shape[1] :]
    for mode, comp in modes:
        engine = RolloutEngine(
            model,
            RolloutConfig(
                engine="fast", compile=comp, decode_compile=mode if comp else "step", merge_lora=True
            ),
            eos_token_ids=eos,
            pad_token_id=ids["pad"],
            suppress_token_ids=[ids["image"]],
        )
        t = time.perf_counter()
        out = engine.generate(**inp, max_new_tokens=n, sampling=greedy)
        t_first = time.perf_counter() - t
        out = engine.generate(**inp, max_new_tokens=n, sampling=greedy)  # replayed graph
        compare(f"qwen_tiny_{mode}", out.tokens, ref, t_first)
        res[f"qwen_tiny_{mode}"]["graph"] = next(iter(engine._slots.values())).graph is not None
        del engine

    # tiny SmolVLM (Idefics3), LoRA on every language-model linear, fp32
    proc, token_ids = smolvlm_processor_and_token_ids(tiny=True)
    model = build_smolvlm(token_ids, torch.float32, dev, lora_targets="all", tiny=True).eval()
    sinp = smolvlm_inputs(proc, 3, tiny=True)
    sinp = {k: v.to(dev) for k, v in sinp.items()}
    eos, pad = [token_ids["image_token_id"]], token_ids["pad_token_id"]
    with torch.no_grad():
        ref = model.generate(**sinp, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    ref = ref[:, sinp["input_ids"].shape[1] :]
    for mode, comp in modes[:1] + [("nocache", False)]:
        rcfg = RolloutConfig(engine="fast", compile=comp, decode_compile="step", kv_cache=mode != "nocache")
        engine = RolloutEngine(model, rcfg, eos_token_ids=eos, pad_token_id=pad)
        t = time.perf_counter()
        out = engine.generate(**sinp, max_new_tokens=n, sampling=greedy)
        compare(f"smolvlm_tiny_{mode}", out.tokens, ref, time.perf_counter() - t)
        del engine

    # SmolVLM-500M dims, bf16: the engine with and without its KV cache (rollout.kv_cache: false)
    proc, token_ids = smolvlm_processor_and_token_ids(tiny=args.tiny)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_smolvlm(token_ids, dtype, dev, lora_targets="all", tiny=args.tiny).eval()
    sinp = {k: v.to(dev) for k, v in smolvlm_inputs(proc, 4, tiny=args.tiny).items()}
    if dtype == torch.bfloat16:
        sinp["pixel_values"] = sinp["pixel_values"].to(dtype)
    eos, pad = [token_ids["image_token_id"]], token_ids["pad_token_id"]
    n = 8 if args.tiny else 32
    kv = {"batch": 4, "new_tokens": n, "prompt_len": int(sinp["input_ids"].shape[1])}
    outs = {}
    for cached in (True, False):
        rcfg = RolloutConfig(engine="fast", kv_cache=cached, decode_compile="layer")  # layer: compiles fast
        engine = RolloutEngine(model, rcfg, eos_token_ids=eos, pad_token_id=pad)
        engine.generate(**sinp, max_new_tokens=n if cached else 2, sampling=greedy)  # compile / warm up
        sync()
        t = time.perf_counter()
        outs[cached] = engine.generate(**sinp, max_new_tokens=n, sampling=greedy)
        sync()
        key = "cached" if cached else "uncached"
        kv[f"{key}_s"] = time.perf_counter() - t
        kv[f"{key}_ms_per_token"] = 1e3 * kv[f"{key}_s"] / n
        del engine
    a, b = outs[True].tokens, outs[False].tokens
    same = (a == b).all(-1)
    kv["rows_identical"] = int(same.sum())
    kv["first_divergence"] = first_divergence(a, b, n)
    kv["speedup_cached"] = kv["uncached_s"] / kv["cached_s"]
    res["smolvlm500m_kv_cache"] = kv
    print("smolvlm500m_kv_cache", json.dumps(kv), flush=True)
    return res


def first_divergence(tokens: torch.Tensor, ref: torch.Tensor, length: int | None = None) -> list[int]:
    """Per row, the index of the first token that differs from ``ref`` (``length``, default ``ref``'s row length,
    where none does)."""
    length = ref.shape[1] if length is None else length
    return [int(row.nonzero()[0]) if row.any() else length for row in tokens != ref]


def smolvlm_inputs(proc, n, tiny=False):
    """``n`` left-padded SmolVLM prompts, one 480x640 image each (84x112 for ``tiny``)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    hw = (84, 112) if tiny else (480, 640)
    images = [Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)) for _ in range(n)]
    msgs = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[i % 6]}]}]
        for i in range(n)
    ]
    texts = [proc.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    proc.tokenizer.padding_side = "left"
    inp = proc(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True)
    return {
        k: inp[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask") if k in inp
    }


def teacher_forced(args) -> dict:
    """bf16 engine vs transformers (its incremental decode and its full forward) against an fp32 forward."""
    from grpo_vqa.rollout import RolloutConfig, RolloutEngine
    from grpo_vqa.rollout.engine import unwrap_hf_model
    from grpo_vqa.rollout.synthetic import special_ids

    model = build_3b()
    hf = unwrap_hf_model(model).eval()
    ids = special_ids(hf.config.text_config.vocab_size)
    g = torch.Generator().manual_seed(4)
    lens = [(18 + i, 10 + i) for i in range(8)]
    inp = {k: v.cuda() for k, v in image_prompts(hf.config, lens, (480, 640), generator=g).items()}
    engine = RolloutEngine(
        model, RolloutConfig(engine="fast"), eos_token_ids=[ids["eos"]], pad_token_id=ids["pad"]
    )
    plen = inp["input_ids"].shape[1]
    with torch.no_grad():
        gen = model.generate(
            **inp,
            max_new_tokens=64,
            min_new_tokens=64,
            do_sample=False,
            pad_token_id=ids["pad"],
            output_logits=True,
            return_dict_in_generate=True,
        )
        tokens = gen.sequences[:, plen:]
        hf_decode = torch.stack(gen.logits, 1).float()
        mm_kw = {k: inp[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")}
        eng = engine.teacher_force(inp["input_ids"], inp["attention_mask"], tokens, **mm_kw).float()
        full = dict(
            input_ids=torch.cat([inp["input_ids"], tokens], 1),
            attention_mask=torch.cat([inp["attention_mask"], torch.ones_like(tokens)], 1),
            mm_token_type_ids=torch.cat([inp["mm_token_type_ids"], torch.zeros_like(tokens)], 1),
            pixel_values=inp["pixel_values"],
            image_grid_thw=inp["image_grid_thw"],
        )
        bf16_full = model(**full).logits[:, plen - 1 : -1].float()
        del engine
        model.float()
        fp32 = model(**full).logits[:, plen - 1 : -1].float()

    def rel(a, b):
        return ((a - b).norm(dim=-1) / b.norm(dim=-1)).mean().item()

    def top1(a, b):
        return (a.argmax(-1) == b.argmax(-1)).float().mean().item()

    res = {
        "device": device_name(),
        "rows": 8,
        "steps": 64,
        "rel_l2_vs_fp32": {
            "engine": rel(eng, fp32),
            "hf_generate": rel(hf_decode, fp32),
            "hf_full_bf16": rel(bf16_full, fp32),
        },
        "rel_l2_engine_vs_hf_generate": rel(eng, hf_decode),
        "rel_l2_engine_vs_hf_full_bf16": rel(eng, bf16_full),
        "top1_vs_fp32": {
            "engine": top1(eng, fp32),
            "hf_generate": top1(hf_decode, fp32),
            "hf_full_bf16": top1(bf16_full, fp32),
        },
        "top1_engine_vs_generate_tokens": (eng.argmax(-1) == tokens).float().mean().item(),
        "top1_hf_generate_logits_vs_its_tokens": (hf_decode.argmax(-1) == tokens).float().mean().item(),
    }
    print(json.dumps(res), flush=True)
    return res


# ------------------------------------------------------------------------------------------------- grpo


def processor_and_token_ids():
    """The bench's processor (tokenizer trained on its questions) and the special token ids a model needs."""
    corpus = QUESTIONS * 5 + ["<think> the answer </think> <answer>blue</answer>"] * 5
    proc = make_processor(corpus)
    tok = proc.tokenizer
    return proc, {
        "image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>"),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def make_processor(corpus):
    from transformers import Qwen2VLImageProcessorPil

    from grpo_vqa.models.loading import make_qwen_processor
    from grpo_vqa.models.tiny import QWEN2_5_VL_CHAT_TEMPLATE
    from grpo_vqa.models.tokenizer import train_tokenizer

    tok = train_tokenizer(corpus, 1000, "qwen2_5_vl")
    tok.padding_side = "left"
    return make_qwen_processor(Qwen2VLImageProcessorPil(), tok, QWEN2_5_VL_CHAT_TEMPLATE)


#: GRPO settings besides batch shape: TRL 1.16's defaults (beta 0, loss dapo), or config/paper.yaml's ``grpo:``
#: (beta 0.04, loss grpo; LoRA r16/alpha32/dropout 0.05 from ``build_3b``, targets from ``--lora``)
RECIPES = {
    "trl": {},
    "paper": {"beta": 0.04, "loss_type": "grpo", "temperature": 1.0, "top_p": 1.0, "top_k": 0},
    # config/paper.yaml's grpo section as written (TRL 0.15.2's temperature 0.9, transformers' top-k 50)
    "study": {"beta": 0.04, "loss_type": "grpo", "temperature": 0.9, "top_p": 1.0, "top_k": 50},
}

SETTINGS = {
    # TRL's defaults: gradient checkpointing, the whole generation batch as one micro-batch
    "trl_default": {"engine": "hf", "checkpointing": True, "micro": None},
    # best plain TRL seen: checkpointing off, micro-batches of 8
    "trl_tuned": {"engine": "hf", "checkpointing": False, "micro": 8},
    # TRL's defaults with generate(use_cache=False): the study's SmolVLM path
    "trl_nocache": {"engine": "hf", "checkpointing": True, "micro": None, "use_cache": False},
    "fast": {"engine": "fast", "checkpointing": False, "micro": 8},
    # the engine with the whole decode step as one torch.compile region (``rollout.decode_compile: step``, the
    # default), the same with ``rollout.compile_autotune``, and per layer (``layer``)
    "fast_step": {"engine": "fast", "checkpointing": False, "micro": 8, "decode_compile": "step"},
    "fast_autotune": {
        "engine": "fast",
        "checkpointing": False,
        "micro": 8,
        "decode_compile": "step",
        "compile_autotune": True,
    },
    "fast_layer": {"engine": "fast", "checkpointing": False, "micro": 8, "decode_compile": "layer"},
    # the engine without the background image prefetch (``rollout.prefetch_images: false``)
    "fast_noprefetch": {"engine": "fast", "checkpointing": False, "micro": 8, "prefetch_images": False},
}


def grpo(args) -> dict:
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig

    from grpo_vqa.rollout import RolloutConfig, grpo_trainer_class

    setting = SETTINGS[args.setting]
    rollouts, gens = args.rollouts, 4
    micro = setting["micro"] or rollouts
    if args.micro and setting["engine"] == "fast":
        micro = args.micro
    micro = min(micro, rollouts)
    accum = rollouts // micro
    proc, token_ids = processor_and_token_ids()
    tiny = args.tiny
    if args.model == "smolvlm":
        proc, token_ids = smolvlm_processor_and_token_ids(tiny)
        dev = "cpu" if tiny else "cuda"
        dtype = torch.float32 if tiny else torch.bfloat16
        model = build_smolvlm(token_ids, dtype, dev, lora_targets=args.lora, tiny=tiny)
    elif tiny:  # CPU smoke test of this script
        from grpo_vqa.rollout.synthetic import QWEN2_5_VL_TINY

        dims = {**QWEN2_5_VL_TINY, "vocab_size": 1024}
        model = build_3b(torch.float32, token_ids=token_ids, dims=dims, device="cpu", lora_targets=args.lora)
    else:
        model = build_3b(token_ids=token_ids, lora_targets=args.lora)
    hw = (84, 112) if tiny else (480, 640)
    n_prompts = (rollouts // gens) * (args.warmup + args.steps + 1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)) for _ in range(n_prompts)]
    ds = Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(n_prompts)
            ],
            "image": images,
        }
    )

    def reward(completions, **kw):
        return [float("<answer>" in c[0]["content"]) + 0.01 * (len(c[0]["content"]) % 7) for c in completions]

    split_now: dict = {}
    splits: list[dict] = []

    class Timer(TrainerCallback):
        """Step wall time, and the optimizer's share of it (clip + step)."""

        def __init__(self):
            self.times, self.t0, self.t_opt = [], None, None

        def on_step_begin(self, *a, **k):
            sync()
            split_now.clear()
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, *a, **k):
            sync()
            self.t_opt = time.perf_counter()

        def on_optimizer_step(self, *a, **k):
            sync()
            split_now["optimizer_s"] = split_now.get("optimizer_s", 0.0) + time.perf_counter() - self.t_opt

        def on_step_end(self, *a, **k):
            sync()
            self.times.append(time.perf_counter() - self.t0)
            splits.append(dict(split_now, step_s=self.times[-1]))

    recipe = RECIPES[args.recipe]
    extra_args = {}
    if setting.get("use_cache") is False:
        extra_args["generation_kwargs"] = {"use_cache": False}
    cfg = GRPOConfig(
        **recipe,
        **extra_args,
        output_dir="/tmp/grpo_bench",
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        steps_per_generation=accum,
        num_generations=gens,
        max_completion_length=16 if tiny else 256,
        bf16=not tiny,
        use_cpu=tiny,
        gradient_checkpointing=setting["checkpointing"],
        learning_rate=1e-5,
        max_steps=args.warmup + args.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    kwargs = {}
    if setting["engine"] == "fast":
        extra = {k: setting[k] for k in ("decode_compile", "compile_autotune") if k in setting}
        if args.logprob_batch:
            extra["logprob_batch"] = args.logprob_batch
        if args.cudnn_attention:
            extra["cudnn_attention"] = True
        kwargs["rollout_config"] = RolloutConfig(
            engine="fast", max_batch=64, prefetch_images=setting.get("prefetch_images", True), **extra
        )
    timer = Timer()
    trainer = grpo_trainer_class(setting["engine"])(
        model=model,
        processing_class=proc,
        reward_funcs=[reward],
        args=cfg,
        train_dataset=ds,
        callbacks=[timer],
        **kwargs,
    )
    gen_times = []

    def timed(name, key, when=None, log=None):
        inner = getattr(trainer, name)

        def wrapper(*a, **k):
            if when is not None and not when():
                return inner(*a, **k)
            sync()
            t = time.perf_counter()
            r = inner(*a, **k)
            sync()
            dt = time.perf_counter() - t
            split_now[key] = split_now.get(key, 0.0) + dt
            if log is not None:
                log.append(dt)
            return r

        setattr(trainer, name, wrapper)

    # per-step split: generation (engine prefill + decode, or TRL's generate), the no-grad log-prob forwards
    # (reference / old policy), the rest of scoring (processing, rewards), policy forward + backward, optimizer
    timed("_generate_single_turn", "generation_s", log=gen_times)
    timed(
        "_get_per_token_logps_and_entropies",
        "nograd_logprob_forward_s",
        when=lambda: not torch.is_grad_enabled(),
    )
    timed("_generate_and_score_completions", "generate_and_score_s")
    timed("training_step", "training_step_s")
    if args.profile_step is not None:
        from torch.profiler import ProfilerActivity, profile

        class Prof(TrainerCallback):
            def on_step_begin(self, a, state, c, **k):
                if state.global_step == args.profile_step:
                    self.p = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                    self.p.__enter__()

            def on_step_end(self, a, state, c, **k):
                if state.global_step == args.profile_step + 1:
                    sync()
                    self.p.__exit__(None, None, None)
                    for sort in ("cuda_time_total", "cpu_time_total"):
                        table = self.p.key_averages().table(
                            sort_by=sort, row_limit=30, max_name_column_width=70
                        )
                        name = f"profile_{args.setting}_{rollouts}_{sort.split('_')[0]}.txt"
                        Path(args.out).with_name(name).write_text(table)

        trainer.add_callback(Prof())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t
    skip = {args.profile_step} if args.profile_step is not None else set()  # the profiled step runs slower
    timed_steps = [t for i, t in enumerate(timer.times) if i >= args.warmup and i not in skip]
    step_s = float(np.mean(timed_steps))
    lengths = [
        h.get("completions/mean_length") for h in trainer.state.log_history if "completions/mean_length" in h
    ]
    out = {
        "setting": args.setting,
        "model": args.model,
        "use_cache": setting.get("use_cache", True),
        "rollouts_per_step": rollouts,
        "micro_batch": micro,
        "grad_accum": accum,
        "gradient_checkpointing": setting["checkpointing"],
        "engine": setting["engine"],
        "prefetch_images": setting.get("prefetch_images", True) if setting["engine"] == "fast" else None,
        "steps_timed": len(timed_steps),
        "warmup_steps": args.warmup,
        "step_s": step_s,
        "step_times_s": timer.times,
        "generation_s": gen_times,
        "rollouts_per_s": rollouts / step_s,
        "peak_mem_GB": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None,
        "mean_completion_len": lengths,
        "train_wall_s": total,
        "device": device_name(),
    }
    steady = [d for i, d in enumerate(splits) if i >= args.warmup and i not in skip]
    split = {
        k: float(np.mean([d.get(k, 0.0) for d in steady])) for k in sorted({k for d in steady for k in d})
    }
    if steady:
        split["policy_forward_backward_s"] = split.get("training_step_s", 0) - split.get(
            "generate_and_score_s", 0
        )
        split["scoring_other_s"] = (
            split.get("generate_and_score_s", 0)
            - split.get("generation_s", 0)
            - split.get("nograd_logprob_forward_s", 0)
        )
        split["step_other_s"] = (
            split["step_s"] - split.get("training_step_s", 0) - split.get("optimizer_s", 0)
        )
    out["split_mean_s"] = split
    out["split_per_step"] = splits
    out["recipe"] = {"name": args.recipe, "lora": args.lora, **recipe}
    prefetcher = getattr(trainer, "image_prefetcher", None)
    if prefetcher is not None:
        out["image_prefetch"] = {"submitted": prefetcher.submitted, "taken": prefetcher.taken}
    if setting["engine"] == "fast" and trainer.rollout_engine is not None:
        rc = trainer.rollout_engine.config
        keys = ("compile", "cuda_graph", "merge_lora", "decode_compile", "compile_autotune")
        keys += ("logprob_batch", "cudnn_attention")
        out["rollout_config"] = {k: getattr(rc, k) for k in keys}
        out["rollout_config"]["decode_compile_used"] = trainer.rollout_engine.decode_compile
        timings = trainer.rollout_engine.last_timings
        out["engine_timings_last"] = timings
        hist = [h for h in trainer.state.log_history if "rollout/decode_s" in h]
        hist = [h for i, h in enumerate(hist) if i >= args.warmup and i not in skip]
        for key in ("prefill_s", "decode_s", "weights_s"):
            vals = [h[f"rollout/{key}"] for h in hist if f"rollout/{key}" in h]
            split[f"engine_{key}"] = float(np.mean(vals)) if vals else None
        if not tiny and timings.get("decode_steps"):
            engine = trainer.rollout_engine
            hf = engine.model
            kv_per_token = (
                2 * hf.config.get_text_config().num_hidden_layers * engine.n_kv * engine.head_dim * 2
            )
            slot = next(iter(engine._slots.values()))
            bw = copy_bandwidth()
            mean_ctx = timings["prompt_len"] + 128  # prompt + half of the 256-token completion
            floor = (decoder_bytes(model) + slot.batch * mean_ctx * kv_per_token) / bw * 1e3
            ms = 1e3 * timings["decode_s"] / timings["decode_steps"]
            out["decode_vs_floor"] = {
                "batch": slot.batch,
                "ms_per_step": ms,
                "floor_ms_weights_plus_kv": floor,
                "ratio_to_floor": ms / floor,
                "copy_bandwidth_TBps": bw / 1e12,
            }
    return out


#: ``all --plan study``: the study's recipe (4 rollouts/step) and 64 rollouts/step against same-run baselines
STUDY_PLAN = [
    ("fast", 4, 8, 60),
    ("trl_default", 4, 2, 80),
    ("fast", 64, 3, 70),
    ("trl_tuned", 64, 2, 140),
]


#: ``all --plan decode``: #18's decode step, whole-step compile (``fast_step``) against the per-layer compile
#: (``fast_layer``) and TRL's defaults in one call, then 64 rollouts/step and the autotuned step
DECODE_PLAN = [
    ("fast_step", 4, 8, 100),
    ("fast_layer", 4, 8, 55),
    ("trl_default", 4, 2, 65),
    ("fast_step", 64, 3, 90),
    ("fast_autotune", 4, 8, 110),
]

#: ``all --plan autotune``: the whole-step compile with and without ``rollout.compile_autotune`` (GEMM autotuning)
AUTOTUNE_PLAN = [
    ("fast_step", 4, 8, 100),
    ("fast_autotune", 4, 8, 240),
    ("fast_autotune", 64, 3, 120),
]

#: ``all --plan smolvlm``: SmolVLM-500M dims, the study's 4 rollouts/step, engine vs TRL with / without the cache
SMOLVLM_PLAN = [
    ("fast", 4, 16, 75),
    ("fast_noprefetch", 4, 16, 75),
    ("trl_default", 4, 2, 90),
    ("trl_nocache", 4, 1, 150),
]


#: ``all --plan default``: engine against plain TRL at 16, 32 and 64 rollouts/step
DEFAULT_PLAN = [
    ("trl_default", 32, 2, 110),
    ("fast", 32, 3, 60),
    ("trl_tuned", 32, 2, 95),
    ("fast", 64, 3, 70),
    ("trl_tuned", 64, 2, 135),
    ("fast", 16, 3, 50),
    ("trl_tuned", 16, 2, 65),
    ("trl_default", 16, 1, 130),
    ("trl_default", 64, 1, 140),
]

#: ``all``'s plans: (setting, rollouts/step, timed steps, rough process seconds on an H100, to fit the time budget)
PLANS = {
    "default": DEFAULT_PLAN,
    "study": STUDY_PLAN,
    "smolvlm": SMOLVLM_PLAN,
    "decode": DECODE_PLAN,
    "autotune": AUTOTUNE_PLAN,
}


def save_model(args) -> dict:
    """Save a Qwen2.5-VL-3B-dims model (random bf16 weights, no LoRA) with the bench's processor to ``--out``: the
    pretrained model of bench/pipeline_grpo_3b.yaml's pipeline run."""
    proc, token_ids = processor_and_token_ids()
    model = build_3b(lora=False, token_ids=token_ids, device="cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return {"path": str(out), "params": sum(p.numel() for p in model.parameters())}


def run_all(args) -> dict:
    plan = PLANS[args.plan]
    if args.only:
        keep = set(args.only.split(","))
        plan = [p for p in plan if f"{p[0]}_{p[1]}" in keep]
    if args.existing and Path(args.existing).is_file():  # add to an earlier run's file (same machine)
        previous = json.loads(Path(args.existing).read_text())
    start = time.perf_counter()
    results = {
        "device": device_name(),
        "torch": torch.__version__,
        "plan": args.plan,
        "model": args.model,
        "recipe": args.recipe,
        "lora": args.lora,
        "runs": {},
    }
    if args.existing and Path(args.existing).is_file():
        results["runs"].update(previous.get("runs", {}))
    try:
        import transformers
        import trl

        results.update(transformers=transformers.__version__, trl=trl.__version__)
    except ImportError:
        pass
    out_path = Path(args.out)
    for setting, rollouts, steps, estimate in plan:
        name = f"{setting}_{rollouts}"
        left = args.budget - (time.perf_counter() - start)
        if left < estimate:
            results["runs"][name] = {"skipped": "time budget"}
            continue
        cmd = [
            sys.executable,
            __file__,
            "grpo",
            "--setting",
            setting,
            "--rollouts",
            str(rollouts),
            "--steps",
            str(steps),
            "--out",
            f"/tmp/{name}.json",
            "--recipe",
            args.recipe,
            "--lora",
            args.lora,
            "--warmup",
            str(args.warmup),
            "--model",
            args.model,
        ]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--micro", str(args.micro)] if args.micro else []
        cmd += (
            ["--profile-step", str(args.profile_step)]
            if args.profile_step is not None and setting == "fast"
            else []
        )
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=left, capture_output=True, text=True)
            if proc.returncode == 0:
                results["runs"][name] = json.loads(Path(f"/tmp/{name}.json").read_text())
            else:
                results["runs"][name] = {"error": proc.stderr[-3000:]}
        except subprocess.TimeoutExpired:
            results["runs"][name] = {"error": "timeout"}
        results["runs"][name]["process_wall_s"] = time.perf_counter() - t
        r = results["runs"][name]
        print(
            f"{name}: {r.get('rollouts_per_s', r.get('error', '')[-400:] if 'error' in r else r)}", flush=True
        )
        results["ratios"] = ratios(results["runs"])
        out_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def ratios(runs: dict) -> dict:
    out = {}
    for n in (4, 16, 32, 64):
        for name in ("fast", "fast_step", "fast_autotune"):
            fast = runs.get(f"{name}_{n}", {}).get("rollouts_per_s")
            for base in ("fast_noprefetch", "fast_layer", "trl_default", "trl_tuned", "trl_nocache"):
                ref = runs.get(f"{base}_{n}", {}).get("rollouts_per_s")
                if fast and ref:
                    out[f"{name}_vs_{base}_{n}"] = fast / ref
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "mode", choices=["micro", "prefill", "tf", "decode", "grpo", "all", "save-model", "gpucheck"]
    )
    ap.add_argument("--plan", choices=sorted(PLANS), default="default", help="for 'all' (PLANS)")
    ap.add_argument("--model", choices=["qwen3b", "smolvlm"], default="qwen3b", help="for 'grpo' and 'all'")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="trl", help="GRPO settings (RECIPES)")
    ap.add_argument("--lora", choices=sorted(LORA_TARGETS), default="qv", help="LoRA targets (LORA_TARGETS)")
    ap.add_argument("--micro", type=int, default=0, help="micro-batch of the fast setting (default: 8)")
    ap.add_argument("--profile-step", type=int, default=None, help="profile this training step (fast runs)")
    ap.add_argument(
        "--logprob-batch",
        type=int,
        default=0,
        help="rollout.logprob_batch of the fast setting (default: 0, TRL's)",
    )
    ap.add_argument(
        "--cudnn-attention", action="store_true", help="rollout.cudnn_attention: true for the fast setting"
    )
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="fast")
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget", type=float, default=540.0)
    ap.add_argument(
        "--only", default="", help="comma-separated run names for 'all', e.g. fast_32,trl_tuned_32"
    )
    ap.add_argument("--out", default="")
    ap.add_argument("--existing", default="", help="for 'all': JSON of an earlier run to extend")
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test of the script)")
    args = ap.parse_args()
    if args.mode == "micro":
        res = micro(args)
    elif args.mode == "prefill":
        res = prefill_study(args)
    elif args.mode == "save-model":
        print(json.dumps(save_model(args)))
        return
    elif args.mode == "decode":
        res = decode_study(args)
    elif args.mode == "tf":
        res = teacher_forced(args)
    elif args.mode == "gpucheck":
        res = gpu_check(args)
    elif args.mode == "grpo":
        res = grpo(args)
    else:
        if args.plan == "smolvlm":
            args.model = "smolvlm"
        suffix = "" if args.plan == "default" else f"_{args.plan}_{args.recipe}_{args.lora}"
        args.out = args.out or f"bench/results/grpo_rollouts{suffix}_{slug(device_name())}.json"
        res = run_all(args)
        print(json.dumps(res.get("ratios", {}), indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    if args.mode != "all":
        print(json.dumps(res, indent=1)[-6000:])


if __name__ == "__main__":
    main()

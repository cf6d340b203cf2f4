"""SmolVLM / Idefics3: greedy decoding with the KV cache gives the tokens of decoding without it (CPU, fp32)."""

import torch

torch.set_num_threads(1)


def _tiny_idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    config = Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": 200,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 112,
            "patch_size": 14,
        },
        image_token_id=199,
        scale_factor=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return Idefics3ForConditionalGeneration(config).eval()


def _inputs(lengths):
    g = torch.Generator().manual_seed(0)
    n_img = (112 // 14) ** 2 // 4  # image tokens per image after the pixel shuffle
    rows = [
        torch.randint(3, 190, (a,), generator=g).tolist()
        + [199] * n_img
        + torch.randint(3, 190, (b,), generator=g).tolist()
        for a, b in lengths
    ]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    pixels = torch.randn(len(rows), 1, 3, 112, 112, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def test_greedy_tokens_with_cache_equal_without():
    model = _tiny_idefics3()
    inp = _inputs([(3, 4), (3, 4), (1, 2)])
    kw = dict(max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    with_cache = model.generate(**inp, use_cache=True, **kw)
    without = model.generate(**inp, use_cache=False, **kw)
    assert with_cache.shape == (3, inp["input_ids"].shape[1] + 24)
    assert torch.equal(with_cache, without)
    # the image matters at every step: other pixels give other completions
    other = dict(inp, pixel_values=torch.randn_like(inp["pixel_values"]) * 3)
    assert not torch.equal(model.generate(**other, use_cache=True, **kw), with_cache)

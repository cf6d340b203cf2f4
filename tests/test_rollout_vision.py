"""The fast inference forward of the Qwen2.5-VL vision tower against transformers' own (CPU, fp32)."""

import torch

from grpo_vqa.rollout.synthetic import build_model, image_prompts
from grpo_vqa.rollout.vision import install_batched_vision_attention, set_fast_vision

torch.set_num_threads(1)


def test_fast_vision_forward_matches_transformers():
    plain = build_model(seed=3)
    fast = build_model(seed=3)
    install_batched_vision_attention(fast)
    g = torch.Generator().manual_seed(0)
    # several grids: windows cut at the image edges, and equal windows
    sizes = [(112, 84), (112, 112), (56, 140), (168, 56)]
    inp = image_prompts(plain.config, [(1, 1)] * len(sizes), sizes, generator=g)
    with torch.no_grad():
        ref = plain.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"]).pooler_output
        for _ in range(2):  # the second call reuses the cached plan
            out = fast.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"]).pooler_output
            for x, y in zip(ref, out, strict=True):
                torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)
    assert fast.model.visual._grpo_vqa_fast["plans"]
    # with gradients needed, transformers' forward runs (and the switch turns the fast path off)
    set_fast_vision(fast, False)
    with torch.no_grad():
        off = fast.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"]).pooler_output
    for x, y in zip(ref, off, strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)
    set_fast_vision(fast, True)
    fast.model.visual.blocks[0].attn.qkv.weight.requires_grad_(True)
    grad = fast.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"]).pooler_output
    assert grad[0].requires_grad
    for x, y in zip(ref, grad, strict=True):
        torch.testing.assert_close(y.detach(), x, atol=1e-5, rtol=1e-4)

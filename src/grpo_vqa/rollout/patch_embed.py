"""Qwen2.5-VL's patch embedding as the matrix product it is.

The vision tower embeds each flattened patch (channels x 2 frames x 14 x 14 pixels) with a ``Conv3d`` whose kernel
equals its stride and its whole input, i.e. one matrix product with the kernel flattened in the same
(channel, frame, row, column) order. PyTorch runs that convolution through oneDNN / cuDNN 3-D kernels that are
slow at this shape (``bench/patch_embed_step.py``: 8x on CPU at the 3B model's dims; 1.10x a whole CPU warm-start
step of the embedded default's tiny model). The product is the same sum in another order (float32: outputs equal
within 1e-5; tests/test_patch_embed.py).

The rollout engine uses it (``grpo_vqa.rollout.vision``), so it lives here. Training and evaluation keep transformers' convolution
(``models.loading.load_model`` does not install it): on the embedded default that last-bit difference alone moved
Qwen's test accuracy after GRPO from 94.0 / 91.5 / 88.25 % to 98.0 / 49.25 / 55.75 % on seeds 1234 / 7 / 42
(README, "What it took"), so taking the speed-up there means re-checking the recipe on three seeds.
"""

from __future__ import annotations

import types

import torch.nn.functional as F
from torch import nn


def matmul_forward(self, hidden_states):
    """``Qwen2_5_VisionPatchEmbed.forward`` as ``F.linear`` over the flattened kernel (input cast as transformers
    casts it: to the kernel's dtype)."""
    weight = self.proj.weight
    x = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
    return F.linear(x, weight.reshape(weight.shape[0], -1), self.proj.bias)


def install_patch_embed_matmul(model: nn.Module) -> int:
    """Run every Qwen2.5-VL patch embedding of ``model`` as a matrix product; return how many were patched.

    Per instance and idempotent; other architectures (Idefics3's 2-D patch convolution) are left alone. The
    weights, their names and what ``save_pretrained`` writes are unchanged."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

    patched = 0
    for module in model.modules():
        if isinstance(module, Qwen2_5_VisionPatchEmbed):
            if not getattr(module, "_grpo_vqa_matmul", False):
                module.forward = types.MethodType(matmul_forward, module)
                module._grpo_vqa_matmul = True
            patched += 1
    return patched

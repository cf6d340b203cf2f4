"""Batched windowed attention for the Qwen2.5-VL vision encoder.

Transformers runs the encoder's windowed attention (and, with SDPA/eager, its full attention) as one attention call
per window per image. ``varlen_attention`` gathers all windows of all images into one padded batch and runs a single
scaled-dot-product attention per layer; ``install_batched_vision_attention`` swaps it into a model's vision blocks.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> torch.Tensor:
    """Non-causal attention within each segment ``cu_seqlens[i]:cu_seqlens[i+1]`` of ``(S, H, D)`` tensors."""
    seq, heads, dim = q.shape
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    lens = lengths.tolist()
    nseg, lmax = len(lens), max(lens)
    if all(n == lmax for n in lens):
        qb, kb, vb = (t.reshape(nseg, lmax, heads, dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qb, kb, vb, scale=scale)
        return out.transpose(1, 2).reshape(seq, heads, dim)
    ar = torch.arange(lmax, device=q.device)
    valid = ar[None, :] < lengths.to(q.device)[:, None]  # (nseg, lmax)
    index = torch.where(valid, cu_seqlens[:-1].to(q.device)[:, None] + ar[None, :], 0)
    qb, kb, vb = (t[index].transpose(1, 2) for t in (q, k, v))  # (nseg, H, lmax, D)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=valid[:, None, None, :], scale=scale)
    return out.transpose(1, 2)[valid]  # back to (S, H, D), segment-major order


def _batched_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq_length = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    out = varlen_attention(q, k, v, cu_seqlens, self.scaling)
    return self.proj(out.reshape(seq_length, -1).contiguous())


def _patch_embed_forward(self, hidden_states):
    # the Conv3d's kernel equals its stride and its input: it is one matrix product (cuDNN's 3-D conv is slow here)
    weight = self.proj.weight
    x = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
    return F.linear(x, weight.reshape(weight.shape[0], -1))


def install_batched_vision_attention(model: nn.Module) -> int:
    """Make every Qwen2.5-VL vision attention of ``model`` batch its windows; return how many were patched.

    Also runs the patch embedding as a matrix product. Models whose vision attention runs flash-attention
    (already variable-length) and other architectures are left alone. The patch is per instance and idempotent.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionPatchEmbed,
        Qwen2_5_VLVisionAttention,
    )

    patched = 0
    for module in model.modules():
        if isinstance(module, Qwen2_5_VisionPatchEmbed) and module.proj.bias is None:
            module.forward = types.MethodType(_patch_embed_forward, module)
        if not isinstance(module, Qwen2_5_VLVisionAttention):
            continue
        if "flash" in str(getattr(module.config, "_attn_implementation", "")):
            continue
        if getattr(module, "_grpo_vqa_batched", False):
            patched += 1
            continue
        module.forward = types.MethodType(_batched_forward, module)
        module._grpo_vqa_batched = True
        patched += 1
    return patched

"""Batched windowed attention and a fast inference forward for the Qwen2.5-VL vision encoder.

Transformers runs the encoder's windowed attention (and, with SDPA/eager, its full attention) as one attention call
per window per image. ``varlen_attention`` gathers all windows of all images into one padded batch and runs a single
scaled-dot-product attention per layer; ``install_batched_vision_attention`` swaps it into a model's vision blocks.

It also replaces the vision tower's forward, where no gradient is needed, by ``_fast_vision_forward``: the window
index, rotary tables and segment boundaries are computed once per set of image grids on the host and cached (no
per-image loops or host syncs per layer), attention runs as variable-length flash attention over the packed windows
(padded SDPA on CPU / fp32), and each block's norm + qkv + rotary and out-projection + norm + MLP run as two
``torch.compile``-d functions shared by all blocks (fused elementwise work; on CUDA only). The arithmetic is that of
transformers (fp32 RMS norm and rotary, then the model dtype).
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F
from torch import nn

from grpo_vqa.rollout.patch_embed import install_patch_embed_matmul


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


def install_batched_vision_attention(model: nn.Module, compile: bool | None = None) -> int:
    """Make every Qwen2.5-VL vision attention of ``model`` batch its windows; return how many were patched.

    Also runs the patch embedding as a matrix product, and gives each vision tower the fast inference forward
    (``compile``: ``torch.compile`` its block functions; ``None``: on CUDA only). Models whose vision attention runs
    flash-attention (already variable-length) keep their attention; other architectures are left alone. The patch
    is per instance and idempotent.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
        Qwen2_5_VLVisionAttention,
    )

    install_patch_embed_matmul(model)
    patched = 0
    for module in model.modules():
        if isinstance(module, Qwen2_5_VisionTransformerPretrainedModel):
            _install_fast_forward(module, compile)
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


# --------------------------------------------------------------------------------------------------------------
# Fast inference forward of the vision tower

logger = logging.getLogger(__name__)

_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu}
_COMPILED: dict = {}
_LAYOUTS: dict = {}


class _Segments:
    """Non-causal attention segments of a packed sequence: flash boundaries and a padded-batch fallback layout."""

    def __init__(self, lengths: list[int], device):
        self.lengths = lengths
        self.max_len = max(lengths)
        self.uniform = all(n == self.max_len for n in lengths)
        cu = torch.tensor([0, *lengths]).cumsum(0)
        self.cu = cu.to(device=device, dtype=torch.int32)
        nseg = len(lengths)
        ar = torch.arange(self.max_len)
        lens = torch.tensor(lengths)
        valid = ar[None, :] < lens[:, None]
        self.index = torch.where(valid, cu[:-1, None] + ar[None, :], 0).to(device)
        self.valid = valid.to(device)
        self.flat = valid.reshape(-1).nonzero().squeeze(1).to(device)  # valid slots, segment-major
        self.nseg = nseg


class _Plan:
    """Everything of one forward that depends on the image grids alone (built once per grid list)."""

    def __init__(self, visual: nn.Module, grids: list[tuple[int, int, int]], device):
        cfg = visual.config
        merge = visual.spatial_merge_size
        unit = merge * merge
        win = cfg.window_size // merge // cfg.patch_size
        pos, windex, wlens, flens = [], [], [], []
        offset = 0
        for grid in grids:
            key = (grid, merge, win)
            if key not in _LAYOUTS:
                _LAYOUTS[key] = _grid_layout(*grid, merge, win)
            p, w, lens = _LAYOUTS[key]
            pos.append(p)
            windex.append(w + offset)
            wlens += [n * unit for n in lens]
            flens += [grid[1] * grid[2]] * grid[0]
            offset += w.numel()
        pos = torch.cat(pos)
        window_index = torch.cat(windex)
        # positions in window order (the order the blocks see), as transformers permutes cos / sin
        pos = pos.view(-1, unit, 2)[window_index].view(-1, 2)
        rot = visual.rotary_pos_emb
        inv_freq = rot.inv_freq.to(device=device, dtype=torch.float)
        freqs = pos.to(device)[..., None].float() * inv_freq  # (N, 2, d/4)
        scaling = float(getattr(rot, "attention_scaling", 1.0))
        self.cos = _recompose(freqs.cos() * scaling)
        self.sin = _recompose(freqs.sin() * scaling)
        self.window_index = window_index.to(device)
        self.reverse = torch.argsort(window_index).to(device)
        self.window = _Segments(wlens, device)
        self.full = _Segments(flens, device)
        self.full_blocks = set(cfg.fullatt_block_indexes)


def _recompose(freq: torch.Tensor) -> torch.Tensor:
    hw = torch.cat([freq[:, 0], freq[:, 1]], dim=-1)
    return torch.cat([hw, hw], dim=-1)


def _grid_layout(t: int, h: int, w: int, merge: int, win: int):
    """(h, w) position of every patch (merge-block order), the window order of merge units, window lengths."""
    hpos, wpos = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    hpos = hpos.reshape(shape).transpose(1, 2).flatten()
    wpos = wpos.reshape(shape).transpose(1, 2).flatten()
    pos = torch.stack([hpos, wpos], dim=-1).repeat(t, 1)
    lh, lw = h // merge, w // merge
    index = torch.arange(t * lh * lw).reshape(t, lh, lw)
    pad_h, pad_w = win - lh % win, win - lw % win
    nh, nw = (lh + pad_h) // win, (lw + pad_w) // win
    padded = F.pad(index, (0, pad_w, 0, pad_h), "constant", -100)
    padded = padded.reshape(t, nh, win, nw, win).permute(0, 1, 3, 2, 4).reshape(t, nh * nw, win, win)
    lens = (padded != -100).sum([2, 3]).reshape(-1)
    flat = padded.reshape(-1)
    return pos, flat[flat != -100], [n for n in lens.tolist() if n > 0]


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _half(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1] // 2
    return torch.cat((-x[..., n:], x[..., :n]), dim=-1)


def _make_pre(eps: float, heads: int):
    def pre(h, norm_w, qkv_w, qkv_b, cos, sin):
        x = _rms(h, norm_w, eps)
        q, k, v = F.linear(x, qkv_w, qkv_b).view(h.shape[0], 3, heads, -1).unbind(1)
        c, s = cos[:, None, :], sin[:, None, :]
        qf, kf = q.float(), k.float()
        q = (qf * c + _half(qf) * s).to(h.dtype)
        k = (kf * c + _half(kf) * s).to(h.dtype)
        return q, k, v.contiguous()

    return pre


def _make_post(eps: float, act):
    def post(h, attn, proj_w, proj_b, norm_w, gate_w, gate_b, up_w, up_b, down_w, down_b):
        h = h + F.linear(attn.reshape(h.shape[0], -1), proj_w, proj_b)
        x = _rms(h, norm_w, eps)
        return h + F.linear(act(F.linear(x, gate_w, gate_b)) * F.linear(x, up_w, up_b), down_w, down_b)

    return post


def _block_fns(eps: float, heads: int, act_name: str, compiled: bool):
    key = (eps, heads, act_name, compiled)
    if key not in _COMPILED:
        pre, post = _make_pre(eps, heads), _make_post(eps, _ACTIVATIONS[act_name])
        if compiled:
            pre = torch.compile(pre, fullgraph=True)
            post = torch.compile(post, fullgraph=True)
        _COMPILED[key] = (pre, post)
    return _COMPILED[key]


def _attend(q, k, v, seg: _Segments, scale: float, flash: bool) -> torch.Tensor:
    """Attention within each segment of packed ``(S, H, D)`` q/k/v, no host sync."""
    if flash:
        return torch.ops.aten._flash_attention_forward(
            q, k, v, seg.cu, seg.cu, seg.max_len, seg.max_len, 0.0, False, False, scale=scale
        )[0]
    seq, heads, dim = q.shape
    if seg.uniform:
        qb, kb, vb = (t.reshape(seg.nseg, seg.max_len, heads, dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qb, kb, vb, scale=scale)
        return out.transpose(1, 2).reshape(seq, heads, dim)
    qb, kb, vb = (t[seg.index].transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=seg.valid[:, None, None, :], scale=scale)
    return out.transpose(1, 2).reshape(-1, heads, dim)[seg.flat]


def _plain_blocks(visual: nn.Module) -> bool:
    for blk in visual.blocks:
        mods = (blk.attn.qkv, blk.attn.proj, blk.mlp.gate_proj, blk.mlp.up_proj, blk.mlp.down_proj)
        if any(type(m) is not nn.Linear for m in mods):  # e.g. LoRA-wrapped: keep transformers' forward
            return False
    return True


def _install_fast_forward(visual: nn.Module, compile: bool | None) -> None:
    state = getattr(visual, "_grpo_vqa_fast", None)
    if state is None:
        state = {"original": visual.forward, "enabled": True, "flash": True, "plans": {}}
        visual._grpo_vqa_fast = state
        visual.forward = types.MethodType(_fast_vision_forward, visual)
    state["compile"] = compile


def set_fast_vision(model: nn.Module, enabled: bool) -> None:
    """Switch the fast vision forward of ``model``'s vision towers on or off (for comparisons)."""
    for module in model.modules():
        state = getattr(module, "_grpo_vqa_fast", None)
        if state is not None:
            state["enabled"] = enabled


def _fast_vision_forward(self, hidden_states, grid_thw, **kwargs):
    state = self._grpo_vqa_fast
    extra = {k: v for k, v in kwargs.items() if k != "return_dict" and v is not None and v is not False}
    needs_grad = torch.is_grad_enabled() and (
        hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())
    )
    act = getattr(self.config, "hidden_act", "silu")
    if (
        not state["enabled"]
        or extra
        or kwargs.get("return_dict") is False
        or needs_grad
        or act not in _ACTIVATIONS
        or not _plain_blocks(self)
    ):
        return state["original"](hidden_states, grid_thw, **kwargs)
    with torch.no_grad():
        return _fast_forward(self, state, hidden_states, grid_thw, act)


def _call(state, which: int, key: tuple, args: tuple):
    """Run the block's pre- (0) or post-attention (1) function, compiled if asked; on a compile failure, eagerly."""
    fn = _block_fns(*key, state["compile"])[which]
    try:
        return fn(*args)
    except Exception as err:
        if not state["compile"]:
            raise
        logger.warning("fast vision forward: torch.compile failed (%s); running eagerly", err)
        state["compile"] = False
        return _block_fns(*key, False)[which](*args)


def _fast_forward(visual, state, hidden_states, grid_thw, act):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    device = visual.patch_embed.proj.weight.device
    grids = tuple(tuple(int(x) for x in g) for g in grid_thw.tolist())
    plans = state["plans"]
    plan = plans.get((grids, device))
    if plan is None:
        if len(plans) >= 8:
            plans.clear()
        plan = plans[(grids, device)] = _Plan(visual, list(grids), device)
    weight = visual.patch_embed.proj.weight
    x = F.linear(
        hidden_states.reshape(-1, weight[0].numel()).to(device=device, dtype=weight.dtype, non_blocking=True),
        weight.reshape(weight.shape[0], -1),
    )
    if visual.patch_embed.proj.bias is not None:
        x = x + visual.patch_embed.proj.bias
    seq, width = x.shape
    unit = visual.spatial_merge_size**2
    x = x.view(seq // unit, unit, width)[plan.window_index].view(seq, width)
    attn0 = visual.blocks[0].attn
    heads, scale = attn0.num_heads, float(attn0.scaling)
    eps = float(visual.blocks[0].norm1.variance_epsilon)
    if state["compile"] is None:
        state["compile"] = x.is_cuda
    flash = (
        state["flash"]
        and x.is_cuda
        and x.dtype in (torch.float16, torch.bfloat16)
        and (width // heads) % 8 == 0
        and width // heads <= 256
    )
    cos, sin = plan.cos, plan.sin
    for i, blk in enumerate(visual.blocks):
        seg = plan.full if i in plan.full_blocks else plan.window
        a, m = blk.attn, blk.mlp
        q, k, v = _call(
            state, 0, (eps, heads, act), (x, blk.norm1.weight, a.qkv.weight, a.qkv.bias, cos, sin)
        )
        if flash:
            try:
                out = _attend(q, k, v, seg, scale, True)
            except RuntimeError as err:
                logger.warning("fast vision forward: flash attention unavailable (%s); using SDPA", err)
                state["flash"] = flash = False
        if not flash:
            out = _attend(q, k, v, seg, scale, False)
        post_args = (x, out, a.proj.weight, a.proj.bias, blk.norm2.weight, m.gate_proj.weight)
        post_args += (
            m.gate_proj.bias,
            m.up_proj.weight,
            m.up_proj.bias,
            m.down_proj.weight,
            m.down_proj.bias,
        )
        x = _call(state, 1, (eps, heads, act), post_args)
    merged = visual.merger(x)[plan.reverse]
    return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=merged)

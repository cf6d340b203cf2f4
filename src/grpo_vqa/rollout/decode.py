"""The functional decode step of the fast rollout engine: pure tensor math, no model objects.

Both language models are Llama-style decoders (RMSNorm, GQA, RoPE, SiLU MLP; Qwen2 adds q/k/v biases); during
decode every token is text, so Qwen's M-RoPE reduces to plain RoPE at one position and one step serves both. A
layer reads the live parameter tensors (LoRA adapters applied inside the step: ``decoder_layer``) or static
copies with the adapters merged in (``decoder_layer_fused``); grouped-query attention keeps one KV head per group
by folding the group's query heads into the query length. ``select_tokens`` picks the next token (greedy or
sampled) without a host sync, so the whole step can be captured in a CUDA graph (``rollout.engine``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SamplingParams", "decoder_layer", "decoder_layer_fused", "linear", "rms_norm", "select_tokens"]


@dataclass(frozen=True)
class SamplingParams:
    """Token selection: greedy (``do_sample=False``) or sampling with temperature / top-k / top-p / min-p."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float | None = None

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


# --------------------------------------------------------------------------------------------------------------
# Functional decoder pieces (shared by the eager and the compiled / graphed step)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def linear(x: torch.Tensor, lin: tuple) -> torch.Tensor:
    weight, bias, loras = lin
    y = F.linear(x, weight, bias)
    for lora_a, lora_b, scale in loras:
        # PEFT: adapter in its own dtype, added in the wider dtype, then cast back
        y = (y + F.linear(F.linear(x.to(lora_a.dtype), lora_a), lora_b) * scale).to(y.dtype)
    return y


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attend(q, k_cache, v_cache, key_mask):
    """Attention of one new query per row over the static cache: q (B, kv, groups, D), k/v (B, kv, L, D), key_mask
    (B, 1, 1, L) bool. Written out (two batched products and an fp32 softmax) rather than through
    ``scaled_dot_product_attention``, whose cuDNN kernel, chosen on Hopper, took 14-18 us per layer here against
    about 1.4 MB of K/V to read (measured on an H100; bench/grpo_rollouts.py decode)."""
    scores = torch.matmul(q, k_cache.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
    probs = torch.softmax(scores.masked_fill(~key_mask, float("-inf")), dim=-1)
    return torch.matmul(probs.to(v_cache.dtype), v_cache)


def decoder_layer(h, cos, sin, k_cache, v_cache, slot, key_mask, weights, dims):
    """One decoder layer for one new token per row; writes its K/V at cache index ``slot``."""
    n_kv, groups, head_dim, eps = dims
    ln1, q_lin, k_lin, v_lin, o_lin, ln2, gate, up, down = weights
    batch = h.shape[0]
    x = rms_norm(h, ln1, eps)
    # query heads h = kv * groups + g: fold each KV head's query heads into the query length
    q = linear(x, q_lin).view(batch, n_kv, groups, head_dim)
    k = linear(x, k_lin).view(batch, n_kv, 1, head_dim)
    v = linear(x, v_lin).view(batch, n_kv, 1, head_dim)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k_cache[:, :, slot] = k  # index_put_: updated in place, also under torch.compile
    v_cache[:, :, slot] = v
    attn = _attend(q, k_cache, v_cache, key_mask)
    h = h + linear(attn.reshape(batch, n_kv * groups * head_dim), o_lin)
    x = rms_norm(h, ln2, eps)
    return h + linear(F.silu(linear(x, gate)) * linear(x, up), down)


def decoder_layer_fused(h, cos, sin, k_cache, v_cache, slot, key_mask, weights, dims):
    """``decoder_layer`` over merged weights: q/k/v in one product, gate/up in one, no adapter products."""
    n_kv, groups, head_dim, eps = dims
    ln1, qkv_w, qkv_b, o_w, ln2, gate_up_w, down_w = weights
    batch = h.shape[0]
    n_q, n_k = n_kv * groups * head_dim, n_kv * head_dim
    x = rms_norm(h, ln1, eps)
    qkv = F.linear(x, qkv_w, qkv_b)
    q = qkv[:, :n_q].reshape(batch, n_kv, groups, head_dim)
    k = qkv[:, n_q : n_q + n_k].reshape(batch, n_kv, 1, head_dim)
    v = qkv[:, n_q + n_k :].reshape(batch, n_kv, 1, head_dim)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k_cache[:, :, slot] = k
    v_cache[:, :, slot] = v
    attn = _attend(q, k_cache, v_cache, key_mask)
    h = h + F.linear(attn.reshape(batch, n_q), o_w)
    x = rms_norm(h, ln2, eps)
    gate_up = F.linear(x, gate_up_w)
    inter = gate_up.shape[-1] // 2
    return h + F.linear(F.silu(gate_up[:, :inter]) * gate_up[:, inter:], down_w)


def select_tokens(logits: torch.Tensor, sp: SamplingParams, suppress: torch.Tensor | None):
    """Choose one token per row from fp32 ``logits`` (B, V); return (tokens, log-prob under logits / T)."""
    scaled = logits if sp.temperature == 1.0 else logits / sp.temperature  # x / 1.0 == x: one pass less
    logp = torch.log_softmax(scaled, dim=-1)
    if suppress is not None:
        scaled = scaled.index_fill(1, suppress, float("-inf"))
    if not sp.do_sample:
        tokens = scaled.argmax(dim=-1)
    else:
        neg_inf = float("-inf")
        if sp.top_k and sp.top_k < scaled.shape[-1]:
            kth = torch.topk(scaled, sp.top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, neg_inf)
        if sp.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, dim=-1)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cum <= 1 - sp.top_p
            drop[:, -1] = False
            scaled = scaled.scatter(1, order, sorted_logits.masked_fill(drop, neg_inf))
        probs = scaled.softmax(dim=-1)
        if sp.min_p:
            probs = probs.masked_fill(probs < probs.amax(dim=-1, keepdim=True) * sp.min_p, 0.0)
        # Gumbel-max in exponential form: argmax p / E, E ~ Exp(1); no host sync, graph-safe RNG
        noise = torch.empty_like(probs).exponential_()
        tokens = (probs / noise).argmax(dim=-1)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)

"""The decode step's weights: the live language-model tensors (``nn.Linear`` or PEFT LoRA layers split into
weight, bias and adapters) or, with ``rollout.merge_lora``, static buffers holding q/k/v and gate/up concatenated
with the adapters merged in, re-merged only where a tensor changed. ``DecodeWeights.packed()`` gives the dict the
step reads; ``DecodeWeights.signature`` tells a captured CUDA graph whether those tensors moved."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DecodeWeights", "MergedLinear", "linear_parts"]


def linear_parts(module: nn.Module) -> tuple:
    """(weight, bias, loras) of an ``nn.Linear`` or a PEFT LoRA ``Linear``; loras = ((A, B, scale), ...)."""
    loras = []
    base = module
    if hasattr(module, "lora_A") and hasattr(module, "get_base_layer"):
        base = module.get_base_layer()
        if not module.disable_adapters and not module.merged:
            for name in module.active_adapters:
                if name not in module.lora_A:
                    continue
                if name in getattr(module, "lora_variant", {}) or module.lora_bias.get(name, False):
                    raise NotImplementedError("the fast rollout engine supports plain LoRA adapters only")
                loras.append(
                    (
                        module.lora_A[name].weight.detach(),
                        module.lora_B[name].weight.detach(),
                        float(module.scaling[name]),
                    )
                )
    if not isinstance(base, nn.Linear):
        raise TypeError(f"expected a Linear layer, got {type(base).__name__}")
    bias = None if base.bias is None else base.bias.detach()
    return base.weight.detach(), bias, tuple(loras)


class MergedLinear:
    """Static buffer of the row-wise concatenation of Linear layers, each with its LoRA adapters merged in.

    ``refresh()`` rewrites only the rows of layers whose base weight or adapter tensors changed (by their version
    counters) since the last refresh, so frozen base weights are copied once and the adapters of a LoRA run are
    re-merged at each ``generate``. The merge is done in fp32 (``W + sum scale * B @ A``) and rounded once.
    """

    def __init__(self, modules: list[nn.Module]):
        parts = [linear_parts(m) for m in modules]
        weight0 = parts[0][0]
        self.modules = modules
        self.rows = []
        lo = 0
        for w, _, _ in parts:
            if w.shape[1] != weight0.shape[1]:
                raise ValueError("merged layers must share their input size")
            self.rows.append(slice(lo, lo + w.shape[0]))
            lo += w.shape[0]
        self.weight = torch.empty(lo, weight0.shape[1], dtype=weight0.dtype, device=weight0.device)
        has_bias = any(b is not None for _, b, _ in parts)
        self.bias = torch.zeros(lo, dtype=weight0.dtype, device=weight0.device) if has_bias else None
        self._versions: list = [None] * len(modules)

    @staticmethod
    def _version(parts) -> tuple:
        w, b, loras = parts
        tensors = [w] + ([] if b is None else [b]) + [t for a, bb, _ in loras for t in (a, bb)]
        return tuple((t.data_ptr(), t._version) for t in tensors) + tuple(sc for _, _, sc in loras)

    @torch.no_grad()
    def refresh(self) -> int:
        """Re-merge the layers that changed; return how many were rewritten."""
        done = 0
        for i, module in enumerate(self.modules):
            parts = linear_parts(module)
            version = self._version(parts)
            if version == self._versions[i]:
                continue
            w, b, loras = parts
            rows = self.rows[i]
            if loras:
                merged = w.to(torch.float32, copy=True)
                for lora_a, lora_b, scale in loras:
                    merged.addmm_(lora_b.float(), lora_a.float(), alpha=scale)
                self.weight[rows].copy_(merged)
            else:
                self.weight[rows].copy_(w)
            if self.bias is not None:
                if b is None:
                    self.bias[rows].zero_()
                else:
                    self.bias[rows].copy_(b)
            self._versions[i] = version
            done += 1
        return done


class DecodeWeights:
    """The weights ``RolloutEngine``'s decode step reads from a transformers model ``model`` and its language model
    ``lm``: per layer (norms, q, k, v, o, gate, up, down), or merged buffers where ``merge_lora``."""

    def __init__(self, model: nn.Module, lm: nn.Module, merge_lora: bool):
        self.model = model
        self.lm = lm
        self.merged = None
        if merge_lora:
            self.merged = self._build_merged()

    def _build_merged(self) -> list | None:
        """Per layer: merged q/k/v, o, gate/up and down buffers; ``None`` (unmerged decode) where a layer has
        a bias outside q/k/v (not a Qwen2 layout)."""
        merged = []
        for layer in self.lm.layers:
            att, mlp = layer.self_attn, layer.mlp
            rest = (att.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if any(linear_parts(m)[1] is not None for m in rest):
                return None
            merged.append(
                (
                    MergedLinear([att.q_proj, att.k_proj, att.v_proj]),
                    MergedLinear([att.o_proj]),
                    MergedLinear([mlp.gate_proj, mlp.up_proj]),
                    MergedLinear([mlp.down_proj]),
                )
            )
        return merged

    def packed(self) -> dict:
        """The tensors of one decode step (merged buffers refreshed first where merging)."""
        if self.merged is not None:
            return self._merged_weights()
        layers = []
        for layer in self.lm.layers:
            att, mlp = layer.self_attn, layer.mlp
            layers.append(
                (
                    layer.input_layernorm.weight.detach(),
                    linear_parts(att.q_proj),
                    linear_parts(att.k_proj),
                    linear_parts(att.v_proj),
                    linear_parts(att.o_proj),
                    layer.post_attention_layernorm.weight.detach(),
                    linear_parts(mlp.gate_proj),
                    linear_parts(mlp.up_proj),
                    linear_parts(mlp.down_proj),
                )
            )
        head = linear_parts(self.model.get_output_embeddings())
        return {
            "embed": self.lm.embed_tokens.weight.detach(),
            "layers": layers,
            "norm": self.lm.norm.weight.detach(),
            "head": head,
            "inv_freq": self.lm.rotary_emb.inv_freq,
            "rope_scale": float(getattr(self.lm.rotary_emb, "attention_scaling", 1.0)),
        }

    def _merged_weights(self):
        layers = []
        rewritten = 0
        for layer, (qkv, o, gate_up, down) in zip(self.lm.layers, self.merged, strict=True):
            for buf in (qkv, o, gate_up, down):
                rewritten += buf.refresh()
            layers.append(
                (
                    layer.input_layernorm.weight.detach(),
                    qkv.weight,
                    qkv.bias,
                    o.weight,
                    layer.post_attention_layernorm.weight.detach(),
                    gate_up.weight,
                    down.weight,
                )
            )
        self.last_merge_rewrites = rewritten
        return {
            "embed": self.lm.embed_tokens.weight.detach(),
            "layers": layers,
            "norm": self.lm.norm.weight.detach(),
            "head": linear_parts(self.model.get_output_embeddings()),
            "inv_freq": self.lm.rotary_emb.inv_freq,
            "rope_scale": float(getattr(self.lm.rotary_emb, "attention_scaling", 1.0)),
        }

    @staticmethod
    def signature(weights) -> tuple:
        """Pointers, shapes and dtypes of every tensor in ``weights`` (and its other values), in order."""
        out = []

        def visit(obj):
            if isinstance(obj, torch.Tensor):
                out.append((obj.data_ptr(), tuple(obj.shape), obj.dtype))
            elif isinstance(obj, (tuple, list)):
                out.append(len(obj))
                for item in obj:
                    visit(item)
            elif isinstance(obj, dict):
                for key in sorted(obj):
                    visit(obj[key])
            else:
                out.append(obj)

        visit(weights)
        return tuple(out)

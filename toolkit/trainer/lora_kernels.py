"""Fused LoRA projections (`lora_mlp_kernel`, `lora_qkv_kernel`, `lora_o_kernel`).

peft computes a LoRA projection as three autograd nodes (base, A, B) plus a scale
and an add, each with its own kernels and saved tensors. Here one autograd Function
does y = x Wᵀ + s·(x Aᵀ) Bᵀ and its hand-written backward:

    dx = dy W + s·(dy B) A      dA = s·(dy B)ᵀ x      dB = s·dyᵀ (x Aᵀ)

saving only x and the rank-r product x Aᵀ. The frozen base weight is read, never
saved; a 4-bit (QLoRA) base is dequantized in the backward only. Gradients equal
peft's (tests/test_optimize.py compares them).
"""

from __future__ import annotations

import types
from typing import Any

import torch

from toolkit.trainer.optimize import LORA_KERNELS


def _dense_weight(base: torch.nn.Module) -> torch.Tensor:
    weight = base.weight
    state = getattr(weight, "quant_state", None)
    if state is not None:  # bitsandbytes Params4bit
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, state)  # type: ignore[arg-type]
    return weight  # type: ignore[return-value]


class LoRAProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, base, a, b, scale) -> Any:
        xa = x @ a.t().to(x.dtype)
        out = base(x) + scale * (xa @ b.t().to(x.dtype))
        ctx.save_for_backward(x, xa)
        ctx.base, ctx.a, ctx.b, ctx.scale = base, a, b, scale
        return out

    @staticmethod
    def backward(ctx, dy) -> Any:
        x, xa = ctx.saved_tensors
        a, b, scale = ctx.a, ctx.b, ctx.scale
        dyb = dy @ b.to(dy.dtype)  # (..., r)
        flat_x, flat_dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        da = (scale * dyb.reshape(-1, dyb.shape[-1]).t() @ flat_x).to(a.dtype)
        db = (scale * flat_dy.t() @ xa.reshape(-1, xa.shape[-1])).to(b.dtype)
        dx = None
        if ctx.needs_input_grad[0]:
            w = _dense_weight(ctx.base).to(dy.dtype)
            dx = dy @ w + scale * (dyb @ a.to(dy.dtype))
        return dx, None, da, db, None


def _fused_forward(self, x, *args, **kwargs) -> Any:
    """Replaces peft's LoRA forward on the chosen projections."""
    if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return type(self).forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    return LoRAProjection.apply(
        x, self.base_layer, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    )


def fuse_lora_projections(model, decisions: dict[str, str]) -> int:
    """Give the projections the enabled kernel flags name the fused forward; return
    how many were changed."""
    from peft.tuners.lora import LoraLayer

    wanted = {
        m
        for key, names in LORA_KERNELS.items()
        if decisions.get(key, "").startswith("on")
        for m in names
    }
    count = 0
    for name, module in model.named_modules():
        # peft's lora.Linear, and its bitsandbytes 4-bit/8-bit twins for QLoRA.
        if isinstance(module, LoraLayer) and name.rsplit(".", 1)[-1] in wanted:
            if any(not isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values()):
                continue  # config rules forbid dropout with kernels; never fuse past it
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[attr-defined]
            count += 1
    return count

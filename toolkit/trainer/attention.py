"""Packed rows without a dense mask: the attention transformers calls "toolkit_varlen".

A packed row carries position ids that restart at 0 for every sequence (see packing.py).
Here those restarts become cumulative sequence lengths, and each sequence attends causally
to itself alone through PyTorch's variable-length flash kernel
(`torch.nn.attention.varlen.varlen_attn`: CUDA from sm80, AOTriton on ROCm). The name is
registered with transformers' attention functions and, for its masks, with the flash
kernels' mask function, which passes padding through and builds no (L, L) mask.

Where that kernel does not run (the CPU), the same contract is computed sequence by
sequence with sdpa; the tests compare it with sdpa over a block-diagonal mask.
compat.attention decides when a run uses it.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from toolkit.compat import VARLEN
from toolkit.errors import UsageError


def register() -> None:
    """Make "toolkit_varlen" an attn_implementation transformers accepts (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, flash_attention_mask)


def boundaries(position_ids: Any) -> tuple[Any, int]:
    """cu_seqlens (int32, starts of each sequence and the total) and the longest sequence,
    for the batch read as one row: every position 0 starts a sequence (a row's padding is
    a sequence of its own, and each row starts at 0)."""
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        raise ValueError("toolkit_varlen: position ids must start every row at 0")
    total = torch.tensor([flat.numel()], device=flat.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    position_ids: Any = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """query (B, Hq, L, D), key and value (B, Hkv, L, D) → (B, L, Hq, D), as transformers'
    attention functions return. Right padding only: a 2-D mask is all the mask function
    passes, and with causal attention no real token sees the padding after it."""
    import torch

    if dropout or sliding_window is not None:
        what = "attention dropout" if dropout else "sliding-window attention"
        raise UsageError(
            f"this model uses {what}, which packed rows' varlen attention does not run; "
            "set sample_packing: false, or attn_implementation: eager (a dense mask)"
        )
    if attention_mask is not None and attention_mask.dim() == 2 and not attention_mask[:, 0].all():
        raise ValueError("toolkit_varlen: left-padded batches are not supported")
    batch, heads, length, dim = query.shape
    if key.shape[2] != length:  # decoding with a KV cache: not a packed training batch
        return _with_cache(query, key, value, attention_mask, scaling), None
    if position_ids is None:
        position_ids = torch.arange(length, device=query.device)
    cu, longest = boundaries(position_ids.expand(batch, length))
    # (B, H, L, D) → (B·L, H, D): the batch read as one row of tokens.
    q, k, v = (
        t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value)
    )
    out: Any
    if query.device.type == "cuda":
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(
            q, k, v, cu, cu, longest, longest, scale=scaling, window_size=(-1, 0), enable_gqa=True
        )
    else:
        out = _per_sequence(q, k, v, cu.tolist(), scaling)
    return out.reshape(batch, length, heads, dim), None


def _per_sequence(q: Any, k: Any, v: Any, cu: list[int], scaling: float | None) -> Any:
    """The kernel's contract with sdpa, one sequence at a time (for the CPU)."""
    import torch
    import torch.nn.functional as F

    parts = []
    for start, end in pairwise(cu):
        # (T, H, D) → (1, H, T, D)
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scaling, enable_gqa=qs.shape[1] != ks.shape[1]
        )
        parts.append(out.squeeze(0).transpose(0, 1))
    return torch.cat(parts)


def _with_cache(query: Any, key: Any, value: Any, mask2d: Any, scaling: float | None) -> Any:
    """Queries that are the last of the keys (generation): causal over the offset, the
    padding of a 2-D mask hidden."""
    import torch
    import torch.nn.functional as F

    q_len, k_len = query.shape[2], key.shape[2]
    rows = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
    allowed = torch.arange(k_len, device=query.device)[None, :] <= rows
    if mask2d is not None and mask2d.dim() == 2:
        allowed = allowed[None, None] & mask2d[:, None, None, -k_len:].bool()
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=allowed,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous()

"""Attention for decoding steps on a CPU in half precision.

PyTorch's scaled-dot-product attention on a CPU is slow in bf16 for a step that feeds one token a row:
its flash kernel is built for blocks of queries. With SmolLM2-135M, 8 rows and a 1,000-token cache it
takes 4.2 ms a layer, about 80% of the step; two matrix products in float32 take 0.7 ms
(``benchmarks/generation.py --sections attention``). :func:`decode_attention` computes a step with at
most :data:`DECODE_QUERIES` query tokens that way: the keys' heads are shared by their groups of
query heads without copying them (grouped-query attention), scores and weights are float32. Every
other call (a prompt's prefill, float32 models, GPUs, attention with extras such as soft-capping) goes
to transformers' SDPA attention unchanged.

``LocalLLM(attention="auto")`` uses it on a CPU in bf16 or fp16; ``attention="sdpa"`` turns it off.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["DECODE_ATTENTION", "DECODE_QUERIES", "decode_attention", "register_decode_attention"]

DECODE_ATTENTION = "ragkit_decode"
"""The name ``decode_attention`` is registered under, for ``attn_implementation``."""

DECODE_QUERIES = 8
"""The most query tokens a row for which :func:`decode_attention` computes itself (one for a plain
decoding step; a few when speculative decoding checks drafted tokens)."""

_EXTRAS = ("softcap", "position_bias", "s_aux", "cache", "sinks")
_LOCK = threading.Lock()


def decode_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention interface: ``query`` is (batch, heads, queries, dim), ``key`` and
    ``value`` (batch, key heads, keys, dim); returns (batch, queries, heads, dim) and no weights."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, n, dim = query.shape
    plain = all(kwargs.get(k) is None for k in _EXTRAS)
    if (
        not plain
        or dropout
        or n > DECODE_QUERIES
        or query.device.type != "cpu"
        or query.dtype == torch.float32
        or (attention_mask is None and n > 1)  # a causal mask the caller left to SDPA
        or heads % key.shape[1]
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    kv_heads, keys = key.shape[1], key.shape[2]
    group = heads // kv_heads  # query heads j*group .. j*group+group-1 read key head j (as repeat_kv lays them out)
    scale = scaling if scaling is not None else dim**-0.5
    q = query.float().reshape(b, kv_heads, group * n, dim) * scale
    scores = torch.matmul(q, key.float().transpose(-1, -2)).view(b, kv_heads, group, n, keys)
    if attention_mask is not None:
        mask = attention_mask[..., -keys:]
        # (batch or 1, 1 or heads, queries, keys) -> broadcastable over (batch, key heads, group, queries, keys)
        mask = mask[:, :, None] if mask.shape[1] == 1 else mask.reshape(mask.shape[0], kv_heads, group, n, keys)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        else:
            scores = scores + mask.float()
    weights = torch.softmax(scores, dim=-1).view(b, kv_heads, group * n, keys)
    out = torch.matmul(weights, value.float()).view(b, heads, n, value.shape[-1])
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def register_decode_attention() -> str:
    """Register :func:`decode_attention` (and SDPA's masks for it) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    with _LOCK:
        AttentionInterface.register(DECODE_ATTENTION, decode_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, sdpa_mask)
    return DECODE_ATTENTION

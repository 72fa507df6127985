"""Attention for one-token decoding steps on a CPU in half precision.

For a step that feeds one token a row, transformers' SDPA attention takes one of two paths in models
with grouped-query attention (several query heads reading each key head, as SmolLM2's 9 and 3):

* with an attention mask (a batch with padding), it folds each key head's query heads into a block of
  queries and calls PyTorch's kernel on that (``pack_gqa``);
* without one (one row, or rows of equal length), it passes ``enable_gqa`` to PyTorch's kernel, which on
  a CPU in bf16 is about 7 times slower: 5.0 against 0.7 ms a layer for 8 rows of a 1,100-token cache.

:func:`decode_attention` takes the first path in both cases, so a lone query (a user's question, the
last row of a batch) decodes as fast a step as a padded batch does. The result is the same attention
that transformers computes for a padded batch. Everything else (prefill, several query tokens a row,
float32, GPUs, attention with extras such as soft-capping) goes to transformers' SDPA attention
unchanged. ``LocalLLM(attention="auto")`` uses it on a CPU in bf16 or fp16; ``attention="sdpa"`` turns it
off. Measured by ``python benchmarks/decode_step.py``.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["DECODE_ATTENTION", "decode_attention", "register_decode_attention"]

DECODE_ATTENTION = "ragkit_decode"
"""The name :func:`decode_attention` is registered under, for ``attn_implementation``."""

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
    kv_heads = key.shape[1]
    if (
        n != 1
        or heads == kv_heads
        or heads % kv_heads
        or dropout
        or query.device.type != "cpu"
        or query.dtype == torch.float32
        or any(kwargs.get(k) is not None for k in _EXTRAS)
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    group = heads // kv_heads  # query heads j*group .. j*group+group-1 read key head j (as repeat_kv lays them out)
    mask = attention_mask
    if mask is not None and mask.shape[1] != 1:  # one mask a query head: grouped as the queries are
        mask = mask.reshape(mask.shape[0], kv_heads, group, mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(query.reshape(b, kv_heads, group, dim), key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def register_decode_attention() -> str:
    """Register :func:`decode_attention` (and SDPA's masks for it) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    with _LOCK:
        AttentionInterface.register(DECODE_ATTENTION, decode_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, sdpa_mask)
    return DECODE_ATTENTION

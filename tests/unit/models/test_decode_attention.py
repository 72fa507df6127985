"""ragkit's decoding attention against attention computed plainly in float64, and its hand-over to
transformers' SDPA attention for everything it does not compute itself."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from ragkit.models.attention import DECODE_QUERIES, decode_attention  # noqa: E402

HEADS, KV_HEADS, DIM, KEYS = 9, 3, 64, 40
MODULE = SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True)


def _inputs(batch: int, queries: int, dtype: object = torch.bfloat16, seed: int = 0) -> tuple[object, object, object]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, HEADS, queries, DIM, generator=g).to(dtype)
    k = torch.randn(batch, KV_HEADS, KEYS, DIM, generator=g).to(dtype)
    v = torch.randn(batch, KV_HEADS, KEYS, DIM, generator=g).to(dtype)
    return q, k, v


def _mask(batch: int, queries: int, padding: list[int]) -> object:
    """Bool (batch, 1, queries, keys): each row's left padding hidden, and the queries causal over the last keys."""
    mask = torch.ones(batch, 1, queries, KEYS, dtype=torch.bool)
    for row, pad in enumerate(padding):
        mask[row, :, :, :pad] = False
    return mask & torch.ones(queries, KEYS, dtype=torch.bool).tril(KEYS - queries)


def _reference(q: object, k: object, v: object, mask: object | None) -> object:
    """(batch, queries, heads, dim) in float64, each query head reading its group's key head."""
    group = HEADS // KV_HEADS
    k64 = k.double().repeat_interleave(group, dim=1)
    v64 = v.double().repeat_interleave(group, dim=1)
    scores = q.double() @ k64.transpose(-1, -2) / DIM**0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v64).transpose(1, 2)


@pytest.mark.parametrize("queries", [1, 3])
def test_a_decoding_step_matches_plain_attention_with_padding_and_grouped_heads(queries: int) -> None:
    q, k, v = _inputs(4, queries)
    mask = _mask(4, queries, [0, 5, 12, KEYS - 3])  # the last row: its first query sees one key
    out, weights = decode_attention(MODULE, q, k, v, mask)
    ref = _reference(q, k, v, mask)
    assert weights is None and out.dtype == torch.bfloat16 and out.shape == (4, queries, HEADS, DIM)
    # bf16 output: about 3 significant digits
    assert torch.allclose(out.double(), ref, atol=2e-2, rtol=1e-2)
    # a wrong mask or head grouping is far off: the check can fail
    unmasked = _reference(q, k, v, None)
    assert not torch.allclose(out.double(), unmasked, atol=2e-2, rtol=1e-2)


def test_an_additive_mask_and_no_mask_give_what_the_equivalent_bool_mask_gives() -> None:
    q, k, v = _inputs(2, 1, seed=1)
    mask = _mask(2, 1, [0, 7])
    additive = torch.zeros(mask.shape, dtype=torch.bfloat16).masked_fill(~mask, torch.finfo(torch.bfloat16).min)
    by_bool, _ = decode_attention(MODULE, q, k, v, mask)
    by_addition, _ = decode_attention(MODULE, q, k, v, additive)
    assert torch.equal(by_bool, by_addition)
    none, _ = decode_attention(MODULE, q, k, v, None)
    assert torch.equal(none, decode_attention(MODULE, q, k, v, torch.ones_like(mask))[0])


@pytest.mark.parametrize(
    ("queries", "dtype"),
    [(DECODE_QUERIES + 1, torch.bfloat16), (1, torch.float32)],
    ids=["a prefill", "float32"],
)
def test_what_it_does_not_compute_goes_to_sdpa_unchanged(queries: int, dtype: object) -> None:
    q, k, v = _inputs(2, queries, dtype=dtype, seed=2)
    mask = _mask(2, queries, [0, 3])
    assert torch.equal(decode_attention(MODULE, q, k, v, mask)[0], sdpa_attention_forward(MODULE, q, k, v, mask)[0])

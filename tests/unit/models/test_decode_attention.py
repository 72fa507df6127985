"""ragkit's decoding attention against attention computed plainly in float64, and its hand-over to
transformers' SDPA attention for everything it does not compute itself."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from ragkit.models.attention import decode_attention  # noqa: E402

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


@pytest.mark.parametrize("padded", [False, True], ids=["no mask", "left padding"])
def test_a_one_token_step_matches_plain_attention_with_grouped_heads(padded: bool) -> None:
    q, k, v = _inputs(4, 1)
    mask = _mask(4, 1, [0, 5, 12, KEYS - 1]) if padded else None  # the last row sees one key
    out, weights = decode_attention(MODULE, q, k, v, mask)
    ref = _reference(q, k, v, mask)
    assert weights is None and out.dtype == torch.bfloat16 and out.shape == (4, 1, HEADS, DIM)
    assert torch.allclose(out.double(), ref, atol=2e-2, rtol=1e-2)  # bf16: about 3 significant digits
    # the check can fail: every query head reading key head 0 is far off
    wrong = _reference(q, k[:, :1].expand_as(k), v[:, :1].expand_as(v), mask)
    assert not torch.allclose(out.double(), wrong, atol=2e-2, rtol=1e-2)


def test_a_padded_step_is_what_transformers_computes() -> None:
    q, k, v = _inputs(3, 1, seed=1)
    mask = _mask(3, 1, [0, 7, 20])
    assert torch.equal(decode_attention(MODULE, q, k, v, mask)[0], sdpa_attention_forward(MODULE, q, k, v, mask)[0])


@pytest.mark.parametrize(("queries", "dtype"), [(3, torch.bfloat16), (1, torch.float32)], ids=["several queries", "float32"])
def test_what_it_does_not_compute_goes_to_sdpa_unchanged(queries: int, dtype: object) -> None:
    q, k, v = _inputs(2, queries, dtype=dtype, seed=2)
    for mask in (_mask(2, queries, [0, 3]), None):
        if mask is None and queries > 1:
            continue  # SDPA's causal case, not a decoding step
        assert torch.equal(decode_attention(MODULE, q, k, v, mask)[0], sdpa_attention_forward(MODULE, q, k, v, mask)[0])

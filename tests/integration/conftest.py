"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from ragkit.models.llm import LocalLLM


@pytest.fixture(scope="module")
def float32_llm() -> LocalLLM:
    """The bundled model in float32, where greedy decoding is bit-stable (bf16 can round a near-tie
    either way), on one torch thread (tests run two workers on two cores), without the prefix cache."""
    import torch

    torch.set_num_threads(1)
    model = LocalLLM(dtype="float32", prefix_cache=False)
    model.warm_up()
    return model

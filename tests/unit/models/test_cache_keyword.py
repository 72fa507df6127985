"""The key/value cache's keyword: transformers 5.24 renamed ``past_key_values`` to ``cache``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ragkit.models.llm import cache_keyword, returned_cache


class _Renamed:
    def forward(self, input_ids: Any = None, cache: Any = None, use_cache: bool = False) -> None: ...


class _Old:
    def forward(self, input_ids: Any = None, past_key_values: Any = None, use_cache: bool = False) -> None: ...


class _Wrapped:
    """peft's wrapper: its own forward takes anything; the base model's names the cache."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def forward(self, *args: Any, **kwargs: Any) -> None: ...

    def get_base_model(self) -> Any:
        return self.base


def test_the_keyword_is_the_one_the_forward_pass_takes() -> None:
    assert cache_keyword(_Renamed()) == "cache"
    assert cache_keyword(_Old()) == "past_key_values"
    assert cache_keyword(_Wrapped(_Renamed())) == "cache"
    assert cache_keyword(_Wrapped(_Old())) == "past_key_values"


def test_the_returned_cache_is_found_under_either_name() -> None:
    cache = object()
    assert returned_cache(SimpleNamespace(cache=cache, logits=None)) is cache
    assert returned_cache(SimpleNamespace(past_key_values=cache, logits=None)) is cache
    assert returned_cache(SimpleNamespace(logits=None)) is None

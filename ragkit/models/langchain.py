"""LangChain chat models as ragkit LLMs: ``langchain_chat_model`` (needs only ``langchain-core``).

Any LangChain ``BaseChatModel`` (a hosted API's client, a local server's, a fake) can serve a ragkit
stage that takes an LLM. Give the object itself in Python, or in a pipeline file an importable
factory ``"package.module:function"`` (called with ``kwargs``) that returns one::

    resources:
      llm:
        type: langchain_chat_model
        factory: my_project.models:make_chat_model     # returns a BaseChatModel
        kwargs: {temperature: 0}

A factory is code the pipeline file names: load pipeline files that use one only from sources you
trust, as you would a Python plug-in. ragkit still reads YAML safely and builds only registered types.

Token counts come from the model's ``usage_metadata`` when it reports them, else from the model's
own ``get_num_tokens`` when it overrides LangChain's default (which downloads a GPT-2 tokenizer),
else from a word-and-punctuation estimate. ``max_new_tokens`` and ``temperature`` are the chat
model's own settings (set them in its constructor); ``stop`` is passed on.

Example:
    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> from ragkit.models.langchain import LangChainChatModel
    >>> llm = LangChainChatModel(model=FakeListChatModel(responses=["Paris."]))
    >>> llm.generate("Capital of France?").text
    'Paris.'
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ragkit.core.component import register_resource
from ragkit.core.metrics import GenerationStats, emit_token, is_streaming
from ragkit.errors import ConfigError, MissingDependencyError
from ragkit.models.base import LLM, ChatMessage, Generation, record

if TYPE_CHECKING:
    from ragkit.query.constrain import TermConstraint

__all__ = ["LangChainChatModel", "load_factory", "require_langchain"]

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def require_langchain(purpose: str) -> None:
    """Raise :class:`MissingDependencyError` with the install line when langchain-core is missing."""
    try:
        import langchain_core  # noqa: F401
    except ImportError:
        raise MissingDependencyError("langchain-core", "langchain", purpose) from None


def check_factory(factory: str | None) -> None:
    """Check the ``module:attribute`` form without importing anything (``ragkit validate`` stays instant)."""
    if factory is not None and not _FACTORY.fullmatch(factory):
        raise ValueError(f"factory {factory!r} is not of the form 'package.module:function' (fix 'factory')")


def load_factory(factory: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Import ``package.module:function`` and call it with ``kwargs``."""
    module, _, attr = factory.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"factory {factory!r}: cannot import {module} ({e}); install it or fix the module path") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"factory {factory!r}: {module} has no attribute {attr!r} (fix the name after ':')")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"factory {factory!r} is not callable (name a function or class that returns the object)")
    return obj(**(kwargs or {}))


def _estimate_tokens(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


@register_resource("langchain_chat_model")
class LangChainChatModel(LLM):
    """A LangChain chat model used as a ragkit LLM.

    Args:
        model: the chat model object (Python only).
        factory: ``"package.module:function"`` returning the chat model (for pipeline files).
        kwargs: keyword arguments for ``factory``.
        context_window: the model's context in tokens (prompt builders fit their prompts to it).

    Example:
        >>> LangChainChatModel(factory="my_models:make_chat").factory
        'my_models:make_chat'
    """

    def __init__(self, model: Any = None, factory: str | None = None, kwargs: dict[str, Any] | None = None, context_window: int = 8192) -> None:
        if (model is None) == (factory is None):
            raise ValueError("give exactly one of 'model' (a chat model object) or 'factory' ('package.module:function')")
        if isinstance(model, str):
            raise ValueError("'model' takes a chat model object; in a pipeline file name a 'factory' instead")
        check_factory(factory)
        if context_window < 16:
            raise ValueError("context_window must be at least 16 tokens")
        self.model = model
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.context_window = context_window
        self._chat: Any = model

    def setup(self) -> None:
        require_langchain("the langchain_chat_model resource")
        from langchain_core.language_models import BaseChatModel

        chat = self.model if self.model is not None else load_factory(self.factory or "", self.kwargs)
        if not isinstance(chat, BaseChatModel):
            raise ConfigError(f"langchain_chat_model: {type(chat).__name__} is not a LangChain BaseChatModel (give a chat model)")
        self._chat = chat

    @property
    def chat_model(self) -> Any:
        """The LangChain chat model."""
        self.warm_up()
        return self._chat

    def render(self, messages: Sequence[ChatMessage]) -> str:
        return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"

    def count_tokens(self, text: str) -> int:
        self.warm_up()
        from langchain_core.language_models import BaseLanguageModel

        cls = type(self._chat)
        if cls.get_num_tokens is not BaseLanguageModel.get_num_tokens or cls.get_token_ids is not BaseLanguageModel.get_token_ids:
            return int(self._chat.get_num_tokens(text))
        return _estimate_tokens(text)

    def _messages(self, prompt: str | Sequence[ChatMessage]) -> list[Any]:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        if isinstance(prompt, str):
            return [HumanMessage(content=prompt)]
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        return [kinds[m.role](content=m.content) for m in prompt]

    def generate(
        self,
        prompt: str | Sequence[ChatMessage],
        *,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        num_return_sequences: int = 1,
        stream: bool = False,
        constraint: TermConstraint | None = None,
    ) -> Generation:
        self.warm_up()
        messages = self._messages(prompt)
        kw: dict[str, Any] = {"stop": list(stop)} if stop else {}
        start = time.perf_counter()
        texts: list[str] = []
        first: float | None = None
        n_in = n_out = 0
        for _ in range(num_return_sequences):
            usage: dict[str, int] = {}
            if stream and is_streaming():
                pieces: list[str] = []
                for chunk in self._chat.stream(messages, **kw):
                    piece = chunk.content if isinstance(chunk.content, str) else str(chunk.content)
                    if piece:
                        if first is None:
                            first = time.perf_counter() - start
                        emit_token(piece)
                        pieces.append(piece)
                    if getattr(chunk, "usage_metadata", None):
                        usage = dict(chunk.usage_metadata)
                text = "".join(pieces)
            else:
                msg = self._chat.invoke(messages, **kw)
                text = msg.content if isinstance(msg.content, str) else str(msg.content)
                usage = dict(getattr(msg, "usage_metadata", None) or {})
                if first is None:
                    first = time.perf_counter() - start
            for s in stop:  # not every chat model honours stop sequences
                cut = text.find(s)
                if cut >= 0:
                    text = text[:cut]
            texts.append(text)
            n_in += int(usage.get("input_tokens") or self.count_tokens("\n".join(str(m.content) for m in messages)))
            n_out += int(usage.get("output_tokens") or self.count_tokens(text))
        stats = GenerationStats(tokens_in=n_in, tokens_out=n_out, ttft=first, seconds=time.perf_counter() - start)
        record(stats)
        return Generation(texts=tuple(texts), stats=stats)

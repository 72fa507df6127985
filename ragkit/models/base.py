"""Model interfaces shared by stages: a chat LLM and a text embedder.

Stages depend on these interfaces, never on a backend, so a pipeline can swap the bundled local model
for another folder, a GGUF file or (in tests) :mod:`ragkit.testing`'s scripted fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import Resource
from ragkit.core.metrics import GenerationStats

if TYPE_CHECKING:
    from ragkit.query.constrain import TermConstraint

__all__ = ["ChatMessage", "Generation", "LLM", "Embedder"]


class ChatMessage(BaseModel):
    """One message of a chat prompt."""

    model_config = ConfigDict(frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str


class Generation(BaseModel):
    """What one call to :meth:`LLM.generate` produced."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    texts: tuple[str, ...]
    """One text per returned sequence (several with sampling or beams)."""
    scores: tuple[float, ...] = ()
    """Mean log-probability per generated token of each sequence, when the backend computes it."""
    stats: Any = None
    """The :class:`~ragkit.core.metrics.GenerationStats` of the call."""

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


class LLM(Resource):
    """A language model that continues chat prompts or raw text."""

    context_window: int = 2048
    constrains_decoding: bool = False
    """True when :meth:`generate` applies a ``constraint`` (a local model's logits processor)."""

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
        """Continue ``prompt`` (a raw string, or chat messages formatted by the model's template).

        With ``stream=True`` each new piece of text is passed to :func:`ragkit.emit_token` as it
        is produced (a model that produces it in another thread, as a batch does, calls the listener
        :func:`ragkit.core.metrics.current_listener` returned in the caller's thread instead). Token
        counts and TTFT/TPOT go to the current stage's trace.

        ``constraint`` (a :class:`~ragkit.query.constrain.TermConstraint`) limits the schema names a
        query may spell; models that decode elsewhere (remote APIs) cannot apply it and ignore it,
        which ``constrains_decoding`` says.
        """
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes with this model's tokenizer."""
        raise NotImplementedError

    def score(self, prompts: Sequence[str | Sequence[ChatMessage]], continuation: str) -> list[float]:
        """For each prompt, the model's mean log-probability per token of ``continuation`` as the
        prompt's reply (a chat prompt gets the model's template, ending where the reply starts).

        Used to rank candidates by how well each one explains a text (``selection: review`` in the
        query generators). Models that cannot score (remote APIs) raise NotImplementedError.
        """
        raise NotImplementedError

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """The exact text the model sees for ``messages`` (its chat template applied)."""
        raise NotImplementedError


class Embedder(Resource):
    """Turns texts into unit-length vectors (cosine similarity = inner product)."""

    dimension: int = 0

    def embed(self, texts: Sequence[str]) -> Any:
        """A float32 numpy array of shape ``(len(texts), dimension)``, rows L2-normalised."""
        raise NotImplementedError


def record(stats: GenerationStats) -> None:
    """Add ``stats`` to the current stage's trace, if a pipeline is running."""
    from ragkit.core.metrics import current_recorder

    rec = current_recorder()
    if rec is not None:
        rec.record_generation(stats)

"""Routing between model sizes: try a small model first, escalate to a larger one when its reply fails.

``routed_llm`` is an :class:`~ragkit.models.base.LLM` resource, so any stage that takes an LLM (query
generation, answer generation) can use it unchanged. Each call goes to ``small``; the reply is
escalated to ``large`` when

* its **confidence** (the mean log-probability per generated token, when the backend reports it) is
  below ``min_score``, or
* it fails the **check**: ``nonempty`` (blank reply), ``sparql`` (the query in it does not parse;
  undeclared prefixes are tolerated, the generator adds those), ``cypher`` (no read-only query with
  a RETURN clause in it).

Each call is priced with the model's :class:`~ragkit.core.cost.Price` and recorded in the stage's
trace line: ``extra["cost"]`` (per model: calls, tokens, seconds, cost) and ``extra["routes"]``
(``small``, or ``large`` with the reason). :func:`ragkit.core.cost.trace_cost` sums a run.

When the caller streams, the small model's reply is held back until it is accepted (it is then
emitted at once), so a listener never sees text that is later replaced by the large model's.

Example:
    >>> from ragkit.models.router import RoutedLLM
    >>> from ragkit.testing import ScriptedLLM
    >>> llm = RoutedLLM(small=ScriptedLLM(responses=[""]), large=ScriptedLLM(responses=["Paris."]), check="nonempty")
    >>> llm.generate("Capital of France?").text
    'Paris.'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ragkit.core.component import register_resource
from ragkit.core.cost import Price, record_cost
from ragkit.core.metrics import current_recorder, emit_token
from ragkit.models.base import LLM, ChatMessage, Generation

if TYPE_CHECKING:
    from ragkit.query.constrain import TermConstraint

logger = logging.getLogger(__name__)

__all__ = ["RoutedLLM", "Validation"]

Validation = Literal["none", "nonempty", "sparql", "cypher"]


class _AnyPrefix(dict):  # type: ignore[type-arg]
    """Declares every prefix a query uses, so a parse check does not fail on a missing PREFIX line."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return f"urn:ragkit:prefix:{key}:"


@register_resource("routed_llm")
class RoutedLLM(LLM):
    """A small model first, a large one when the small one's reply is unsure or invalid.

    Args:
        small: the model tried first.
        large: the model a call escalates to.
        min_score: escalate when the small reply's mean log-probability per token is below this
            (e.g. -0.8); unset ignores confidence.
        check: escalate when the small reply fails this check: ``none``, ``nonempty``,
            ``sparql`` or ``cypher``.
        small_price: what the small model costs (per million tokens and/or per hour).
        large_price: what the large model costs.

    Example:
        >>> from ragkit.testing import ScriptedLLM
        >>> r = RoutedLLM(small=ScriptedLLM(), large=ScriptedLLM(), min_score=-0.5)
        >>> (r.check, r.small_price.input_per_million)
        ('nonempty', 0.0)
    """

    def __init__(
        self,
        small: LLM,
        large: LLM,
        min_score: float | None = None,
        check: Validation = "nonempty",
        small_price: Price = Price(),
        large_price: Price = Price(),
    ) -> None:
        if check not in ("none", "nonempty", "sparql", "cypher"):
            raise ValueError(f"check must be none, nonempty, sparql or cypher, not {check!r}")
        if min_score is not None and min_score > 0:
            raise ValueError("min_score is a mean log-probability: 0 or below (e.g. -0.8)")
        self.small = small
        self.large = large
        self.constrains_decoding = small.constrains_decoding and large.constrains_decoding
        self.min_score = min_score
        self.check = check
        self.small_price = small_price if isinstance(small_price, Price) else Price.model_validate(small_price)
        self.large_price = large_price if isinstance(large_price, Price) else Price.model_validate(large_price)

    def setup(self) -> None:
        self.context_window = min(self.small.context_window, self.large.context_window)

    def render(self, messages: Sequence[ChatMessage]) -> str:
        return self.small.render(messages)

    def count_tokens(self, text: str) -> int:
        return self.small.count_tokens(text)

    def escalation_reason(self, gen: Generation) -> str | None:
        """Why ``gen`` (the small model's reply) should go to the large model, or None to keep it."""
        text = gen.text
        if self.check != "none" and not text.strip():
            return "empty reply"
        if self.check == "sparql":
            from ragkit.query.sparql import add_missing_prefixes, extract_query, parse_error

            err = parse_error(add_missing_prefixes(extract_query(text), _AnyPrefix()))
            if err is not None:
                return f"invalid SPARQL: {err.splitlines()[0][:120]}"
        elif self.check == "cypher":
            from ragkit.errors import QueryError
            from ragkit.query.cypher import extract_cypher
            from ragkit.query.guard import check_read_only

            query = extract_cypher(text)
            if "RETURN" not in query.upper():
                return "invalid Cypher: no RETURN clause"
            try:
                check_read_only(query, "cypher")
            except QueryError as e:
                return f"invalid Cypher: {str(e)[:120]}"
        if self.min_score is not None and gen.scores and gen.scores[0] < self.min_score:
            return f"low confidence {gen.scores[0]:.2f} < {self.min_score:g}"
        return None

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
        kw = {"max_new_tokens": max_new_tokens, "stop": stop, "temperature": temperature, "num_return_sequences": num_return_sequences, "constraint": constraint}
        gen = self.small.generate(prompt, stream=False, **kw)
        record_cost("small", gen.stats, self.small_price)
        reason = self.escalation_reason(gen)
        rec = current_recorder()
        routes = rec.trace.extra.setdefault("routes", []) if rec is not None else []
        if reason is None:
            routes.append("small")
            if stream and gen.text:
                emit_token(gen.text)
            return gen
        logger.debug("escalating to the large model: %s", reason)
        routes.append(f"large ({reason})")
        big = self.large.generate(prompt, stream=stream, **kw)
        record_cost("large", big.stats, self.large_price)
        return big

"""The fakes behind :mod:`ragkit.testing` (see there)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ragkit.core.component import register_resource, register_stage
from ragkit.core.metrics import GenerationStats, emit_token
from ragkit.core.stage import Output, Stage
from ragkit.errors import QueryParseError
from ragkit.models.base import LLM, ChatMessage, Embedder, Generation, record
from ragkit.stores.base import GraphSchema, GraphStore, QueryResult, SchemaClass, SchemaProperty

if TYPE_CHECKING:
    from ragkit.query.constrain import TermConstraint

__all__ = ["HashingEmbedder", "ScriptedLLM", "TinyGraphStore", "EchoStage", "UpperStage", "TextOutput"]


@register_resource("hashing_embedder")
class HashingEmbedder(Embedder):
    """Embeds text by hashing its lower-cased words and character trigrams into ``dimension`` buckets.

    Texts sharing words land close together, which is enough to test retrieval logic.

    Example:
        >>> e = HashingEmbedder(dimension=64)
        >>> v = e.embed(["who wrote it", "who wrote that"])
        >>> float(v[0] @ v[1]) > 0.5
        True
    """

    thread_safe: ClassVar[bool] = True  # embed() is a pure function of its texts

    def __init__(self, dimension: int = 256) -> None:
        if dimension < 8:
            raise ValueError("dimension must be at least 8")
        self.dimension = dimension
        self.setup_calls = 0

    def setup(self) -> None:
        self.setup_calls += 1

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        self.warm_up()
        out = np.zeros((len(texts), self.dimension), dtype="float32")
        for i, t in enumerate(texts):
            t = t.lower()
            feats = re.findall(r"\w+", t) + [t[j : j + 3] for j in range(max(0, len(t) - 2))]
            for f in feats:
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dimension] += 1.0 if (h >> 63) & 1 else -1.0
            n = np.linalg.norm(out[i])
            if n:
                out[i] /= n
        return out


@register_resource("scripted_llm")
class ScriptedLLM(LLM):
    """An LLM that replies from a script.

    Args:
        responses: replies returned in turn (the last one repeats).
        rules: ``{substring: reply}``; the first rule whose substring occurs in the prompt wins over
            ``responses``.
        seconds_per_token: a delay per reply word, to stand in for a slow model.
        forced_tokens: what constrained calls report as forced steps.
        ended_rows: what constrained calls report as sequences the constraint ended.
        scores: ``{substring: log-probability}`` for :meth:`score`: a prompt gets the value of the first
            substring it holds, or 0.0.

    Example:
        >>> llm = ScriptedLLM(responses=["Paris."])
        >>> llm.generate("Capital of France?").text
        'Paris.'
    """

    thread_safe: ClassVar[bool] = True  # rules reply the same whatever the order of calls; ``responses`` go in call order

    def __init__(
        self,
        responses: list[str] | None = None,
        rules: dict[str, str] | None = None,
        seconds_per_token: float = 0.0,
        forced_tokens: int = 0,
        ended_rows: int = 0,
        scores: dict[str, float] | None = None,
    ) -> None:
        self.responses = list(responses or ["I don't know."])
        self.scores = dict(scores or {})
        self.scored: list[tuple[str, str]] = []
        """The (rendered prompt, continuation) of each :meth:`score` call."""
        self.forced_tokens = forced_tokens
        """Reported as ``stats.forced_tokens`` of every constrained call (as if a constraint had overruled the model)."""
        self.ended_rows = ended_rows
        """Reported as ``stats.ended_rows`` of every constrained call (as if a constraint had ended a query)."""
        self.rules = dict(rules or {})
        self.seconds_per_token = seconds_per_token
        self.prompts: list[str] = []
        self.constraints: list[TermConstraint | None] = []
        """The ``constraint`` of each call (the script is replayed as is, constrained or not)."""
        self.setup_calls = 0
        self._i = 0

    def setup(self) -> None:
        self.setup_calls += 1

    def render(self, messages: Sequence[ChatMessage]) -> str:
        return "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages) + "<|assistant|>\n"

    def count_tokens(self, text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text))

    def score(self, prompts: Sequence[str | Sequence[ChatMessage]], continuation: str) -> list[float]:
        out = []
        for p in prompts:
            text = p if isinstance(p, str) else self.render(p)
            self.scored.append((text, continuation))
            out.append(next((v for k, v in self.scores.items() if k in text), 0.0))
        return out

    def _next(self, prompt: str) -> str:
        for key, reply in self.rules.items():
            if key in prompt:
                return reply
        reply = self.responses[min(self._i, len(self.responses) - 1)]
        self._i += 1
        return reply

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
        text = prompt if isinstance(prompt, str) else self.render(prompt)
        self.prompts.append(text)
        self.constraints.append(constraint)
        start = time.perf_counter()
        texts = []
        first: float | None = None
        n_out = 0
        for _ in range(num_return_sequences):
            reply = self._next(text)
            for s in stop:
                cut = reply.find(s)
                if cut >= 0:
                    reply = reply[:cut]
            pieces = re.findall(r"\s*\S+", reply)[:max_new_tokens]
            for p in pieces:
                if self.seconds_per_token:
                    time.sleep(self.seconds_per_token)
                if first is None:
                    first = time.perf_counter() - start
                if stream:
                    emit_token(p)
            n_out += len(pieces)
            texts.append("".join(pieces))
        stats = GenerationStats(tokens_in=self.count_tokens(text), tokens_out=n_out, ttft=first, seconds=time.perf_counter() - start)
        if constraint is not None:
            stats.forced_tokens, stats.ended_rows = self.forced_tokens, self.ended_rows
        record(stats)
        return Generation(texts=tuple(texts), scores=tuple(-0.1 * (i + 1) for i in range(len(texts))), stats=stats)


_TINY_NS = "http://example.org/tiny/"
_TINY_TRIPLES = [
    ("ann", "type", "Person"), ("bob", "type", "Person"), ("rome", "type", "City"), ("oslo", "type", "City"),
    ("ann", "livesIn", "rome"), ("bob", "livesIn", "oslo"),
    ("ann", "label", "Ann"), ("bob", "label", "Bob"), ("rome", "label", "Rome"), ("oslo", "label", "Oslo"),
]  # fmt: skip


@register_resource("tiny_graph_store")
class TinyGraphStore(GraphStore):
    """Two people, two cities, in memory; answers SPARQL of the form ``SELECT ?x WHERE { s p ?x }``.

    Other queries get the rows scripted in ``answers`` (keyed by the query with whitespace folded),
    or a :class:`~ragkit.errors.QueryParseError`. The read-only guard, limits and time-out of
    :class:`~ragkit.stores.base.GraphStore` apply as in real stores.

    Example:
        >>> TinyGraphStore().query("SELECT ?c WHERE { <http://example.org/tiny/ann> <http://example.org/tiny/livesIn> ?c }").rows
        (('http://example.org/tiny/rome',),)
    """

    def __init__(self, answers: dict[str, list[list[Any]]] | None = None, *, timeout: float = 5.0, row_limit: int = 100) -> None:
        super().__init__(timeout=timeout, row_limit=row_limit)
        self.answers = {" ".join(k.split()): v for k, v in (answers or {}).items()}
        self.executed: list[str] = []
        self.setup_calls = 0

    def setup(self) -> None:
        self.setup_calls += 1

    def fingerprint(self) -> str:
        return "tiny-" + hashlib.sha256(repr(_TINY_TRIPLES).encode()).hexdigest()[:8]

    def _schema(self) -> GraphSchema:
        ns = _TINY_NS
        return GraphSchema(
            language="sparql",
            classes=(SchemaClass(name=ns + "Person", label="Person", count=2), SchemaClass(name=ns + "City", label="City", count=2)),
            properties=(
                SchemaProperty(name=ns + "livesIn", label="lives in", kind="object", domains=(ns + "Person",), ranges=(ns + "City",), count=2),
                SchemaProperty(name=ns + "label", label="label", kind="datatype", domains=(ns + "Person", ns + "City"), count=4, samples=("Ann",)),
            ),
            prefixes={"tiny": ns},
        )

    def _execute(self, query: str, limit: int) -> QueryResult:
        self.executed.append(query)
        key = " ".join(query.split())
        if key in self.answers:
            rows = [tuple(r) for r in self.answers[key]]
            return QueryResult(columns=tuple(f"c{i}" for i in range(len(rows[0]) if rows else 0)), rows=tuple(rows[:limit]), truncated=len(rows) > limit)
        m = re.search(r"\{\s*(\S+)\s+(\S+)\s+\?(\w+)\s*\.?\s*\}", query)
        if not m or not query.lstrip().upper().startswith("SELECT"):
            raise QueryParseError("TinyGraphStore understands only `SELECT ?x WHERE { <s> <p> ?x }`", query=query)

        def local(term: str) -> str:
            term = term.strip("<>")
            return term[len(_TINY_NS) :] if term.startswith(_TINY_NS) else term.split(":")[-1]

        s, p = local(m.group(1)), local(m.group(2))
        vals = [o for (ts, tp, o) in _TINY_TRIPLES if ts == s and tp == p]
        rows = tuple((_TINY_NS + v if p != "label" else v,) for v in vals)
        return QueryResult(columns=(m.group(3),), rows=rows[:limit], truncated=len(rows) > limit)


class TextOutput(Output):
    text: str


@register_stage("echo")
class EchoStage(Stage):
    """Returns its input unchanged (for wiring tests)."""

    def run(self, text: str) -> TextOutput:
        return TextOutput(text=text)


@register_stage("upper")
class UpperStage(Stage):
    """Upper-cases its input (for wiring tests)."""

    def __init__(self, suffix: str = "") -> None:
        self.suffix = suffix

    def run(self, text: str) -> TextOutput:
        return TextOutput(text=text.upper() + self.suffix)

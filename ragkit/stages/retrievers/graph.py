"""Running generated queries on a graph store and turning the rows into scored context.

Example:
    >>> from ragkit.stages.retrievers.graph import GraphQueryRetriever
    >>> from ragkit.stages.querygen.base import GeneratedQuery, QueryCandidate
    >>> from ragkit.testing import TinyGraphStore
    >>> q = "SELECT ?c WHERE { <http://example.org/tiny/ann> <http://example.org/tiny/livesIn> ?c }"
    >>> gen = GeneratedQuery(language="sparql", query=q, candidates=[QueryCandidate(query=q)])
    >>> ctx = GraphQueryRetriever(store=TinyGraphStore()).run(generated=gen).context
    >>> ctx.rows, ctx.confidence > 0.5
    ([['http://example.org/tiny/rome']], True)
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import QueryError, StoreError, StoreUnavailableError
from ragkit.stages.querygen.base import GeneratedQuery, rows_key
from ragkit.stores.base import GraphStore

logger = logging.getLogger(__name__)

__all__ = ["GraphQueryRetriever", "GraphContext", "GraphRetrieval"]


class GraphContext(BaseModel):
    """Rows a graph query returned, with the query that produced them and a confidence in [0, 1]."""

    model_config = ConfigDict(frozen=True)

    query: str
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False
    error: str | None = None
    confidence: float = 0.0
    """How much to trust these rows: from validity, execution, non-emptiness and candidate agreement."""
    tried: int = 0
    """Candidates executed before choosing."""

    def as_text(self, max_rows: int | None = None) -> list[str]:
        """One line per row, ``column=value`` pairs, for a prompt."""
        rows = self.rows if max_rows is None else self.rows[:max_rows]
        return ["; ".join(f"{c}={_short(v)}" for c, v in zip(self.columns, r)) for r in rows]


class GraphRetrieval(Output):
    """The graph retriever's output: the full context, and its main parts as separate sockets."""

    context: GraphContext
    query: str
    rows: list[list[Any]]
    confidence: float
    error: str | None = None


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 200 else s[:197] + "..."


def _has_values(rows: tuple[tuple[Any, ...], ...]) -> bool:
    """Rows with at least one bound value (a row of nulls, e.g. from an unbound variable, is no answer)."""
    return any(v is not None for r in rows for v in r)


@register_stage("graph_query_retriever")
class GraphQueryRetriever(Stage):
    """Executes the generator's candidates (read-only, time-out, row limit) and keeps the best result.

    Execution-guided selection: candidates run in order; the first that executes and returns rows
    wins, else the first that executes. The confidence combines:

    * whether any candidate was valid and ran (0 when none did),
    * whether the chosen result is non-empty (an empty result is weak evidence),
    * agreement: the share of candidates that ran and returned the same rows as the chosen one.

    It is a heuristic score in [0, 1]; calibrate it on labelled data before using it as a probability.

    Args:
        store: the graph store resource.
        max_candidates: candidates executed at most.
        row_limit: rows kept at most (the store's own limit also applies).
        timeout: seconds per query (None: the store's time-out).
    """

    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals

    def __init__(self, store: GraphStore, max_candidates: int = 3, row_limit: int = 50, timeout: float | None = None) -> None:
        if max_candidates < 1:
            raise ValueError("max_candidates must be at least 1")
        if row_limit < 1:
            raise ValueError("row_limit must be at least 1")
        self.store = store
        self.max_candidates = max_candidates
        self.row_limit = row_limit
        self.timeout = timeout

    def run(self, generated: GeneratedQuery) -> GraphRetrieval:
        ctx = self._retrieve(generated)
        return GraphRetrieval(context=ctx, query=ctx.query, rows=ctx.rows, confidence=ctx.confidence, error=ctx.error)

    def _retrieve(self, generated: GeneratedQuery) -> GraphContext:
        results = []
        errors = []
        for cand in generated.candidates[: self.max_candidates]:
            if cand.error is not None:
                errors.append(cand.error)
                continue
            try:
                res = self.store.query(cand.query, timeout=self.timeout, limit=self.row_limit)
            except StoreUnavailableError:
                raise  # the store is down: no candidate can do better, and empty context would hide it
            except (QueryError, StoreError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            results.append((cand, res))
        rec = current_recorder()
        if rec is not None:
            rec.note("executed", len(results))
        if not results:
            return GraphContext(
                query=generated.query, columns=[], rows=[], error=errors[0] if errors else "no candidate query", confidence=0.0, tried=len(errors)
            )
        nonempty = [(c, r) for c, r in results if _has_values(r.rows)]
        chosen, res = (nonempty or results)[0]
        agree = sum(rows_key(r.rows) == rows_key(res.rows) for _, r in results) / len(results)
        base = 0.9 if _has_values(res.rows) else 0.25
        confidence = base * (0.6 + 0.4 * agree) if len(results) > 1 else base * 0.8
        return GraphContext(
            query=chosen.query,
            columns=list(res.columns),
            rows=[list(r) for r in res.rows],
            truncated=res.truncated,
            confidence=round(confidence, 4),
            tried=len(results) + len(errors),
        )

"""What query generators output: ranked candidate queries with what is known about each."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ragkit.core.stage import Output

__all__ = ["QueryCandidate", "GeneratedQuery", "QueryGenOutput"]


class QueryCandidate(BaseModel):
    """One candidate query. ``error`` says why it cannot run (parse error, refused, unknown terms)."""

    model_config = ConfigDict(frozen=True)
    query: str
    score: float = 0.0
    """The model's mean log-probability per token (higher is more confident)."""
    error: str | None = None


class GeneratedQuery(BaseModel):
    """Candidates best first; ``query`` is the first one without an error (or the first at all)."""

    model_config = ConfigDict(frozen=True)

    language: str
    query: str
    candidates: list[QueryCandidate]

    @property
    def valid(self) -> bool:
        return any(c.error is None for c in self.candidates)


class QueryGenOutput(Output):
    """What a query generator stage returns: the candidates, and the best query as text."""

    generated: GeneratedQuery
    query: str

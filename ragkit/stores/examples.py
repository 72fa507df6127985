"""The few-shot example bank: question→query pairs, embedded and searched with FAISS.

A bank file is JSON Lines, one ``{"question": ..., "sparql": ...}`` (or ``"cypher"``, or ``"query"``)
per line. Search returns the top-k examples by cosine similarity to the question, diversified with
maximal marginal relevance (MMR) so the prompt does not get five copies of one pattern.

Example:
    >>> from ragkit.stores.examples import ExampleBank
    >>> from ragkit.testing import HashingEmbedder
    >>> bank = ExampleBank.from_examples([("Who wrote X?", "SELECT ..."), ("Where is Y?", "SELECT ...")], HashingEmbedder())
    >>> bank.search("Who wrote Z?", k=1)[0].question
    'Who wrote X?'
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import Resource, register_resource
from ragkit.errors import InputError, MissingDependencyError
from ragkit.models.base import Embedder
from ragkit.query.text import question_skeleton

logger = logging.getLogger(__name__)

__all__ = ["ExampleBank", "QueryExample", "read_examples"]

_QUERY_KEYS = ("query", "sparql", "cypher")


class QueryExample(BaseModel):
    """One question with the query that answers it; ``score`` is its similarity to the asked question."""

    model_config = ConfigDict(frozen=True)
    question: str
    query: str
    score: float = 0.0


def read_examples(path: str | Path) -> list[QueryExample]:
    """Read a bank file, with a clear error naming the line of any bad row."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"example bank {p} does not exist (check the 'path' of the example_bank resource)")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        query = next((row[k] for k in _QUERY_KEYS if isinstance(row, dict) and k in row), None)
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(query, str):
            raise InputError(f"{p}:{n}: each line needs a 'question' and a 'sparql', 'cypher' or 'query' string")
        out.append(QueryExample(question=row["question"], query=query))
    if not out:
        raise InputError(f"example bank {p} has no examples")
    return out


@register_resource("example_bank")
class ExampleBank(Resource):
    """Question→query examples in a FAISS inner-product index over unit vectors.

    Args:
        path: a JSON Lines bank file.
        embedder: the embedder resource used for questions.
        mask_entities: compare question skeletons (names, quoted strings and numbers masked, see
            :func:`~ragkit.query.text.question_skeleton`) instead of raw questions, so examples are
            found by what they ask rather than by which entity they name.

    Example:
        >>> from ragkit.testing import HashingEmbedder
        >>> bank = ExampleBank(path="fixtures/library/examples.jsonl", embedder=HashingEmbedder())
        >>> len(bank.search("Who wrote The Glass Orchard?", k=2))  # doctest: +SKIP
        2
    """

    def __init__(self, path: str | None = None, embedder: Embedder | None = None, mask_entities: bool = True) -> None:
        if embedder is None:
            raise ValueError("an example bank needs an 'embedder' resource")
        self.path = path
        self.embedder = embedder
        self.mask_entities = mask_entities
        self._examples: list[QueryExample] = []
        self._vectors: Any = None
        self._index: Any = None
        self._given: list[QueryExample] | None = None
        self._exclude = threading.local()

    @classmethod
    def from_examples(cls, examples: Iterable[tuple[str, str] | QueryExample], embedder: Embedder, mask_entities: bool = True) -> ExampleBank:
        """A bank over in-memory examples (no file), e.g. one built per question by ``ragkit eval``."""
        bank = cls(path=None, embedder=embedder, mask_entities=mask_entities)
        bank._given = [e if isinstance(e, QueryExample) else QueryExample(question=e[0], query=e[1]) for e in examples]
        return bank

    def setup(self) -> None:
        try:
            import faiss
        except ImportError:
            raise MissingDependencyError("faiss-cpu", "models", "the example bank") from None
        if self._given is not None:
            self._examples = list(self._given)
        elif self.path is not None:
            self._examples = read_examples(self.path)
        else:
            raise InputError("the example bank has neither a 'path' nor examples")
        if not self._examples:
            self._index = None
            return
        vecs = self.embedder.embed([self._key(e.question) for e in self._examples])
        self._vectors = vecs
        self._index = faiss.IndexFlatIP(vecs.shape[1])
        self._index.add(vecs)

    @contextlib.contextmanager
    def excluding(self, predicate: Callable[[QueryExample], bool]) -> Iterator[None]:
        """Within the block (in this thread), searches skip examples for which ``predicate`` is true.

        ``ragkit eval`` uses it to hide, for each test question, the examples its protocol forbids.
        """
        old = getattr(self._exclude, "fn", None)
        self._exclude.fn = predicate
        try:
            yield
        finally:
            self._exclude.fn = old

    def _key(self, question: str) -> str:
        return question_skeleton(question) if self.mask_entities else question

    def __len__(self) -> int:
        self.warm_up()
        return len(self._examples)

    @property
    def examples(self) -> list[QueryExample]:
        self.warm_up()
        return list(self._examples)

    def search(self, question: str, k: int = 4, *, diversity: float = 0.3, fetch: int = 20) -> list[QueryExample]:
        """The ``k`` examples nearest to ``question``, diversified by MMR.

        Args:
            question: the user's question.
            k: how many examples to return.
            diversity: 0 ranks by similarity alone; higher values favour examples unlike those chosen.
            fetch: candidates taken from the index before MMR re-ranks them.
        """
        import numpy as np

        self.warm_up()
        if self._index is None or k <= 0:
            return []
        q = self.embedder.embed([self._key(question)])
        exclude = getattr(self._exclude, "fn", None)
        allowed = None if exclude is None else {i for i, e in enumerate(self._examples) if not exclude(e)}
        n = len(self._examples) if allowed is not None else min(max(fetch, k), len(self._examples))
        sims, ids = self._index.search(q, n)
        cand = [int(i) for i in ids[0] if i >= 0 and (allowed is None or int(i) in allowed)][: max(fetch, k)]
        sim = {i: float(s) for i, s in zip(ids[0], sims[0]) if i >= 0}
        chosen: list[int] = []
        while cand and len(chosen) < k:
            if not chosen or diversity <= 0:
                best = max(cand, key=lambda i: sim[i])
            else:
                cv = self._vectors[chosen]

                def mmr(i: int) -> float:
                    return (1 - diversity) * sim[i] - diversity * float(np.max(cv @ self._vectors[i]))

                best = max(cand, key=mmr)
            chosen.append(best)
            cand.remove(best)
        return [self._examples[i].model_copy(update={"score": sim[i]}) for i in chosen]

"""The few-shot example bank: question→query pairs, embedded and searched with FAISS.

A bank file is JSON Lines, one ``{"question": ..., "sparql": ...}`` (or ``"cypher"``, or ``"query"``)
per line. Search returns the top-k examples by cosine similarity to the question, diversified with
maximal marginal relevance (MMR) so the prompt does not get five copies of one pattern.

The question embeddings of a bank file are persisted (``$RAGKIT_CACHE_DIR/example_banks``, written
atomically, keyed by the file's content and the embedder), so a restart re-embeds only questions it
has not seen. Given the graph ``store``, examples whose query names a class, property, label or
relationship type the live schema lacks (or that the read-only guard refuses) are left out of
searches; they are checked again whenever the store's data fingerprint changes.

Example:
    >>> from ragkit.stores.examples import ExampleBank
    >>> from ragkit.testing import HashingEmbedder
    >>> bank = ExampleBank.from_examples([("Who wrote X?", "SELECT ..."), ("Where is Y?", "SELECT ...")], HashingEmbedder())
    >>> bank.search("Who wrote Z?", k=1)[0].question
    'Who wrote X?'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import Resource, register_resource
from ragkit.core.jsonl import json_lines
from ragkit.errors import InputError, MissingDependencyError
from ragkit.models.base import Embedder
from ragkit.query.text import question_skeleton
from ragkit.stores.base import GraphSchema, GraphStore

logger = logging.getLogger(__name__)

__all__ = ["ExampleBank", "QueryExample", "read_examples", "example_problem"]

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
    for n, row in json_lines(p):
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
        store: the graph the queries run on; examples that do not fit its live schema are left out.
        persist: keep the question embeddings of a bank file in ragkit's cache folder.

    Example:
        >>> from ragkit.testing import HashingEmbedder
        >>> bank = ExampleBank(path="fixtures/library/examples.jsonl", embedder=HashingEmbedder())
        >>> len(bank.search("Who wrote The Glass Orchard?", k=2))  # doctest: +SKIP
        2
    """

    thread_safe: ClassVar[bool] = True  # Searches only read the index; exclusions are per thread; the schema check is locked.

    def __init__(
        self,
        path: str | None = None,
        embedder: Embedder | None = None,
        mask_entities: bool = True,
        store: GraphStore | None = None,
        persist: bool = True,
    ) -> None:
        if embedder is None:
            raise ValueError("an example bank needs an 'embedder' resource")
        self.path = path
        self.embedder = embedder
        self.mask_entities = mask_entities
        self.store = store
        self.persist = persist
        self._examples: list[QueryExample] = []
        self._vectors: Any = None
        self._index: Any = None
        self._given: list[QueryExample] | None = None
        self._exclude = threading.local()
        self._stale: set[int] = set()
        self._checked_fingerprint: str | None = None
        self._check_lock = threading.Lock()
        self.reused = 0
        """Embeddings taken from the persisted cache at the last load (not recomputed)."""

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
        vecs = self._embed_keys([self._key(e.question) for e in self._examples])
        self._vectors = vecs
        self._index = faiss.IndexFlatIP(vecs.shape[1])
        self._index.add(vecs)

    # -- persistence ----------------------------------------------------------------------------
    def _cache_folder(self) -> Path | None:
        if not self.persist or self.path is None or self._given is not None:
            return None
        from ragkit.models.llm import cache_dir

        model = self.embedder.init_params.get("model")
        ident = f"{Path(self.path).resolve()}|{type(self.embedder).type_name}:{model or 'default'}|{self.mask_entities}"
        return cache_dir() / "example_banks" / hashlib.sha256(ident.encode()).hexdigest()[:16]

    def _embed_keys(self, keys: list[str]) -> Any:
        """Embeddings of ``keys``, reusing the persisted ones and saving the result atomically."""
        import numpy as np

        folder = self._cache_folder()
        known: dict[str, Any] = {}
        if folder is not None and (folder / "meta.json").is_file():
            try:
                old_keys = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["keys"]
                old = np.load(folder / "vectors.npy")
                if len(old_keys) == len(old):
                    known = dict(zip(old_keys, old))
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
                logger.warning("ignoring the unreadable example-bank cache in %s (%s); re-embedding", folder, e)
        todo = sorted({k for k in keys if k not in known})
        if todo:
            known.update(zip(todo, self.embedder.embed(todo)))
        vecs = np.asarray([known[k] for k in keys], dtype="float32")
        self.reused = len(keys) - len(todo)
        if folder is not None and todo:
            try:
                _save_atomically(folder, keys, vecs)
            except OSError as e:  # a read-only cache is a lost speed-up, not an error
                logger.warning("could not persist the example-bank embeddings to %s: %s", folder, e)
        return vecs

    # -- fit to the live schema -----------------------------------------------------------------
    def _refresh_stale(self) -> None:
        """Mark examples whose query no longer fits the store's schema (once per data fingerprint)."""
        if self.store is None or not self._examples:
            return
        fp = self.store.fingerprint()
        if fp == self._checked_fingerprint:
            return
        with self._check_lock:
            if fp == self._checked_fingerprint:
                return
            schema = self.store.schema()
            stale = {i for i, e in enumerate(self._examples) if example_problem(e.query, schema) is not None}
            if stale:
                logger.warning(
                    "%d of %d examples name terms the graph does not have (or are refused) and are left out; "
                    "first: %r",
                    len(stale),
                    len(self._examples),
                    self._examples[min(stale)].question,
                )
            self._stale = stale
            self._checked_fingerprint = fp

    @property
    def dropped(self) -> list[QueryExample]:
        """Examples left out because their query does not fit the live schema."""
        self.warm_up()
        self._refresh_stale()
        return [self._examples[i] for i in sorted(self._stale)]

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

    def first(self, k: int = 4) -> list[QueryExample]:
        """The first ``k`` usable examples in the bank's order, whatever the question (fixed few-shot).

        Examples hidden by :meth:`excluding` or left out for not fitting the live schema are skipped,
        so the next ones in file order take their place.
        """
        self.warm_up()
        if k <= 0:
            return []
        self._refresh_stale()
        exclude = getattr(self._exclude, "fn", None)
        out: list[QueryExample] = []
        for i, e in enumerate(self._examples):
            if i in self._stale or (exclude is not None and exclude(e)):
                continue
            out.append(e)
            if len(out) == k:
                break
        return out

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
        self._refresh_stale()
        q = self.embedder.embed([self._key(question)])
        exclude = getattr(self._exclude, "fn", None)
        allowed = None
        if exclude is not None or self._stale:
            allowed = {i for i, e in enumerate(self._examples) if i not in self._stale and not (exclude and exclude(e))}
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


def example_problem(query: str, schema: GraphSchema) -> str | None:
    """Why an example's query does not fit ``schema`` (refused, or naming unknown terms), or None."""
    from ragkit.errors import QueryError
    from ragkit.query.guard import check_read_only

    try:
        check_read_only(query, schema.language)
    except QueryError as e:
        return str(e)
    if schema.language == "sparql":
        from ragkit.query.sparql import unknown_sparql_terms

        bad = unknown_sparql_terms(query, schema)
    else:
        from ragkit.query.cypher import unknown_cypher_terms

        bad = unknown_cypher_terms(query, schema)
    return f"unknown {', '.join(bad)}" if bad else None


def _save_atomically(folder: Path, keys: list[str], vecs: Any) -> None:
    """Write vectors.npy and meta.json so that a reader sees the old pair or the new one."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_vec = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, vecs)
        f.flush()
        os.fsync(f.fileno())
    fd, tmp_meta = tempfile.mkstemp(dir=folder, suffix=".json.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"keys": keys, "dim": int(vecs.shape[1])}, f)
        f.flush()
        os.fsync(f.fileno())
    # meta.json goes last and is checked against the vectors' length on load
    os.replace(tmp_vec, folder / "vectors.npy")
    os.replace(tmp_meta, folder / "meta.json")

"""Text retrievers over a :class:`~ragkit.stores.vector.VectorIndex`: dense, BM25, and hybrid by reciprocal rank.

* ``dense_retriever``: cosine similarity of embeddings (FAISS).
* ``bm25_retriever``: Okapi BM25 over the same chunks (with ``bm25s`` when installed, else numpy).
* ``hybrid_retriever``: both, fused by reciprocal-rank fusion (RRF): ``score = sum_r w_r / (k + rank_r)``.

All three take metadata ``filters`` (a stage parameter, and an optional run input that overrides it)
and return typed :class:`~ragkit.stores.vector.Passage` objects, best first.

Example:
    >>> from ragkit.stages.retrievers.text import HybridRetriever
    >>> from ragkit.stores.vector import VectorIndex
    >>> from ragkit.ingest import Document
    >>> from ragkit.testing import HashingEmbedder
    >>> idx = VectorIndex(embedder=HashingEmbedder())
    >>> _ = idx.add([Document(id="a", text="Ann lives in Rome."), Document(id="b", text="Bob lives in Oslo.")])
    >>> [p.id for p in HybridRetriever(index=idx, top_k=1).run(question="Where does Bob live?").passages]
    ['b']
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from typing import Any, ClassVar, Literal, NamedTuple

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import InputError
from ragkit.ingest.chunking import Chunk
from ragkit.stores.vector import Filters, Passage, VectorIndex, matches_filters

logger = logging.getLogger(__name__)

__all__ = ["DenseRetriever", "BM25Retriever", "HybridRetriever", "PassageRetrieval", "Passage", "BM25Index", "reciprocal_rank_fusion"]

# A short English stop list for the numpy fallback (bm25s brings its own).
_STOP = frozenset(
    "a an and are as at be been but by did do does for from had has have he her his how i if in into is it its "
    "me my of on or our she so than that the their them then there these they this to was we were what when "
    "where which who whom whose why will with you your".split()
)


class PassageRetrieval(Output):
    """Passages best first."""

    passages: list[Passage]


def _check_question(question: str) -> None:
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty (ask something)")


def _note(**kw: Any) -> None:
    rec = current_recorder()
    if rec is not None:
        for k, v in kw.items():
            rec.note(k, v)


class _BM25State(NamedTuple):
    """One build of the BM25 index: its chunks and the model scoring them, swapped in whole."""

    version: int
    chunks: list[Chunk]
    model: Any
    backend: str
    stemmer: Any


class BM25Index:
    """Okapi BM25 over an index's chunks (title and text), rebuilt when the index changes.

    Safe to search from several threads: a search reads one build (chunks and model together), and the
    stemmer, which is not thread-safe, is used under a lock.

    Args:
        index: the vector index whose chunks are searched.
        k1, b: the BM25 parameters.
        backend: ``bm25s`` (sparse matrices, Snowball stemming when PyStemmer is installed),
            ``numpy`` (no extra package, no stemming), or ``auto`` (bm25s when installed).
    """

    def __init__(self, index: VectorIndex, k1: float = 1.5, b: float = 0.75, backend: Literal["auto", "bm25s", "numpy"] = "auto") -> None:
        self.index = index
        self.k1, self.b = k1, b
        self.backend = backend
        self._lock = threading.Lock()
        self._stem_lock = threading.Lock()
        self._state: _BM25State | None = None

    def _ensure(self) -> _BM25State:
        self.index.warm_up()
        with self._lock:
            if self._state is not None and self._state.version == self.index.version:
                return self._state
            version = self.index.version
            chunks = self.index.chunks()
            texts = [f"{c.title} {c.text}" for c in chunks]
            backend = self.backend
            if backend == "auto":
                try:
                    import bm25s  # noqa: F401

                    backend = "bm25s"
                except ImportError:
                    backend = "numpy"
            stemmer = None
            if backend == "bm25s":
                model, stemmer = self._build_bm25s(texts)
            else:
                model = _NumpyBM25(texts, self.k1, self.b)
            self._state = _BM25State(version, chunks, model, backend, stemmer)
            return self._state

    def _build_bm25s(self, texts: list[str]) -> tuple[Any, Any]:
        try:
            import bm25s
        except ImportError:
            from ragkit.errors import MissingDependencyError

            raise MissingDependencyError("bm25s", "models", "the bm25s BM25 backend") from None
        # bm25s pins its logger at DEBUG when imported, which prints its internals under any
        # logging configuration: let the application's settings decide instead.
        if logging.getLogger("bm25s").level == logging.DEBUG:
            logging.getLogger("bm25s").setLevel(logging.NOTSET)
        try:
            import Stemmer

            stemmer = Stemmer.Stemmer("english")
        except ImportError:  # stemming helps a little; BM25 works without it
            stemmer = None
        model = bm25s.BM25(k1=self.k1, b=self.b)
        if texts:
            with self._stem_lock:
                tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
            model.index(tokens, show_progress=False)
        return model, stemmer

    def scores(self, query: str) -> Any:
        """BM25 score of every chunk (in :meth:`VectorIndex.chunks` order) for ``query``."""
        return self._scores(self._ensure(), query)

    def _scores(self, state: _BM25State, query: str) -> Any:
        import numpy as np

        if not state.chunks:
            return np.zeros(0, dtype="float32")
        if state.backend == "bm25s":
            import bm25s

            with self._stem_lock:  # a PyStemmer stemmer must not be used by two threads at once
                toks = bm25s.tokenize([query], stopwords="en", stemmer=state.stemmer, return_ids=False, show_progress=False)[0]
            vocab = state.model.vocab_dict
            toks = [t for t in toks if t in vocab]
            if not toks:
                return np.zeros(len(state.chunks), dtype="float32")
            return np.asarray(state.model.get_scores(toks), dtype="float32")
        return state.model.scores(query)

    def search(self, query: str, k: int = 10, filters: Filters | None = None) -> list[Passage]:
        import numpy as np

        state = self._ensure()
        s = self._scores(state, query)
        if not len(s):
            return []
        if filters:
            s = s.copy()
            s[[i for i, c in enumerate(state.chunks) if not matches_filters(c, filters)]] = -np.inf
        k = min(k, len(s))
        top = np.argpartition(-s, k - 1)[:k]
        top = top[np.argsort(-s[top], kind="stable")]
        out = []
        for i in top.tolist():
            if not (np.isfinite(s[i]) and s[i] > 0):  # no query word in common, or filtered out
                continue
            c = state.chunks[i]
            out.append(Passage(id=c.id, title=c.title, text=c.text, score=float(s[i]), doc_id=c.doc_id, metadata=c.metadata))
        return out


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w\w+", text.lower()) if w not in _STOP]


class _NumpyBM25:
    """A small exact BM25 (Lucene's idf) for when bm25s is not installed."""

    def __init__(self, texts: list[str], k1: float, b: float) -> None:
        import numpy as np

        self.k1, self.b = k1, b
        docs = [Counter(_words(t)) for t in texts]
        self.lengths = np.asarray([sum(d.values()) for d in docs], dtype="float32")
        self.avg = float(self.lengths.mean()) if len(docs) else 0.0
        self.postings: dict[str, tuple[Any, Any]] = {}
        acc: dict[str, tuple[list[int], list[int]]] = {}
        for i, d in enumerate(docs):
            for w, tf in d.items():
                ids, tfs = acc.setdefault(w, ([], []))
                ids.append(i)
                tfs.append(tf)
        n = len(docs)
        self.idf = {w: math.log(1 + (n - len(ids) + 0.5) / (len(ids) + 0.5)) for w, (ids, _) in acc.items()}
        self.postings = {w: (np.asarray(ids), np.asarray(tfs, dtype="float32")) for w, (ids, tfs) in acc.items()}
        self.n = n

    def scores(self, query: str) -> Any:
        import numpy as np

        out = np.zeros(self.n, dtype="float32")
        norm = self.k1 * (1 - self.b + self.b * self.lengths / max(self.avg, 1e-9))
        for w in _words(query):
            if w not in self.postings:
                continue
            ids, tf = self.postings[w]
            out[ids] += self.idf[w] * tf * (self.k1 + 1) / (tf + norm[ids])
        return out


def reciprocal_rank_fusion(rankings: list[list[Passage]], k: int = 60, weights: list[float] | None = None) -> list[Passage]:
    """Fuse ranked lists: each passage scores ``sum_r w_r / (k + rank_r)`` (rank from 1); best first."""
    weights = weights or [1.0] * len(rankings)
    score: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for w, ranking in zip(weights, rankings):
        for r, p in enumerate(ranking, 1):
            score[p.id] = score.get(p.id, 0.0) + w / (k + r)
            first.setdefault(p.id, p)
    order = sorted(score, key=lambda i: -score[i])
    return [first[i].model_copy(update={"score": score[i]}) for i in order]


class _TextRetriever(Stage):
    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals; the index and BM25 are safe to search concurrently

    def __init__(self, index: VectorIndex, top_k: int = 10, filters: Filters | None = None) -> None:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.index = index
        self.top_k = top_k
        self.filters = dict(filters) if filters else None


@register_stage("dense_retriever")
class DenseRetriever(_TextRetriever):
    """The ``top_k`` chunks whose embeddings are nearest the question's (cosine similarity).

    Args:
        index: the ``faiss_index`` resource.
        top_k: passages returned.
        filters: metadata filters applied to every question (the run input ``filters`` overrides them).

    Example:
        >>> from ragkit.testing import HashingEmbedder
        >>> idx = VectorIndex(embedder=HashingEmbedder(), corpus="fixtures/text/library_corpus.jsonl")
        >>> DenseRetriever(index=idx, top_k=3).run(question="Who founded Lanternfish Press?").passages[0].title  # doctest: +SKIP
        'Lanternfish Press'
    """

    def run(self, question: str, filters: Filters | None = None) -> PassageRetrieval:
        _check_question(question)
        found = self.index.search(question, self.top_k, filters if filters is not None else self.filters)
        _note(passages=len(found))
        return PassageRetrieval(passages=found)


@register_stage("bm25_retriever")
class BM25Retriever(_TextRetriever):
    """The ``top_k`` chunks by Okapi BM25 over their title and text.

    Args:
        index: the ``faiss_index`` resource whose chunks are searched (its vectors are not used).
        top_k: passages returned.
        filters: metadata filters (the run input ``filters`` overrides them).
        k1, b: BM25 parameters.
        backend: ``auto`` (bm25s when installed), ``bm25s`` or ``numpy``.

    Example:
        >>> from ragkit.testing import HashingEmbedder
        >>> idx = VectorIndex(embedder=HashingEmbedder(), corpus="fixtures/text/library_corpus.jsonl")
        >>> BM25Retriever(index=idx, top_k=1).run(question="Lanternfish Press founded").passages[0].title  # doctest: +SKIP
        'Lanternfish Press'
    """

    def __init__(
        self,
        index: VectorIndex,
        top_k: int = 10,
        filters: Filters | None = None,
        k1: float = 1.5,
        b: float = 0.75,
        backend: Literal["auto", "bm25s", "numpy"] = "auto",
    ) -> None:
        super().__init__(index, top_k, filters)
        if k1 <= 0 or not 0 <= b <= 1:
            raise ValueError("BM25 needs k1 > 0 and 0 <= b <= 1")
        self.k1, self.b, self.backend = k1, b, backend
        self._bm25 = BM25Index(index, k1, b, backend)

    def setup(self) -> None:
        self._bm25._ensure()

    def run(self, question: str, filters: Filters | None = None) -> PassageRetrieval:
        _check_question(question)
        found = self._bm25.search(question, self.top_k, filters if filters is not None else self.filters)
        _note(passages=len(found))
        return PassageRetrieval(passages=found)


@register_stage("hybrid_retriever")
class HybridRetriever(_TextRetriever):
    """Dense and BM25 retrieval fused by reciprocal rank.

    Args:
        index: the ``faiss_index`` resource.
        top_k: passages returned.
        fetch_k: passages taken from each retriever before fusing.
        rrf_k: the RRF constant (larger flattens the rank discount).
        dense_weight, bm25_weight: each retriever's weight in the fusion.
        filters: metadata filters (the run input ``filters`` overrides them).
        backend: the BM25 backend (see :class:`BM25Retriever`).

    Example:
        >>> from ragkit.testing import HashingEmbedder
        >>> idx = VectorIndex(embedder=HashingEmbedder(), corpus="fixtures/text/library_corpus.jsonl")
        >>> len(HybridRetriever(index=idx, top_k=4).run(question="Where was Ada Quill born?").passages)  # doctest: +SKIP
        4
    """

    def __init__(
        self,
        index: VectorIndex,
        top_k: int = 10,
        fetch_k: int = 50,
        rrf_k: int = 60,
        dense_weight: float = 1.0,
        bm25_weight: float = 1.0,
        filters: Filters | None = None,
        backend: Literal["auto", "bm25s", "numpy"] = "auto",
    ) -> None:
        super().__init__(index, top_k, filters)
        if fetch_k < top_k:
            raise ValueError("fetch_k must be at least top_k")
        if rrf_k < 1:
            raise ValueError("rrf_k must be at least 1")
        if dense_weight < 0 or bm25_weight < 0 or dense_weight + bm25_weight == 0:
            raise ValueError("dense_weight and bm25_weight must be 0 or more, and not both 0")
        self.fetch_k, self.rrf_k = fetch_k, rrf_k
        self.dense_weight, self.bm25_weight = dense_weight, bm25_weight
        self.backend = backend
        self._bm25 = BM25Index(index, backend=backend)

    def setup(self) -> None:
        self._bm25._ensure()

    def run(self, question: str, filters: Filters | None = None) -> PassageRetrieval:
        _check_question(question)
        f = filters if filters is not None else self.filters
        dense = self.index.search(question, self.fetch_k, f) if self.dense_weight else []
        sparse = self._bm25.search(question, self.fetch_k, f) if self.bm25_weight else []
        fused = reciprocal_rank_fusion([dense, sparse], self.rrf_k, [self.dense_weight, self.bm25_weight])[: self.top_k]
        _note(dense=len(dense), bm25=len(sparse), passages=len(fused))
        return PassageRetrieval(passages=fused)

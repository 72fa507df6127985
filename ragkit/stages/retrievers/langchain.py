"""LangChain retrievers as a ragkit stage: ``langchain_retriever`` (needs only ``langchain-core``).

Any LangChain ``BaseRetriever`` (a vector store's ``as_retriever()``, a web search, a custom one)
feeds a ragkit pipeline's prompt builder like the built-in text retrievers: each ``Document``
becomes a :class:`~ragkit.stores.vector.Passage` (``id`` from the document's id or its ``id``
metadata, ``title`` and ``score`` from its metadata when present, other scalar metadata kept).
Give the retriever itself in Python, or in a pipeline file an importable factory (see
:mod:`ragkit.models.langchain` for what that implies)::

    stages:
      - name: retrieve
        type: langchain_retriever
        factory: my_project.search:make_retriever
        kwargs: {k: 5}

Example:
    >>> from langchain_core.documents import Document
    >>> from langchain_core.retrievers import BaseRetriever
    >>> class Two(BaseRetriever):
    ...     def _get_relevant_documents(self, query, *, run_manager):
    ...         return [Document(page_content="Ann lives in Rome.", id="a"), Document(page_content="Bob lives in Oslo.", id="b")]
    >>> from ragkit.stages.retrievers.langchain import LangChainRetriever
    >>> [p.id for p in LangChainRetriever(retriever=Two(), top_k=1).run(question="Where does Ann live?").passages]
    ['a']
"""

from __future__ import annotations

from typing import Any

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Stage
from ragkit.errors import ConfigError, InputError
from ragkit.models.langchain import check_factory, load_factory, require_langchain
from ragkit.stages.retrievers.text import PassageRetrieval
from ragkit.stores.vector import Passage

__all__ = ["LangChainRetriever"]


@register_stage("langchain_retriever")
class LangChainRetriever(Stage):
    """Retrieves passages with a LangChain retriever.

    Args:
        retriever: the retriever object (Python only).
        factory: ``"package.module:function"`` returning the retriever (for pipeline files).
        kwargs: keyword arguments for ``factory``.
        top_k: keep at most this many documents (None keeps what the retriever returns).
    """

    def __init__(self, retriever: Any = None, factory: str | None = None, kwargs: dict[str, Any] | None = None, top_k: int | None = None) -> None:
        if (retriever is None) == (factory is None):
            raise ValueError("give exactly one of 'retriever' (a retriever object) or 'factory' ('package.module:function')")
        if isinstance(retriever, str):
            raise ValueError("'retriever' takes a retriever object; in a pipeline file name a 'factory' instead")
        check_factory(factory)
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.retriever = retriever
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.top_k = top_k
        self._retriever: Any = retriever

    def setup(self) -> None:
        require_langchain("the langchain_retriever stage")
        from langchain_core.retrievers import BaseRetriever

        obj = self.retriever if self.retriever is not None else load_factory(self.factory or "", self.kwargs)
        if not isinstance(obj, BaseRetriever):
            raise ConfigError(f"langchain_retriever: {type(obj).__name__} is not a LangChain BaseRetriever (give a retriever)")
        self._retriever = obj

    def run(self, question: str) -> PassageRetrieval:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something)")
        self.warm_up()
        docs = list(self._retriever.invoke(question))
        if self.top_k is not None:
            docs = docs[: self.top_k]
        passages = []
        for i, d in enumerate(docs):
            meta = dict(d.metadata or {})
            pid = str(getattr(d, "id", None) or meta.get("id") or f"lc{i + 1}")
            score = meta.get("score", meta.get("relevance_score", 0.0))
            passages.append(
                Passage(
                    id=pid,
                    title=str(meta.get("title", "")),
                    text=d.page_content,
                    score=float(score) if isinstance(score, (int, float)) else 0.0,
                    doc_id=str(meta.get("doc_id", meta.get("source", pid))),
                    metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))},
                )
            )
        rec = current_recorder()
        if rec is not None:
            rec.note("documents", len(passages))
        return PassageRetrieval(passages=passages)

"""Factories that pipeline files in the LangChain tests name (``lc_helpers:...``)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.retrievers import BaseRetriever

DOCS = [
    Document(page_content="Ann lives in Rome.", id="ann", metadata={"title": "Ann", "score": 0.9, "tags": ["x"]}),
    Document(page_content="Bob lives in Oslo.", metadata={"title": "Bob", "id": "bob"}),
    Document(page_content="Carl lives in Lima.", metadata={"source": "carl.txt"}),
]


class KeywordRetriever(BaseRetriever):
    """Documents sharing a word with the query, in order."""

    docs: list[Document] = DOCS

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        words = {w.strip("?.,").lower() for w in query.split()}
        hits = [d for d in self.docs if words & {w.strip("?.,").lower() for w in d.page_content.split()}]
        return hits or list(self.docs)


def make_retriever() -> KeywordRetriever:
    return KeywordRetriever()


def make_chat(responses: list[str]) -> FakeListChatModel:
    return FakeListChatModel(responses=responses)


def not_a_retriever() -> Any:
    return object()

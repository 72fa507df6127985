"""Token-aware chunking with overlap.

Lengths are counted with the tokenizer of the embedder that will embed the chunks, so a chunk never
silently exceeds what the model reads (all-MiniLM-L6-v2 truncates after 256 word pieces). Windows
of ``chunk_tokens`` tokens advance by ``chunk_tokens - overlap``; a window's end is pulled back to
the last sentence end in its final third when there is one, so chunks rarely stop mid-sentence.
The title is prepended when embedding, so its tokens are taken from the budget.

A document that fits in one window becomes one chunk with the document's own id; longer documents
become chunks ``<id>#0``, ``<id>#1``... all carrying ``doc_id``.

Example:
    >>> from ragkit.ingest.chunking import TextChunker
    >>> from ragkit.ingest.readers import Document
    >>> doc = Document(id="d", title="T", text=" ".join(f"w{i}." for i in range(50)))
    >>> [c.id for c in TextChunker(chunk_tokens=40, overlap=8).chunk(doc)]
    ['d#0', 'd#1', 'd#2', 'd#3']
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ragkit.ingest.readers import Document, Scalar

logger = logging.getLogger(__name__)

__all__ = ["Chunk", "TextChunker", "regex_spans", "hf_spans", "spans_for_embedder", "embedding_text"]

Spans = Callable[[str], list[tuple[int, int]]]
_WORD = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"[.!?;:]['\")\]]*$")


class Chunk(BaseModel):
    """A piece of a document, the unit that is embedded, indexed and retrieved."""

    model_config = ConfigDict(frozen=True)

    id: str
    doc_id: str
    title: str = ""
    text: str
    metadata: dict[str, Scalar] = Field(default_factory=dict)
    start: int = 0
    """Character offset of the chunk in its document's text."""
    end: int = 0


def embedding_text(title: str, text: str) -> str:
    """What is embedded for a chunk: its title (when it has one) on the first line, then its text."""
    return f"{title}\n{text}" if title else text


def regex_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of words and punctuation marks: the tokenizer used when the embedder has none."""
    return [m.span() for m in _WORD.finditer(text)]


def hf_spans(tokenizer: Any) -> Spans:
    """Character spans of the tokens a Hugging Face *fast* tokenizer makes (no special tokens)."""

    def spans(text: str) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"] if b > a]

    return spans


def spans_for_embedder(embedder: Any) -> tuple[Spans, int | None]:
    """The token spans function of ``embedder``'s tokenizer and its maximum sequence length.

    Falls back to :func:`regex_spans` (and no maximum) for embedders without a Hugging Face fast
    tokenizer, such as :class:`~ragkit.testing.HashingEmbedder`.
    """
    model = getattr(embedder, "st_model", None) if hasattr(type(embedder), "st_model") else None
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "is_fast", False):
        max_len = getattr(model, "max_seq_length", None)
        return hf_spans(tok), (int(max_len) if max_len else None)
    return regex_spans, None


class TextChunker:
    """Splits documents into overlapping token windows.

    Args:
        chunk_tokens: tokens per chunk at most, title included.
        overlap: tokens shared by consecutive chunks of a document.
        spans: a function giving the character spans of ``text``'s tokens (default: words and marks).
    """

    def __init__(self, chunk_tokens: int = 200, overlap: int = 32, spans: Spans | None = None) -> None:
        if chunk_tokens < 16:
            raise ValueError("chunk_tokens must be at least 16")
        if not 0 <= overlap <= chunk_tokens // 2:
            raise ValueError("overlap must be 0 or more and at most half of chunk_tokens")
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap
        self.spans = spans or regex_spans

    def chunk_all(self, docs: Iterable[Document]) -> list[Chunk]:
        """Every chunk of every document, in order."""
        return [c for d in docs for c in self.chunk(d)]

    def chunk(self, doc: Document) -> list[Chunk]:
        text = doc.text
        toks = self.spans(text)
        # +1 for the line break between title and text in embedding_text()
        budget = max(16, self.chunk_tokens - (len(self.spans(doc.title)) + 1 if doc.title else 0))
        if len(toks) <= budget:
            return [Chunk(id=doc.id, doc_id=doc.id, title=doc.title, text=text.strip(), metadata=doc.metadata, start=0, end=len(text))]
        windows = _windows(text, toks, budget, min(self.overlap, budget // 2 - 1))
        return [
            Chunk(id=f"{doc.id}#{i}", doc_id=doc.id, title=doc.title, text=text[a:b], metadata=doc.metadata, start=a, end=b) for i, (a, b) in enumerate(windows)
        ]


def _windows(text: str, toks: Sequence[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    n, start = len(toks), 0
    while start < n:
        end = min(start + size, n)
        if end < n:
            for j in range(end, start + (2 * size) // 3, -1):
                tail = text[toks[start][0] : toks[j - 1][1]]
                gap = text[toks[j - 1][1] : toks[j][0]]
                if _SENTENCE_END.search(tail) or "\n" in gap:
                    end = j
                    break
        out.append((toks[start][0], toks[end - 1][1]))
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return out

"""Ingestion: reading corpora, chunking them by tokens, and embedding the chunks in batches.

* :mod:`ragkit.ingest.readers`: JSONL files and text/Markdown folders to :class:`Document` objects.
* :mod:`ragkit.ingest.chunking`: token-aware overlapping :class:`Chunk` windows.
* :mod:`ragkit.ingest.embedding`: batched embedding with a progress bar.

The FAISS index that stores the result is :class:`ragkit.stores.vector.VectorIndex` (``faiss_index``).
"""

from ragkit.ingest.chunking import Chunk, TextChunker
from ragkit.ingest.embedding import embed_texts
from ragkit.ingest.readers import Document, read_corpus, read_folder, read_jsonl

__all__ = ["Document", "Chunk", "TextChunker", "read_corpus", "read_jsonl", "read_folder", "embed_texts"]

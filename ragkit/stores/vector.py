"""A FAISS vector index over text chunks, persisted atomically with JSON metadata and opened memory-mapped.

The ``faiss_index`` resource turns a corpus (a JSONL file, or a folder of text/Markdown files) into
token-bounded chunks, embeds them in batches and indexes them. The index kind is chosen by size, or
set with ``kind``:

* ``flat`` (exact inner product; up to ``flat_max`` chunks),
* ``hnsw`` (graph search, up to ``hnsw_max``),
* ``ivfpq`` (inverted lists of product-quantised codes, beyond that).

On disk an index is a folder::

    index/
      CURRENT             names the complete version, e.g. "v-000002"
      v-000002/
        meta.json         kind, dimension, embedder, chunking, corpus fingerprint, counts
        items.jsonl       one chunk a line: key, id, doc_id, title, text, metadata
        index.faiss       the FAISS index (vectors keyed by the chunks' integer keys)

A save writes a new version into a temporary folder beside the others, fsyncs every file and the
folder, renames it to its version name, then replaces ``CURRENT`` atomically (write, fsync,
``os.replace``). Until that last step readers see the previous version, which is kept; a crash at
any point leaves either the old index or the new one, never a mix. Nothing is pickled.

Example:
    >>> from ragkit.stores.vector import VectorIndex
    >>> from ragkit.ingest import Document
    >>> from ragkit.testing import HashingEmbedder
    >>> idx = VectorIndex(embedder=HashingEmbedder(dimension=64))
    >>> idx.add([Document(id="a", title="Rome", text="Ann lives in Rome."), Document(id="b", text="Bob lives in Oslo.")])
    2
    >>> idx.search("Where does Ann live?", k=1)[0].id
    'a'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragkit.core.component import Resource, register_resource
from ragkit.errors import InputError, MissingDependencyError, StoreError
from ragkit.ingest.chunking import (
    Chunk,
    TextChunker,
    embedding_text,
    spans_for_embedder,
)
from ragkit.ingest.embedding import embed_texts
from ragkit.ingest.readers import Document, Scalar, read_corpus
from ragkit.models.base import Embedder

logger = logging.getLogger(__name__)

__all__ = ["VectorIndex", "Passage", "Filters", "matches_filters", "choose_kind", "FORMAT", "IndexKind"]

FORMAT = "ragkit-faiss-index"
FORMAT_VERSION = 1
IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
Filters = dict[str, Scalar | list[Scalar]]
"""Metadata filters: ``{field: value}`` keeps items whose field equals value, ``{field: [a, b]}`` one of them.
Fields are the chunk's metadata keys plus ``id``, ``doc_id`` and ``title``."""


class Passage(BaseModel):
    """A retrieved chunk of text with its score (higher is better; its scale depends on who scored it)."""

    model_config = ConfigDict(frozen=True)

    id: str
    title: str = ""
    text: str
    score: float = 0.0
    doc_id: str = ""
    metadata: dict[str, Scalar] = Field(default_factory=dict)


def matches_filters(item: Chunk | Passage, filters: Filters | None) -> bool:
    """Whether ``item`` passes every filter (see :data:`Filters`)."""
    if not filters:
        return True
    for field, want in filters.items():
        have = getattr(item, field) if field in ("id", "doc_id", "title") else item.metadata.get(field)
        if isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def choose_kind(n: int, flat_max: int = 100_000, hnsw_max: int = 2_000_000) -> str:
    """The index kind for ``n`` vectors: exact below ``flat_max``, HNSW below ``hnsw_max``, IVF-PQ above."""
    if n <= flat_max:
        return "flat"
    return "hnsw" if n <= hnsw_max else "ivfpq"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("faiss-cpu", "models", "the FAISS vector index") from None
    return faiss


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes renames and new entries durable; some platforms cannot open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """One writer at a time per index folder (readers never wait)."""
    lock_path = root / ".lock"
    with open(lock_path, "a+") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): single-writer use is the caller's business
            pass
        yield


def _embedder_name(embedder: Embedder) -> str:
    model = embedder.init_params.get("model")
    return f"{type(embedder).type_name or type(embedder).__name__}:{model or 'default'}"


def _fingerprint(path: Path) -> str:
    """A content hash of a corpus file or folder, to notice when an index is stale."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@register_resource("faiss_index")
class VectorIndex(Resource):
    """Text chunks embedded into a FAISS index: build from a corpus, persist, reopen, add, delete, search.

    Args:
        embedder: the embedder resource (its tokenizer also measures chunks).
        corpus: a ``.jsonl`` corpus or a folder of ``.txt``/``.md`` files, indexed on first use and
            re-indexed when its contents change.
        path: the index folder. None with a corpus: a folder under the ragkit cache
            (``$RAGKIT_CACHE_DIR/indexes``). None without a corpus: in memory only.
        kind: ``auto`` (by size, see :func:`choose_kind`), ``flat``, ``hnsw`` or ``ivfpq``.
        chunk_tokens: tokens per chunk at most (capped by the embedder's maximum sequence length).
        chunk_overlap: tokens shared by consecutive chunks of one document.
        batch_size: texts per embedding call.
        mmap: open saved indexes memory-mapped (they are loaded into memory before a change).
        rebuild: re-index the corpus even when the saved index is current.
        progress: show a progress bar while embedding; None: only on a terminal.
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW search breadth.
        nprobe: IVF lists searched.
        flat_max: largest corpus (in chunks) indexed exactly under ``kind: auto``.
        hnsw_max: largest corpus indexed with HNSW under ``kind: auto``.

    Example:
        >>> from ragkit.testing import HashingEmbedder
        >>> idx = VectorIndex(embedder=HashingEmbedder(), corpus="fixtures/text/library_corpus.jsonl", path="/tmp/lib-index")
        >>> idx.search("Who founded Lanternfish Press?", k=1)[0].title   # doctest: +SKIP
        'Lanternfish Press'
    """

    thread_safe: ClassVar[bool] = True  # searches and changes run under one lock

    def __init__(
        self,
        embedder: Embedder,
        corpus: str | None = None,
        path: str | None = None,
        kind: IndexKind = "auto",
        chunk_tokens: int = 200,
        chunk_overlap: int = 32,
        batch_size: int = 64,
        mmap: bool = True,
        rebuild: bool = False,
        progress: bool | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
        nprobe: int = 16,
        flat_max: int = 100_000,
        hnsw_max: int = 2_000_000,
    ) -> None:
        if kind not in ("auto", "flat", "hnsw", "ivfpq"):
            raise ValueError(f"kind must be auto, flat, hnsw or ivfpq, not {kind!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        TextChunker(chunk_tokens, chunk_overlap)  # validates both now, not at warm-up
        self.embedder = embedder
        self.corpus = corpus
        self.path = path
        self.kind = kind
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.batch_size = batch_size
        self.mmap = mmap
        self.rebuild = rebuild
        self.progress = progress
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.nprobe = nprobe
        self.flat_max = flat_max
        self.hnsw_max = hnsw_max
        self._lock = threading.RLock()
        self._index: Any = None
        self._items: dict[int, Chunk] = {}
        self._key_of: dict[str, int] = {}
        self._deleted: set[int] = set()
        self._next_key = 0
        self._kind_used = ""
        self._meta: dict[str, Any] = {}
        self._mapped = False
        self._opened_from: Path | None = None
        self.version = 0
        """Increases with every change, so derived structures (a BM25 index) know to rebuild."""

    # ---- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        faiss = _faiss()
        threads = int(os.environ.get("RAGKIT_NUM_THREADS", "0") or 0)
        if threads:  # as for torch: on shared cores, fewer OpenMP threads than cores avoid spinning
            faiss.omp_set_num_threads(threads)
        folder = self.folder
        corpus = Path(self.corpus).expanduser() if self.corpus else None
        if corpus is not None and not corpus.exists():
            raise InputError(f"corpus {corpus} does not exist (check the 'corpus' path of the faiss_index resource)")
        fp = _fingerprint(corpus) if corpus is not None else None
        if folder is not None and (folder / "CURRENT").is_file() and not self.rebuild:
            self._open(folder)
            stale = self._stale_reason(fp)
            if stale is None:
                return
            if corpus is None:
                raise StoreError(f"index {folder} cannot be used: {stale} (give 'corpus' to rebuild it, or point 'path' elsewhere)")
            logger.info("re-indexing %s: %s", corpus, stale)
        if corpus is not None:
            self._build(read_corpus(corpus), fp)
        else:
            self._reset(self.kind if self.kind != "auto" else "flat")

    def teardown(self) -> None:
        with self._lock:
            self._index = None
            self._items, self._key_of, self._deleted = {}, {}, set()

    @property
    def folder(self) -> Path | None:
        """Where the index is saved (None: in memory only)."""
        if self.path:
            return Path(self.path).expanduser()
        if self.corpus:
            from ragkit.models.llm import cache_dir

            key = json.dumps([str(Path(self.corpus).expanduser().resolve()), _embedder_name(self.embedder), self.kind, self.chunk_tokens, self.chunk_overlap])
            return cache_dir() / "indexes" / (Path(self.corpus).stem + "-" + hashlib.sha256(key.encode()).hexdigest()[:12])
        return None

    def _stale_reason(self, fingerprint: str | None) -> str | None:
        m = self._meta
        if m.get("embedder", {}).get("name") != _embedder_name(self.embedder):
            return f"it was built with embedder {m.get('embedder', {}).get('name')!r}, not {_embedder_name(self.embedder)!r}"
        if fingerprint is not None and m.get("corpus", {}).get("fingerprint") != fingerprint:
            return "the corpus changed since it was built"
        chunking = m.get("chunking", {})
        if fingerprint is not None and (chunking.get("chunk_tokens"), chunking.get("overlap")) != (self.chunk_tokens, self.chunk_overlap):
            return "the chunking settings changed"
        if self.kind != "auto" and m.get("kind") != self.kind:
            return f"it is a {m.get('kind')} index, not {self.kind}"
        return None

    # ---- building ---------------------------------------------------------------------------
    def _chunker(self) -> TextChunker:
        spans, max_len = spans_for_embedder(self.embedder)
        size = self.chunk_tokens
        if max_len is not None and size > max_len - 2:  # [CLS] and [SEP] count too
            logger.info("chunk_tokens %d capped at %d, the embedder's maximum sequence length less 2", size, max_len - 2)
            size = max_len - 2
        return TextChunker(size, min(self.chunk_overlap, size // 2 - 1), spans)

    def _reset(self, kind: str, n_hint: int = 0, train: Any = None) -> None:
        faiss = _faiss()
        self.embedder.warm_up()
        d = int(self.embedder.dimension)
        if d <= 0:
            raise StoreError(f"embedder {_embedder_name(self.embedder)} reports dimension {d} after warm-up (fix the embedder)")
        params: dict[str, Any] = {}
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        elif kind == "hnsw":
            index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT))
            params["hnsw_m"] = self.hnsw_m
        else:
            if train is None or len(train) < 2:
                raise StoreError("an ivfpq index is trained on the vectors it is built from: build it from a corpus with at least a few hundred chunks")
            n = len(train)
            nlist = int(max(1, min(4 * int(n**0.5), n // 39, 65536)))
            m = next(m for m in (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if d % m == 0 and d // m >= 4 or m == 1)
            nbits = 8 if n >= 256 * 39 else max(4, min(8, (n // 39).bit_length() - 1))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            index.train(train)
            params.update(nlist=nlist, pq_m=m, nbits=nbits)
        with self._lock:
            self._index = index
            self._items, self._key_of, self._deleted = {}, {}, set()
            self._next_key = 0
            self._kind_used = kind
            self._mapped = False
            self._meta = {"params": params}
            self.version += 1

    def _build(self, docs: Sequence[Document], fingerprint: str | None) -> None:
        chunks = self._chunker().chunk_all(docs)
        vecs = embed_texts(
            self.embedder, [embedding_text(c.title, c.text) for c in chunks], batch_size=self.batch_size, progress=self.progress, desc="indexing"
        )
        kind = self.kind if self.kind != "auto" else choose_kind(len(chunks), self.flat_max, self.hnsw_max)
        logger.info("indexing %d chunks of %d documents in a %s index", len(chunks), len(docs), kind)
        self._reset(kind, train=vecs if kind == "ivfpq" else None)
        self._add_vectors(chunks, vecs)
        self._meta["corpus"] = {"path": str(self.corpus), "fingerprint": fingerprint, "documents": len(docs)}
        if self.folder is not None:
            self.save()

    # ---- changing ---------------------------------------------------------------------------
    def add(self, docs: Iterable[Document | Chunk], *, save: bool = True, engine: Literal["local", "ray"] = "local") -> int:
        """Chunk, embed and add documents (or ready chunks); an existing id is replaced. Returns chunks added.

        With ``save`` (and a folder) the new state is written atomically before returning. With
        ``engine="ray"`` the chunks are embedded by Ray tasks (:mod:`ragkit.ingest.distributed`).
        """
        self.warm_up()
        chunker = self._chunker()
        chunks: list[Chunk] = []
        for d in docs:
            chunks.extend([d] if isinstance(d, Chunk) else chunker.chunk(d))
        if not chunks:
            return 0
        texts = [embedding_text(c.title, c.text) for c in chunks]
        if engine == "ray":
            from ragkit.ingest.distributed import embed_texts_ray

            vecs = embed_texts_ray(self.embedder, texts, batch_size=self.batch_size)
        else:
            vecs = embed_texts(self.embedder, texts, batch_size=self.batch_size, progress=self.progress)
        with self._lock:
            replaced = {c.doc_id for c in chunks} | {c.id for c in chunks}
            self._remove(replaced)
            self._add_vectors(chunks, vecs)
            self._meta["modified"] = True
        if save and self.folder is not None:
            self.save()
        return len(chunks)

    def delete(self, ids: Iterable[str], *, save: bool = True) -> int:
        """Remove chunks by chunk id or document id (all of a document's chunks). Returns chunks removed."""
        self.warm_up()
        with self._lock:
            n = self._remove(set(ids))
            if n:
                self._meta["modified"] = True
        if n and save and self.folder is not None:
            self.save()
        return n

    def _writable(self) -> None:
        # A memory-mapped index is read-only by contract: load it fully before the first change.
        if self._mapped and self._opened_from is not None:
            faiss = _faiss()
            self._index = faiss.read_index(str(self._opened_from / "index.faiss"))
            self._mapped = False

    def _add_vectors(self, chunks: Sequence[Chunk], vecs: Any) -> None:
        import numpy as np

        self._writable()
        dup = {c.id for c in chunks}
        if len(dup) != len(chunks):
            raise InputError("two chunks added together share an id (ids must be unique)")
        keys = np.arange(self._next_key, self._next_key + len(chunks), dtype="int64")
        self._index.add_with_ids(np.ascontiguousarray(vecs, dtype="float32"), keys)
        for k, c in zip(keys.tolist(), chunks):
            self._items[k] = c
            self._key_of[c.id] = k
        self._next_key += len(chunks)
        self.version += 1

    def _remove(self, ids: set[str]) -> int:
        import numpy as np

        keys = [k for k, c in self._items.items() if c.id in ids or c.doc_id in ids]
        if not keys:
            return 0
        self._writable()
        arr = np.asarray(keys, dtype="int64")
        try:
            self._index.remove_ids(arr)
        except RuntimeError:  # HNSW cannot remove: hide the vectors until the next rebuild
            self._deleted.update(keys)
        for k in keys:
            self._key_of.pop(self._items.pop(k).id, None)
        self.version += 1
        return len(keys)

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path:
        """Write the index to ``path`` (default: :attr:`folder`) as a new version, atomically."""
        faiss = _faiss()
        root = Path(path).expanduser() if path is not None else self.folder
        if root is None:
            raise InputError("this index has no folder: give save() a path, or give the resource a 'path'")
        root.mkdir(parents=True, exist_ok=True)
        with self._lock, _writer_lock(root):
            meta = self._meta_dict()
            try:
                previous = (root / "CURRENT").read_text(encoding="utf-8").strip()
            except OSError:
                previous = ""
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
            try:
                faiss.write_index(self._index, str(tmp / "index.faiss"))
                _fsync_file(tmp / "index.faiss")
                with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
                    for k in sorted(self._items):
                        row = {"key": k, **self._items[k].model_dump(exclude={"start", "end"})}
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                with open(tmp / "meta.json", "w", encoding="utf-8") as f:
                    json.dump(meta, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_dir(tmp)
                versions = sorted(p.name for p in root.glob("v-*"))
                name = f"v-{int(versions[-1][2:]) + 1 if versions else 1:06d}"
                os.rename(tmp, root / name)
                _fsync_dir(root)
                with open(root / "CURRENT.tmp", "w", encoding="utf-8") as f:
                    f.write(name + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(root / "CURRENT.tmp", root / "CURRENT")
                _fsync_dir(root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._collect_garbage(root, keep={name, previous})
        logger.info("saved %d chunks to %s/%s", len(self._items), root, name)
        return root / name

    @staticmethod
    def _collect_garbage(root: Path, keep: set[str]) -> None:
        # Under the writer lock every temporary folder is a crashed writer's; the previous version
        # is kept so a reader that has just read the old CURRENT can still open it.
        for p in root.iterdir():
            if p.is_dir() and (p.name.startswith(".tmp-") or (p.name.startswith("v-") and p.name not in keep)):
                shutil.rmtree(p, ignore_errors=True)

    def _meta_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self._kind_used,
            "metric": "inner_product",
            "dimension": int(self.embedder.dimension),
            "embedder": {"name": _embedder_name(self.embedder), "dimension": int(self.embedder.dimension)},
            "chunking": {"chunk_tokens": self.chunk_tokens, "overlap": self.chunk_overlap},
            "corpus": self._meta.get("corpus"),
            "modified": bool(self._meta.get("modified", False)),
            "params": self._meta.get("params", {}),
            "count": len(self._items),
            "next_key": self._next_key,
            "deleted": sorted(self._deleted),
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _open(self, root: Path) -> None:
        faiss = _faiss()
        try:
            name = (root / "CURRENT").read_text(encoding="utf-8").strip()
            vdir = root / name
            meta = json.loads((vdir / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(f"index {root} cannot be opened ({e}); delete the folder to rebuild it") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{vdir} is not a ragkit FAISS index of format {FORMAT_VERSION} (delete it to rebuild)")
        self.embedder.warm_up()
        if int(meta["dimension"]) != int(self.embedder.dimension):
            raise StoreError(
                f"index {root} holds {meta['dimension']}-d vectors but the embedder makes {self.embedder.dimension}-d ones "
                "(use the embedder it was built with, or rebuild it)"
            )
        items: dict[int, Chunk] = {}
        with open(vdir / "items.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                items[int(row.pop("key"))] = Chunk(**row)
        flags = faiss.IO_FLAG_MMAP if self.mmap else 0
        try:
            index = faiss.read_index(str(vdir / "index.faiss"), flags)
            mapped = bool(flags)
        except RuntimeError:
            index = faiss.read_index(str(vdir / "index.faiss"))  # kinds that cannot be mapped load fully
            mapped = False
        deleted = {int(k) for k in meta.get("deleted", [])}
        if index.ntotal != len(items) + len(deleted):
            raise StoreError(f"index {vdir} is inconsistent ({index.ntotal} vectors for {len(items)} items); delete it to rebuild")
        with self._lock:
            self._index, self._items, self._deleted = index, items, deleted
            self._key_of = {c.id: k for k, c in items.items()}
            self._next_key = int(meta["next_key"])
            self._kind_used = meta["kind"]
            self._meta = {k: meta.get(k) for k in ("corpus", "params", "modified", "embedder", "chunking", "kind")}
            self._mapped = mapped
            self._opened_from = vdir
            self.version += 1

    # ---- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        self.warm_up()
        return len(self._items)

    @property
    def kind_used(self) -> str:
        """The kind of the loaded index (``flat``, ``hnsw`` or ``ivfpq``)."""
        self.warm_up()
        return self._kind_used

    @property
    def memory_mapped(self) -> bool:
        self.warm_up()
        return self._mapped

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (for benchmarks and advanced use)."""
        self.warm_up()
        return self._index

    def chunks(self) -> list[Chunk]:
        """Every chunk, in insertion order."""
        self.warm_up()
        with self._lock:
            return [self._items[k] for k in sorted(self._items)]

    def get(self, chunk_id: str) -> Chunk | None:
        self.warm_up()
        k = self._key_of.get(chunk_id)
        return None if k is None else self._items.get(k)

    def vectors(self, chunk_ids: Sequence[str]) -> Any:
        """The stored unit vectors of ``chunk_ids`` (rows of NaN for unknown ids or kinds that keep only codes).

        A reranker uses them to compare passages with the question without embedding them again.
        """
        import numpy as np

        self.warm_up()
        d = int(self.embedder.dimension)
        out = np.full((len(chunk_ids), d), np.nan, dtype="float32")
        if self._kind_used == "ivfpq":  # product-quantised: the exact vectors are not kept
            return out
        with self._lock:
            for row, cid in enumerate(chunk_ids):
                key = self._key_of.get(cid)
                if key is not None and key not in self._deleted:
                    out[row] = self._index.reconstruct(int(key))
        return out

    def search(self, query: str, k: int = 10, filters: Filters | None = None) -> list[Passage]:
        """The ``k`` chunks nearest to ``query`` by cosine similarity, best first."""
        self.warm_up()
        return self.search_vectors(self.embedder.embed([query]), k, filters)[0]

    def search_vectors(self, vectors: Any, k: int = 10, filters: Filters | None = None) -> list[list[Passage]]:
        """Like :meth:`search`, for already-embedded queries (one list per row of ``vectors``)."""
        import numpy as np

        self.warm_up()
        faiss = _faiss()
        q = np.ascontiguousarray(vectors, dtype="float32")
        with self._lock:
            index, items, deleted = self._index, self._items, set(self._deleted)
            n = index.ntotal
            if k <= 0 or not items:
                return [[] for _ in range(len(q))]
            allowed = None if not filters else {key for key, c in items.items() if matches_filters(c, filters)}
            if allowed is not None and not allowed:
                return [[] for _ in range(len(q))]
            self._tune(index)
            params = None
            fetch = min(n, k + len(deleted))
            if allowed is not None:
                if self._kind_used == "flat":  # exact: the selector filters inside the scan
                    selector = faiss.IDSelectorBatch(np.fromiter(allowed, dtype="int64"))
                    params = faiss.SearchParameters(sel=selector)
                else:  # approximate kinds: over-fetch, then filter
                    fetch = min(n, max(10 * k, k + len(deleted)) * max(1, n // max(1, len(allowed))))
            scores, keys = index.search(q, fetch, params=params) if params is not None else index.search(q, fetch)
        out = []
        for srow, krow in zip(scores, keys):
            row: list[Passage] = []
            for s, key in zip(srow.tolist(), krow.tolist()):
                if key < 0 or key in deleted or (allowed is not None and key not in allowed):
                    continue
                c = items.get(key)
                if c is None:
                    continue
                row.append(Passage(id=c.id, title=c.title, text=c.text, score=float(s), doc_id=c.doc_id, metadata=c.metadata))
                if len(row) == k:
                    break
            out.append(row)
        return out

    def _tune(self, index: Any) -> None:
        faiss = _faiss()
        inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = max(self.ef_search, 16)
        if hasattr(inner, "nprobe"):
            inner.nprobe = min(self.nprobe, getattr(inner, "nlist", self.nprobe))

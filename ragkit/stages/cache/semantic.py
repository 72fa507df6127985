"""A semantic cache: questions matched by embedding similarity, guarded against near-duplicates, kept in SQLite.

A lookup embeds the question with the configured :class:`~ragkit.models.base.Embedder`, searches an
exact FAISS inner-product index of the stored questions (one per namespace and kind), and takes the
most similar candidate at or above ``threshold`` that the meaning guard
(:mod:`ragkit.stages.cache.guard`) accepts. Candidates above the threshold that the guard refuses
are counted as *refusals*, not hits.

Entries carry the graph store's :meth:`~ragkit.stores.base.GraphStore.fingerprint`: when the data
changes, the next lookup deletes the entries made on the old data (counted as *invalidations*).
``ttl_seconds`` expires entries by age as well.

Storage is one SQLite file (``path``; in memory when unset) in WAL mode: every write is one
transaction, so a crash leaves the file as it was before or after that write, and entries survive
restarts. Vectors are stored as float32 bytes, payloads as JSON; nothing is pickled. The FAISS
indexes are rebuilt from the file on first use and follow rows other processes add.

Counters (hits, misses, refusals, invalidations, stores) are kept in the same file, per namespace:
:meth:`SemanticCache.stats`, or ``ragkit cache stats PIPELINE_FILE``.

Example:
    >>> from ragkit.stages.cache.semantic import SemanticCache
    >>> from ragkit.testing import HashingEmbedder
    >>> cache = SemanticCache(embedder=HashingEmbedder(), threshold=0.8)
    >>> cache.put("Who wrote Emma?", {"outputs": {"answer": "Jane Austen"}}, kind="answer", namespace="demo")
    >>> cache.lookup("who wrote Emma", kind="answer", namespace="demo").payload
    {'outputs': {'answer': 'Jane Austen'}}
    >>> cache.lookup("Who wrote Persuasion?", kind="answer", namespace="demo").hit
    False
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from ragkit.core.cache import CacheLookup, ResponseCache
from ragkit.core.component import register_resource
from ragkit.core.metrics import current_recorder
from ragkit.errors import MissingDependencyError, StoreError
from ragkit.models.base import Embedder
from ragkit.stages.cache.guard import meaning_differences
from ragkit.stores.base import GraphStore

logger = logging.getLogger(__name__)

__all__ = ["SemanticCache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    embedder TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    question TEXT NOT NULL,
    vector BLOB NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    UNIQUE (namespace, kind, embedder, question)
);
CREATE TABLE IF NOT EXISTS counters (
    namespace TEXT NOT NULL,
    event TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (namespace, event)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
FORMAT_VERSION = "1"
EVENTS = ("hits", "misses", "refusals", "invalidations", "stores")


@register_resource("semantic_cache")
class SemanticCache(ResponseCache):
    """Caches question→answer and question→query by embedding similarity, with a meaning guard.

    Args:
        embedder: the embedder resource that embeds questions.
        path: the SQLite file (created with its folder); unset keeps the cache in memory.
        store: the graph store whose fingerprint keys the entries (a data change invalidates them).
        threshold: the least cosine similarity of a hit (0-1).
        top_k: candidates above the threshold checked by the guard, best first.
        guard: compare negations, names, quotes, numbers, dates and comparisons before a hit.
        ttl_seconds: entries older than this are dropped; unset keeps them until the data changes.

    Example:
        >>> from ragkit.testing import HashingEmbedder
        >>> SemanticCache(embedder=HashingEmbedder()).threshold
        0.9
    """

    thread_safe: ClassVar[bool] = True
    """Lookups and writes hold one lock; SQLite serialises writers across processes."""

    def __init__(
        self,
        embedder: Embedder,
        path: str | None = None,
        store: GraphStore | None = None,
        threshold: float = 0.9,
        top_k: int = 5,
        guard: bool = True,
        ttl_seconds: float | None = None,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold must be a cosine similarity between -1 and 1 (e.g. 0.9)")
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive (or leave it unset)")
        self.embedder = embedder
        self.path = path
        self.store = store
        self.threshold = threshold
        self.top_k = top_k
        self.guard = guard
        self.ttl_seconds = ttl_seconds
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._indexes: dict[tuple[str, str], tuple[Any, int]] = {}

    # ---- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        self._open()

    def _open(self) -> None:
        # Opening the file does not need the embedder or the store: `ragkit cache stats` loads no model.
        if self._conn is not None:
            return
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise MissingDependencyError("faiss-cpu", "models", "the semantic cache") from None
        target = ":memory:"
        if self.path:
            p = Path(self.path).expanduser()
            p.parent.mkdir(parents=True, exist_ok=True)
            target = str(p)
        try:
            conn = sqlite3.connect(target, check_same_thread=False, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            if target != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            with _transaction(conn):
                for statement in _SCHEMA.split(";"):  # executescript() would commit the open transaction
                    if statement.strip():
                        conn.execute(statement)
                row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (FORMAT_VERSION,))
                elif row[0] != FORMAT_VERSION:
                    raise StoreError(f"{target} is a semantic cache of format {row[0]}, this ragkit reads {FORMAT_VERSION} (delete the file)")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the semantic cache {target}: {e} (check the path, or delete a damaged file)") from None
        self._conn = conn
        self._indexes = {}

    def close(self) -> None:
        super().close()
        self.teardown()  # the file may be open without a warm-up (stats, clear)

    def teardown(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._indexes = {}

    # ---- helpers --------------------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            with self._lock:
                self._open()
        assert self._conn is not None
        return self._conn

    def _embedder_id(self) -> str:
        e = self.embedder
        params = {k: v for k, v in e.init_params.items() if not hasattr(v, "warm_up")}
        return f"{type(e).type_name or type(e).__name__}:{json.dumps(params, sort_keys=True, default=str)}"

    def _fingerprint(self) -> str:
        return self.store.fingerprint() if self.store is not None else ""

    def _embed(self, text: str) -> Any:
        import numpy as np

        vec = np.asarray(self.embedder.embed([text]), dtype="float32")[0]
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else vec

    def _count(self, namespace: str, event: str, n: int = 1) -> None:
        if n:
            self._db.execute(
                "INSERT INTO counters (namespace, event, n) VALUES (?, ?, ?) ON CONFLICT (namespace, event) DO UPDATE SET n = n + excluded.n",
                (namespace, event, n),
            )

    def _index(self, namespace: str, kind: str, embedder: str) -> Any:
        """The FAISS index of (namespace, kind), brought up to date with rows added since."""
        import faiss
        import numpy as np

        key = (namespace, kind)
        index, last = self._indexes.get(key, (None, 0))
        rows = self._db.execute(
            "SELECT id, vector FROM entries WHERE namespace = ? AND kind = ? AND embedder = ? AND id > ? ORDER BY id",
            (namespace, kind, embedder, last),
        ).fetchall()
        if rows:
            vecs = np.stack([np.frombuffer(v, dtype="float32") for _, v in rows])
            if index is None:
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(int(vecs.shape[1])))
            index.add_with_ids(np.ascontiguousarray(vecs), np.asarray([i for i, _ in rows], dtype="int64"))
            last = rows[-1][0]
        self._indexes[key] = (index, last)
        return index

    def _expire(self, namespace: str, fingerprint: str) -> int:
        """Delete this namespace's entries made on other data or past their age; returns how many."""
        cur = self._db.execute("DELETE FROM entries WHERE namespace = ? AND fingerprint != ?", (namespace, fingerprint))
        n = cur.rowcount
        if self.ttl_seconds is not None:
            cur = self._db.execute("DELETE FROM entries WHERE namespace = ? AND created < ?", (namespace, time.time() - self.ttl_seconds))
            n += cur.rowcount
        if n:
            for key in [k for k in self._indexes if k[0] == namespace]:
                del self._indexes[key]  # rebuilt from the remaining rows on next use
        return n

    # ---- the cache API --------------------------------------------------------------------------
    def lookup(self, question: str, *, kind: str, namespace: str) -> CacheLookup:
        import numpy as np

        vec = self._embed(question)
        fingerprint = self._fingerprint()
        embedder = self._embedder_id()
        found = CacheLookup(hit=False)
        try:
            with self._lock, _transaction(self._db):
                found.invalidated = self._expire(namespace, fingerprint)
                self._count(namespace, "invalidations", found.invalidated)
                index = self._index(namespace, kind, embedder)
                candidates: list[tuple[float, int]] = []
                if index is not None and index.ntotal:
                    sims, ids = index.search(np.ascontiguousarray(vec[None, :]), min(self.top_k, index.ntotal))
                    candidates = [(float(s), int(i)) for s, i in zip(sims[0], ids[0]) if i >= 0 and s >= self.threshold]
                for sim, row_id in candidates:
                    row = self._db.execute("SELECT question, payload FROM entries WHERE id = ?", (row_id,)).fetchone()
                    if row is None:  # replaced or deleted by another process since the index was built
                        continue
                    reasons = meaning_differences(question, row[0]) if self.guard else []
                    if found.similarity is None:
                        found.similarity, found.matched = sim, row[0]
                    if reasons:
                        found.refused.append(f"{row[0]!r}: {'; '.join(reasons)}")
                        continue
                    found.hit, found.payload = True, json.loads(row[1])
                    found.similarity, found.matched = sim, row[0]
                    self._db.execute("UPDATE entries SET hits = hits + 1 WHERE id = ?", (row_id,))
                    break
                event = "hits" if found.hit else "refusals" if found.refused else "misses"
                self._count(namespace, event)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"semantic cache lookup failed: {e}") from None
        rec = current_recorder()
        if rec is not None:
            rec.note(f"{kind}_cache", "hit" if found.hit else "refused" if found.refused else "miss")
            if found.similarity is not None:
                rec.note(f"{kind}_similarity", round(found.similarity, 4))
                rec.note(f"{kind}_matched", found.matched)
            if found.refused:
                rec.note(f"{kind}_refused", found.refused)
            if found.invalidated:
                rec.note("invalidated", found.invalidated)
        return found

    def put(self, question: str, payload: dict[str, Any], *, kind: str, namespace: str) -> None:
        vec = self._embed(question)
        body = json.dumps(payload, default=str)
        try:
            with self._lock, _transaction(self._db):
                fingerprint = self._fingerprint()
                self._expire(namespace, fingerprint)
                old = self._db.execute(
                    "SELECT id FROM entries WHERE namespace = ? AND kind = ? AND embedder = ? AND question = ?",
                    (namespace, kind, self._embedder_id(), question),
                ).fetchone()
                if old is not None:  # replacing: its vector leaves the in-memory index too
                    self._db.execute("DELETE FROM entries WHERE id = ?", (old[0],))
                    self._indexes.pop((namespace, kind), None)
                self._db.execute(
                    "INSERT INTO entries (namespace, kind, embedder, fingerprint, question, vector, payload, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (namespace, kind, self._embedder_id(), fingerprint, question, vec.astype("float32").tobytes(), body, time.time()),
                )
                self._count(namespace, "stores")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"semantic cache store failed: {e}") from None

    def stats(self, namespace: str | None = None) -> dict[str, int]:
        """Counters since the file was created, and live entries; over all namespaces when None."""
        where, args = ("WHERE namespace = ?", (namespace,)) if namespace is not None else ("", ())
        with self._lock:
            out = {e: 0 for e in EVENTS}
            for event, n in self._db.execute(f"SELECT event, SUM(n) FROM counters {where} GROUP BY event", args):  # noqa: S608
                out[event] = int(n)
            out["entries"] = int(self._db.execute(f"SELECT COUNT(*) FROM entries {where}", args).fetchone()[0])  # noqa: S608
        return out

    def hit_rate(self, namespace: str | None = None) -> float:
        """Hits over lookups (hits + misses + refusals); 0 before any lookup."""
        s = self.stats(namespace)
        n = s["hits"] + s["misses"] + s["refusals"]
        return s["hits"] / n if n else 0.0

    def clear(self, namespace: str | None = None) -> int:
        with self._lock, _transaction(self._db):
            if namespace is None:
                n = self._db.execute("DELETE FROM entries").rowcount
                self._db.execute("DELETE FROM counters")
            else:
                n = self._db.execute("DELETE FROM entries WHERE namespace = ?", (namespace,)).rowcount
                self._db.execute("DELETE FROM counters WHERE namespace = ?", (namespace,))
            self._indexes = {}
        return n

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): one atomic write, serialised across processes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.nested = False

    def __enter__(self) -> sqlite3.Connection:
        self.nested = self.conn.in_transaction
        if not self.nested:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.nested:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")

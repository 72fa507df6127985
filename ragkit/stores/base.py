"""What every graph store offers: a schema, guarded queries with limits, and a data fingerprint.

Stores are :class:`~ragkit.core.component.Resource` objects: declared once in a pipeline's
``resources:`` block and shared by the stages that name them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragkit.core.component import Resource
from ragkit.core.workers import DaemonPool
from ragkit.errors import InputError, QueryTimeoutError

logger = logging.getLogger(__name__)

__all__ = [
    "GraphStore",
    "GraphSchema",
    "SchemaClass",
    "SchemaProperty",
    "QueryResult",
    "QueryLanguage",
    "GraphValue",
    "DEFAULT_TIMEOUT",
    "DEFAULT_ROW_LIMIT",
]

QueryLanguage = Literal["sparql", "cypher"]
DEFAULT_TIMEOUT = 10.0
"""Seconds a query may run before it is abandoned."""
DEFAULT_ROW_LIMIT = 1000
"""Rows returned at most; the result says when more existed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SchemaClass(_Frozen):
    """A class (RDF) or node label (property graph)."""

    name: str
    """The IRI (RDF) or the label (property graph)."""
    label: str | None = None
    comment: str | None = None
    count: int = 0


class SchemaProperty(_Frozen):
    """A predicate (RDF), relationship type or node property key (property graph)."""

    name: str
    label: str | None = None
    kind: Literal["object", "datatype", "relationship", "node_property"] = "object"
    domains: tuple[str, ...] = ()
    """Classes/labels of the subjects (or start nodes) seen with it."""
    ranges: tuple[str, ...] = ()
    """Classes/labels of objects (end nodes), or datatypes for literal values."""
    count: int = 0
    samples: tuple[str, ...] = ()


class GraphSchema(_Frozen):
    """The shape of a graph, read from its data by a store's ``schema()``."""

    language: QueryLanguage
    classes: tuple[SchemaClass, ...] = ()
    properties: tuple[SchemaProperty, ...] = ()
    prefixes: dict[str, str] = Field(default_factory=dict)

    def terms(self) -> set[str]:
        """Every class and property name (full IRIs for RDF, labels and keys for property graphs)."""
        return {c.name for c in self.classes} | {p.name for p in self.properties}

    def compact(self, iri: str) -> str:
        """``iri`` written with the schema's prefixes when one applies (``lib:Book``, ``:singer\\#name``)."""
        best, name = "", ""
        for pfx, ns in self.prefixes.items():
            local = _local_name(iri[len(ns) :]) if iri.startswith(ns) else None
            if local is not None and len(ns) > len(best):
                best, name = ns, f"{pfx}:{local}"
        return name if best else f"<{iri}>"


_PN_LOCAL_ESC = set("_~.-!$&'()*+,;=/?#@%")


def _local_name(s: str) -> str | None:
    """``s`` as a SPARQL prefixed-name local part (escaping what needs it), or None if impossible."""
    if not s or s[0] in "-." or s[-1] == ".":
        return None
    out = []
    for ch in s:
        if ch.isalnum() or ch in "_-":
            out.append(ch)
        elif ch in _PN_LOCAL_ESC:
            out.append("\\" + ch)
        else:
            return None
    return "".join(out)


class GraphValue(_Frozen):
    """A string value stored in the graph, with where it occurs (for linking question mentions)."""

    text: str
    property: str
    """The predicate IRI (RDF) or property key (property graph) holding the value."""
    cls: str | None = None
    """A class IRI / node label of the resources carrying it."""


class QueryResult(_Frozen):
    """Rows a query returned, as plain JSON-able values (RDF terms become their lexical form or IRI)."""

    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    truncated: bool = False
    """True when the store had more rows than the limit."""
    seconds: float = 0.0
    boolean: bool | None = None
    """The answer of an ASK query."""


class GraphStore(Resource):
    """A graph store: subclasses implement ``_schema``, ``_execute`` and ``fingerprint``.

    Every query passes the read-only guard before it reaches the store, runs with a time-out, and
    returns at most ``row_limit`` rows.
    """

    language: ClassVar[QueryLanguage] = "sparql"
    _max_workers: ClassVar[int] = 4

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, row_limit: int = DEFAULT_ROW_LIMIT) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        if row_limit <= 0:
            raise ValueError("row_limit must be positive")
        self.timeout = timeout
        self.row_limit = row_limit
        self._schema_cache: tuple[str, GraphSchema] | None = None
        self._values_cache: tuple[str, list[GraphValue]] | None = None
        self._pool: DaemonPool | None = None
        self._pool_lock = threading.Lock()

    # -- public API -----------------------------------------------------------------------------
    def query(self, query: str, *, timeout: float | None = None, limit: int | None = None) -> QueryResult:
        """Run a read-only query with a time-out and row limit.

        Raises:
            ReadOnlyViolationError: the query could modify the store (it is never sent).
            QueryParseError: the store could not parse it.
            QueryTimeoutError: it ran past ``timeout`` seconds.
            StoreUnavailableError: the store cannot be reached.
        """
        from ragkit.query.guard import check_read_only

        if not isinstance(query, str) or not query.strip():
            raise InputError("empty query (pass the text of a SPARQL or Cypher query)")
        check_read_only(query, self.language)
        self.warm_up()
        limit = self.row_limit if limit is None else min(limit, self.row_limit)
        timeout = self.timeout if timeout is None else timeout
        start = time.perf_counter()
        result = self._with_timeout(lambda: self._execute(query, limit), timeout, query)
        return result.model_copy(update={"seconds": time.perf_counter() - start})

    def schema(self, *, refresh: bool = False) -> GraphSchema:
        """The graph's schema, read from its data; cached until the fingerprint changes."""
        self.warm_up()
        fp = self.fingerprint()
        if not refresh and self._schema_cache is not None and self._schema_cache[0] == fp:
            return self._schema_cache[1]
        schema = self._with_timeout(self._schema, max(self.timeout, 60.0), "<schema introspection>")
        self._schema_cache = (fp, schema)
        return schema

    def values(self, *, max_values: int = 200_000, max_chars: int = 80) -> list[GraphValue]:
        """Short string values in the graph (names, titles, labels), cached until the data changes.

        Used to link the entities a question mentions to what the graph really stores. Stores that
        cannot list values return an empty list, and linking then finds nothing.
        """
        self.warm_up()
        fp = self.fingerprint()
        if self._values_cache is not None and self._values_cache[0] == fp:
            return self._values_cache[1]
        try:
            vals = self._with_timeout(lambda: self._values(max_values, max_chars), max(self.timeout, 120.0), "<value listing>")
        except NotImplementedError:
            logger.info("%s cannot list its values; entity linking is off for it", type(self).__name__)
            vals = []
        self._values_cache = (fp, vals)
        return vals

    def fingerprint(self) -> str:
        """A string that changes whenever the data changes (used to key caches and example banks)."""
        raise NotImplementedError

    def _values(self, max_values: int, max_chars: int) -> list[GraphValue]:
        raise NotImplementedError

    # -- for subclasses -------------------------------------------------------------------------
    def _execute(self, query: str, limit: int) -> QueryResult:
        raise NotImplementedError

    def _schema(self) -> GraphSchema:
        raise NotImplementedError

    def teardown(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def _with_timeout(self, fn: Any, timeout: float, query: str) -> Any:
        # Embedded engines have no cancellation hook, so the query runs in a worker thread and the
        # caller stops waiting at the deadline. A runaway query keeps its worker busy until it ends;
        # the pool is bounded so runaways cannot pile up without limit, and its threads are daemons
        # so a runaway never keeps the process from exiting.
        with self._pool_lock:
            if self._pool is None:
                self._pool = DaemonPool(self._max_workers, f"ragkit-{type(self).__name__}")
            pool = self._pool
        fut = pool.submit(fn)
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise QueryTimeoutError(
                f"query ran longer than {timeout:g} s and was abandoned (simplify it, add a LIMIT, or raise the store's timeout)"
            ) from None

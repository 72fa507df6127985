"""Property-graph stores queried in Cypher.

:class:`PropertyGraphStore` reads a schema out of any Cypher engine with a few generic queries
(labels, relationship types with their endpoints, property keys with value types and samples).
Two stores build on it:

* :class:`Neo4jStore` (``type: neo4j_store``): a Neo4j server (or anything speaking Bolt, such as
  ArcadeDB or Memgraph) through the official ``neo4j`` driver, in read transactions;
* :class:`KgliteStore` (``type: embedded_cypher_store``): the embedded default, on kglite (an
  in-process Cypher engine, Neo4j dialect). It loads Cypher scripts of ``CREATE`` statements, or
  RDF files mapped to a property graph by :func:`~ragkit.stores.loaders.rdf_to_cypher`.

Values come back as plain JSON-able Python: a node as the dict of its properties, a relationship as
the dict of its properties, a path as the list ``[node, relationship, node, ...]``, temporal values
as ISO strings.

The schema reports one :class:`~ragkit.stores.base.SchemaClass` per label, one ``"relationship"``
property per relationship type (``domains`` = start labels, ``ranges`` = end labels), and one
``"node_property"`` property per (label, key) with ``domains=(label,)`` and ``ranges`` = the value
types seen (``"STRING"``, ``"INTEGER"``, ``"FLOAT"``, ``"BOOLEAN"``, ``"LIST"``, ...). Properties of
relationships are reported the same way, as ``"node_property"`` entries whose ``domains`` holds the
relationship type (they come after the node properties). Key types, samples and per-key counts are
read from the first ``schema_sample_size`` nodes (relationships) of each label (type).

Example:
    >>> from ragkit.stores.cypher import KgliteStore
    >>> store = KgliteStore(path="movies.cypher")  # doctest: +SKIP
    >>> store.query("MATCH (m:Movie) WHERE m.released = 2003 RETURN count(*) AS n").rows  # doctest: +SKIP
    ((3,),)
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import itertools
import json
import logging
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

from ragkit.core.component import register_resource
from ragkit.errors import (
    ConfigError,
    InputError,
    MissingDependencyError,
    QueryError,
    QueryParseError,
    QueryTimeoutError,
    RagkitError,
    ReadOnlyViolationError,
    StoreError,
    StoreUnavailableError,
)
from ragkit.stores.base import (
    DEFAULT_ROW_LIMIT,
    DEFAULT_TIMEOUT,
    GraphSchema,
    GraphStore,
    GraphValue,
    QueryResult,
    SchemaClass,
    SchemaProperty,
)
from ragkit.stores.loaders import CYPHER_SUFFIXES, cypher_name, is_schema_statement, read_script

logger = logging.getLogger(__name__)

__all__ = ["EmbeddedCypherStore", "KgliteStore", "Neo4jStore", "PropertyGraphStore", "cypher_type_name"]

_INTROSPECTION_LIMIT = 10_000_000
# The time-out of the query running in this worker thread (set by PropertyGraphStore._with_timeout),
# so that engines with a native time-out can be given the caller's value.
_CURRENT_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar("ragkit_cypher_timeout", default=None)

_NEO4J_TEMPORAL_TYPES = {
    "Date": "DATE",
    "Time": "ZONED TIME",
    "DateTime": "ZONED DATETIME",
    "Duration": "DURATION",
}


def cypher_type_name(value: Any) -> str:
    """The Cypher type name of a value from a driver or embedded engine (``5`` -> ``"INTEGER"``)."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INTEGER"
    if isinstance(value, float):
        return "FLOAT"
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, (list, tuple)):
        return "LIST"
    if isinstance(value, dict):
        return "MAP"
    if isinstance(value, (bytes, bytearray)):
        return "BYTES"
    if isinstance(value, datetime.datetime):
        return "ZONED DATETIME" if value.tzinfo else "LOCAL DATETIME"
    if isinstance(value, datetime.date):
        return "DATE"
    if isinstance(value, datetime.time):
        return "ZONED TIME" if value.tzinfo else "LOCAL TIME"
    if isinstance(value, datetime.timedelta):
        return "DURATION"
    name = type(value).__name__
    if name in _NEO4J_TEMPORAL_TYPES:
        if name in ("DateTime", "Time") and getattr(value, "tzinfo", None) is None:
            return "LOCAL DATETIME" if name == "DateTime" else "LOCAL TIME"
        return _NEO4J_TEMPORAL_TYPES[name]
    if name.endswith("Point"):
        return "POINT"
    return name.upper()


def _sample_text(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


class PropertyGraphStore(GraphStore):
    """Base of Cypher stores: schema introspection written once in Cypher, for every engine.

    Subclasses implement :meth:`_run` (rows in the engine's own value types), :meth:`_plain` (one
    such value as plain Python) and ``fingerprint``; they may override the introspection steps
    (:meth:`_label_counts`, :meth:`_relationship_counts`, :meth:`_relationship_endpoints`,
    :meth:`_property_maps`, :meth:`_stored_keys`) where an engine has something faster or more exact.

    Example:
        >>> class MyStore(PropertyGraphStore):  # doctest: +SKIP
        ...     def _run(self, query, limit, timeout): ...
        ...     def fingerprint(self): return "v1"
    """

    language: ClassVar[str] = "cypher"  # type: ignore[assignment]
    schema_sample_size: ClassVar[int] = 1000
    """Nodes per label (relationships per type) read for property types, samples and counts."""
    samples_per_property: ClassVar[int] = 3

    # -- for subclasses -------------------------------------------------------------------------
    def _run(self, query: str, limit: int, timeout: float) -> tuple[tuple[str, ...], list[tuple[Any, ...]], bool]:
        """Run ``query``; return its columns, at most ``limit`` rows of engine values, and whether more existed."""
        raise NotImplementedError

    def _plain(self, value: Any) -> Any:
        """One engine value as plain JSON-able Python (nodes and relationships as property dicts)."""
        return _plain_python(value)

    def _current_timeout(self) -> float:
        return _CURRENT_TIMEOUT.get() or self.timeout

    # -- GraphStore -----------------------------------------------------------------------------
    def _with_timeout(self, fn: Any, timeout: float, query: str) -> Any:
        def bound() -> Any:
            token = _CURRENT_TIMEOUT.set(timeout)
            try:
                return fn()
            finally:
                _CURRENT_TIMEOUT.reset(token)

        return super()._with_timeout(bound, timeout, query)

    def _execute(self, query: str, limit: int) -> QueryResult:
        cols, rows, truncated = self._run(query, limit, self._current_timeout())
        plain = tuple(tuple(self._plain(v) for v in row) for row in rows)
        return QueryResult(columns=cols, rows=plain, truncated=truncated)

    def _select(self, query: str) -> list[tuple[Any, ...]]:
        """Run a trusted internal query without the guard or limits (introspection only); engine values."""
        return self._run(query, _INTROSPECTION_LIMIT, self._current_timeout())[1]

    # -- introspection steps --------------------------------------------------------------------
    def _label_counts(self) -> dict[str, int]:
        return {str(label): int(n) for label, n in self._select("MATCH (n) UNWIND labels(n) AS label RETURN label, count(*) AS n")}

    def _relationship_counts(self) -> dict[str, int]:
        return {str(t): int(n) for t, n in self._select("MATCH ()-[r]->() RETURN type(r) AS t, count(*) AS n")}

    def _relationship_endpoints(self) -> dict[str, tuple[set[str], set[str]]]:
        out: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
        for t, starts, ends in self._select("MATCH (a)-[r]->(b) RETURN DISTINCT type(r) AS t, labels(a) AS la, labels(b) AS lb"):
            out[str(t)][0].update(str(x) for x in starts or ())
            out[str(t)][1].update(str(x) for x in ends or ())
        return out

    def _property_maps(self, kind: str, name: str) -> list[dict[str, Any]]:
        """The property maps of up to ``schema_sample_size`` nodes of a label (kind ``"node"``) or relationships of a type."""
        k = self.schema_sample_size
        if kind == "node":
            q = f"MATCH (n:{cypher_name(name)}) WITH n LIMIT {k} RETURN properties(n) AS p"
        else:
            q = f"MATCH ()-[r:{cypher_name(name)}]->() WITH r LIMIT {k} RETURN properties(r) AS p"
        return [dict(p) for (p,) in self._select(q) if p]

    def _stored_keys(self, kind: str, name: str) -> set[str] | None:
        """Keys really stored on a label's nodes (a type's relationships), or None to keep every key seen."""
        return None

    def _key_properties(self, kind: str, name: str) -> list[SchemaProperty]:
        maps = self._property_maps(kind, name)
        keep = self._stored_keys(kind, name)
        types: dict[str, set[str]] = defaultdict(set)
        counts: dict[str, int] = defaultdict(int)
        samples: dict[str, list[str]] = defaultdict(list)
        for props in maps:
            for key, value in props.items():
                if value is None or (keep is not None and key not in keep):
                    continue
                counts[key] += 1
                types[key].add(cypher_type_name(value))
                text = _sample_text(self._plain(value))
                if len(samples[key]) < self.samples_per_property and text not in samples[key]:
                    samples[key].append(text)
        return [
            SchemaProperty(
                name=key,
                kind="node_property",
                domains=(name,),
                ranges=tuple(sorted(types[key])),
                count=counts[key],
                samples=tuple(samples[key]),
            )
            for key in sorted(counts)
        ]

    def _values(self, max_values: int, max_chars: int) -> list[GraphValue]:
        """Distinct short string values of each label's string properties (for entity linking)."""
        schema = self.schema()
        labels = {c.name for c in schema.classes}
        out: list[GraphValue] = []
        for p in schema.properties:
            if p.kind != "node_property" or "STRING" not in p.ranges:
                continue
            for label in p.domains:
                if label not in labels or len(out) >= max_values:
                    continue
                q = (
                    f"MATCH (n:{cypher_name(label)}) WHERE n.{cypher_name(p.name)} IS NOT NULL "
                    f"RETURN DISTINCT n.{cypher_name(p.name)} AS v LIMIT {max_values - len(out)}"
                )
                for (v,) in self._select(q):
                    if isinstance(v, str) and 0 < len(v) <= max_chars:
                        out.append(GraphValue(text=v, property=p.name, cls=label))
        return out

    def _schema(self) -> GraphSchema:
        labels = self._label_counts()
        rel_counts = self._relationship_counts()
        endpoints = self._relationship_endpoints()
        classes = tuple(SchemaClass(name=lab, count=n) for lab, n in sorted(labels.items(), key=lambda x: (-x[1], x[0])))
        props: list[SchemaProperty] = []
        for t, n in sorted(rel_counts.items(), key=lambda x: (-x[1], x[0])):
            starts, ends = endpoints.get(t, (set(), set()))
            props.append(SchemaProperty(name=t, kind="relationship", domains=tuple(sorted(starts)), ranges=tuple(sorted(ends)), count=n))
        for c in classes:
            props.extend(self._key_properties("node", c.name))
        for t in sorted(rel_counts):
            props.extend(self._key_properties("relationship", t))
        return GraphSchema(language="cypher", classes=classes, properties=tuple(props))


def _plain_python(value: Any) -> Any:
    """Plain Python values made JSON-able: containers recursively, temporal values as ISO strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain_python(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    iso = getattr(value, "iso_format", None)  # neo4j.time types
    if callable(iso):
        return iso()
    return str(value)


# ---- Neo4j over Bolt --------------------------------------------------------------------------


@register_resource("neo4j_store")
class Neo4jStore(PropertyGraphStore):
    """A Neo4j database (or another Bolt server: ArcadeDB, Memgraph) through the official driver.

    Queries run in read transactions (``execute_read`` in a ``READ_ACCESS`` session: Neo4j itself
    refuses writes there, on top of ragkit's guard), with the driver's transaction time-out, and at
    most ``row_limit`` records are fetched.

    Args:
        uri: the server, e.g. ``neo4j://localhost:7687`` or ``bolt://127.0.0.1:7687``.
        username: the user to log in as.
        password: the password; when not given, the ``NEO4J_PASSWORD`` environment variable is used
            if set, otherwise no authentication is sent.
        database: the database to query (the server's default when not given).
        timeout: seconds a query may run.
        row_limit: rows returned at most.

    Example:
        >>> store = Neo4jStore("neo4j://localhost:7687", password="secret")  # doctest: +SKIP
        >>> store.query("MATCH (n) RETURN count(n) AS n").rows  # doctest: +SKIP
        ((171,),)
    """

    def __init__(
        self,
        uri: str,
        username: str = "neo4j",
        password: str | None = None,
        database: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        row_limit: int = DEFAULT_ROW_LIMIT,
    ) -> None:
        super().__init__(timeout=timeout, row_limit=row_limit)
        if not isinstance(uri, str) or "://" not in uri:
            raise ValueError(f"uri {uri!r} is not a Bolt address (write e.g. neo4j://localhost:7687 or bolt://127.0.0.1:7687)")
        self.uri = uri
        self.username = username
        self._password = password
        self.database = database
        self._driver: Any = None

    def __repr__(self) -> str:
        db = f", database={self.database!r}" if self.database else ""
        return f"Neo4jStore(uri={self.uri!r}, username={self.username!r}{db})"

    def _where(self) -> str:
        return f"{self.uri}" + (f" (database {self.database!r})" if self.database else "")

    def setup(self) -> None:
        try:
            import neo4j
        except ImportError:
            raise MissingDependencyError("neo4j", "neo4j", "the Neo4j store") from None
        password = self._password if self._password is not None else os.environ.get("NEO4J_PASSWORD")
        auth = (self.username, password) if password is not None else None
        try:
            driver = neo4j.GraphDatabase.driver(
                self.uri,
                auth=auth,
                connection_timeout=min(self.timeout, 30.0),
                connection_acquisition_timeout=min(self.timeout, 60.0),
                max_transaction_retry_time=0.0,  # fail fast; the pipeline decides about retries
            )
        except (ValueError, neo4j.exceptions.ConfigurationError) as e:
            raise ConfigError(f"Neo4jStore: cannot use uri {self.uri!r}: {e} (write e.g. neo4j://localhost:7687)") from None
        try:
            driver.verify_connectivity()
        except Exception as e:
            driver.close()
            raise self._map_error(e, "") from None
        self._driver = driver
        logger.info("connected to %s", self._where())

    def teardown(self) -> None:
        super().teardown()
        if self._driver is not None:
            try:
                self._driver.close()
            except Exception as e:  # closing a driver whose server is gone may complain; nothing to do
                logger.debug("closing the Neo4j driver: %s", e)
            self._driver = None

    def write_session(self) -> Any:
        """A ``neo4j.Session`` in write mode on this store's database, for loading data.

        Queries through :meth:`query` stay read-only; this is the deliberate way in for test data and
        loaders (:func:`~ragkit.stores.loaders.load_cypher_script`). Close it when done.
        """
        import neo4j

        self.warm_up()
        return self._driver.session(database=self.database, default_access_mode=neo4j.WRITE_ACCESS)

    def fingerprint(self) -> str:
        self.warm_up()
        nodes = self._select("MATCH (n) RETURN count(n) AS n")[0][0]
        rels = self._select("MATCH ()-[r]->() RETURN count(r) AS n")[0][0]
        return f"{self.uri}/{self.database or ''}:{nodes}n-{rels}r"

    def _run(self, query: str, limit: int, timeout: float) -> tuple[tuple[str, ...], list[tuple[Any, ...]], bool]:
        import neo4j

        def work(tx: Any) -> tuple[tuple[str, ...], list[tuple[Any, ...]], bool]:
            result = tx.run(query)
            cols = tuple(result.keys())
            rows = [tuple(rec.values()) for rec in itertools.islice(result, limit + 1)]
            truncated = len(rows) > limit
            return cols, rows[:limit], truncated

        try:
            with self._driver.session(
                database=self.database, default_access_mode=neo4j.READ_ACCESS, fetch_size=max(1, min(limit + 1, 1000))
            ) as session:
                out: tuple[tuple[str, ...], list[tuple[Any, ...]], bool] = session.execute_read(neo4j.unit_of_work(timeout=timeout)(work))
                return out
        except RagkitError:
            raise
        except Exception as e:
            raise self._map_error(e, query) from None

    def _map_error(self, e: Exception, query: str) -> RagkitError:
        import neo4j.exceptions as nx

        code = str(getattr(e, "code", "") or "")
        msg = str(getattr(e, "message", None) or e)
        where = self._where()
        if isinstance(e, nx.AuthError) or ".Security.Unauthorized" in code or ".Security.AuthenticationRateLimit" in code:
            return StoreUnavailableError(f"Neo4j at {where} refused the login of user {self.username!r} (check the username and password)")
        if isinstance(e, (nx.ServiceUnavailable, nx.SessionExpired, OSError)):
            return StoreUnavailableError(f"cannot reach Neo4j at {where}: {msg} (check that the server is running and that 'uri' is right)")
        if "TransactionTimedOut" in code or "Transaction.Terminated" in code or "TransactionTerminated" in code:
            return QueryTimeoutError(
                f"query ran longer than {self._current_timeout():g} s and was stopped by the server (simplify it, add a LIMIT, or raise the store's timeout)"
            )
        if "DatabaseNotFound" in code:
            return StoreUnavailableError(f"Neo4j at {self.uri} has no database {self.database!r} (check the store's 'database')")
        if isinstance(e, nx.CypherSyntaxError) or code.endswith((".Statement.SyntaxError", ".Statement.SemanticError")):
            return QueryParseError(f"Cypher syntax error: {msg}", query=query, details=[msg])
        if "AccessMode" in code or ".Security.Forbidden" in code:
            return ReadOnlyViolationError(f"the server refused to write in a read-only transaction: {msg}", query=query, details=[msg])
        if isinstance(e, nx.ClientError) or code.startswith("Neo.ClientError.Statement"):
            return QueryError(f"the query cannot run: {msg}", query=query, details=[msg])
        if isinstance(e, (nx.Neo4jError, nx.DriverError)):
            return StoreError(f"Neo4j at {where} failed: {msg}")
        return StoreError(f"Neo4j at {where} failed: {type(e).__name__}: {msg}")

    def _plain(self, value: Any) -> Any:
        from neo4j.graph import Node, Path, Relationship

        if isinstance(value, (Node, Relationship)):
            return {str(k): self._plain(v) for k, v in value.items()}
        if isinstance(value, Path):  # nodes and relationships in path order: [n0, r0, n1, r1, n2, ...]
            out: list[Any] = []
            for node, rel in itertools.zip_longest(value.nodes, value.relationships):
                out.append(self._plain(node))
                if rel is not None:
                    out.append(self._plain(rel))
            return out
        if isinstance(value, (list, tuple)):
            return [self._plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self._plain(v) for k, v in value.items()}
        if type(value).__name__.endswith("Point"):
            return {"srid": getattr(value, "srid", None), "coordinates": [float(c) for c in value]}
        return _plain_python(value)


# ---- kglite (embedded) ------------------------------------------------------------------------

_KGLITE_NODE_KEYS = frozenset({"id", "labels", "properties"})
_KGLITE_REL_KEYS = frozenset({"id", "start", "end", "type", "properties"})
_KGLITE_PATH_KEYS = frozenset({"nodes", "relationships"})


@register_resource("embedded_cypher_store")
class KgliteStore(PropertyGraphStore):
    """The embedded Cypher store (kglite: an in-process engine speaking Neo4j's Cypher).

    Loads, once, every file in ``path``: Cypher scripts (``.cypher``, ``.cql``; a file of
    ``CREATE`` statements; index and constraint statements the engine cannot run are skipped) and RDF
    files (``.ttl``, ``.nt``, ``.rdf``, ...; mapped to a property graph by
    :func:`~ragkit.stores.loaders.rdf_to_cypher`: ``rdf:type`` -> labels, ``rdfs:label`` -> ``name``,
    literals -> properties, links -> relationships named by the predicate's local name). The graph is
    then made read-only. Queries run one at a time, with kglite's own time-out.

    Differences from Neo4j to know about: kglite treats ``name`` and ``title`` as aliases of a node's
    display title, so ``n.title`` on a node that only has ``name`` (and the reverse) returns that
    value instead of null, and ``n.id`` returns the node's id. ``keys()``/``properties()`` and
    returned nodes leave these virtual keys out, as Neo4j would.

    Args:
        path: a file, or a list of files, to load.
        timeout: seconds a query may run.
        row_limit: rows returned at most.

    Example:
        >>> store = KgliteStore(path="fixtures/library/graph.ttl")
        >>> store.query("MATCH (b:Book)-[:author]->(a:Author) RETURN count(*) AS n").rows  # doctest: +SKIP
        ((38,),)
    """

    thread_safe: ClassVar[bool] = True  # Queries run one at a time under a lock (a live kglite graph has one owner).

    def __init__(
        self,
        path: str | list[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        row_limit: int = DEFAULT_ROW_LIMIT,
    ) -> None:
        from ragkit.stores.rdf import RDF_FORMATS

        super().__init__(timeout=timeout, row_limit=row_limit)
        self.paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path or []]
        if not self.paths:
            raise ValueError("give 'path': a Cypher script (.cypher) or an RDF file (.ttl, .nt, ...) to load")
        for p in self.paths:
            suffix = Path(p).suffix.lower()
            if suffix not in CYPHER_SUFFIXES and suffix not in RDF_FORMATS:
                raise ValueError(
                    f"cannot tell what {p!r} holds (use a Cypher script: {', '.join(CYPHER_SUFFIXES)}; or RDF: {', '.join(RDF_FORMATS)})"
                )
        self._graph: Any = None
        self._lock = threading.Lock()
        self._fingerprint = ""
        self._node_keys: dict[str, set[str]] = {}
        self._rel_keys: dict[str, set[str]] = {}

    def setup(self) -> None:
        try:
            import kglite
        except ImportError:
            raise MissingDependencyError("kglite", "cypher", "the embedded Cypher store") from None
        # kglite prints advisory query warnings to stderr by default; ragkit logs them instead.
        if kglite.get_query_warning_policy() == "stderr":
            kglite.set_query_warning_policy("silent")
        graph = kglite.KnowledgeGraph()
        digest = hashlib.sha256()
        for p in self.paths:
            if not Path(p).is_file():
                raise InputError(f"graph file {p!r} does not exist (check the store's 'path')")
            digest.update(Path(p).read_bytes())
            statements = read_script(p)
            for line, stmt in statements:
                try:
                    graph.cypher(stmt)
                except kglite.KgError as e:
                    if is_schema_statement(stmt):
                        logger.info("skipped schema statement at %s:%d that kglite refused: %s", p, line, e)
                        continue
                    raise InputError(f"{p}:{line}: the statement starting {stmt[:60]!r} failed: {e} (fix the script)") from None
            logger.info("loaded %d statements from %s", len(statements), p)
        graph.read_only(True)
        schema = graph.schema()
        self._node_keys = {str(k): set(v.get("properties", {})) for k, v in schema.get("node_types", {}).items()}
        self._rel_keys = {str(k): set(v.get("properties", {})) for k, v in schema.get("connection_types", {}).items()}
        self._graph = graph
        self._fingerprint = f"{digest.hexdigest()[:16]}-{schema.get('node_count', 0)}n-{schema.get('edge_count', 0)}r"

    def teardown(self) -> None:
        super().teardown()
        self._graph = None

    def fingerprint(self) -> str:
        self.warm_up()
        return self._fingerprint

    def _run(self, query: str, limit: int, timeout: float) -> tuple[tuple[str, ...], list[tuple[Any, ...]], bool]:
        import kglite

        graph = self._graph
        if graph is None:
            raise StoreUnavailableError("the embedded Cypher store is closed (call warm_up() again)")
        with self._lock:  # a live kglite graph is single-owner: one query at a time
            try:
                view = graph.cypher(query, timeout_ms=max(1, int(timeout * 1000)), row_limit=limit + 1, hide_structural_keys=True)
                cols = tuple(str(c) for c in view.columns)
                rows = [tuple(r[c] for c in view.columns) for r in itertools.islice(view, limit + 1)]
                warnings = list(getattr(view, "warnings", None) or [])
            except kglite.CypherSyntaxError as e:
                raise QueryParseError(f"Cypher syntax error: {e}", query=query, details=[str(e)]) from None
            except kglite.CypherTimeoutError:
                raise QueryTimeoutError(
                    f"query ran longer than {timeout:g} s and was abandoned (simplify it, add a LIMIT, or raise the store's timeout)"
                ) from None
            except kglite.ReadOnlyError as e:
                raise ReadOnlyViolationError(f"the embedded store is read-only: {e}", query=query, details=[str(e)]) from None
            except (kglite.CypherError, kglite.SchemaError, kglite.ArgumentError, ValueError, TypeError) as e:
                raise QueryError(f"the query cannot run: {e}", query=query, details=[str(e)]) from None
            except kglite.KgError as e:
                raise StoreError(f"kglite failed: {e}") from None
        for w in warnings:
            logger.debug("kglite: %s", w)
        return cols, rows[:limit], len(rows) > limit

    def _plain(self, value: Any) -> Any:
        if isinstance(value, dict):
            keys = value.keys()
            if keys == _KGLITE_NODE_KEYS and isinstance(value.get("labels"), list):
                return self._entity_props(value["properties"], [self._node_keys.get(str(lab)) for lab in value["labels"]])
            if keys == _KGLITE_REL_KEYS and isinstance(value.get("properties"), dict):
                return self._entity_props(value["properties"], [self._rel_keys.get(str(value["type"]))])
            if keys == _KGLITE_PATH_KEYS and isinstance(value.get("nodes"), list):
                out: list[Any] = []
                nodes, rels = value["nodes"], value.get("relationships") or []
                for i, node in enumerate(nodes):
                    out.append(self._plain(node))
                    if i < len(rels):
                        out.append(self._plain(rels[i]))
                return out
            return {str(k): self._plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._plain(v) for v in value]
        return _plain_python(value)

    def _entity_props(self, props: Any, stored: list[set[str] | None]) -> dict[str, Any]:
        if not isinstance(props, dict):
            return {}
        known = [s for s in stored if s is not None]
        keep = set().union(*known) if known else None
        return {str(k): self._plain(v) for k, v in props.items() if keep is None or k in keep}

    # -- introspection: kglite knows exactly what each type stores ----------------------------------
    def _stored_keys(self, kind: str, name: str) -> set[str] | None:
        if kind != "node":
            return self._rel_keys.get(name)
        if name in self._node_keys:
            return self._node_keys[name]
        # a secondary label: its nodes store what their primary labels store
        rows = self._select(f"MATCH (n:{cypher_name(name)}) RETURN DISTINCT labels(n) AS l")
        known = [self._node_keys[str(lab)] for (labels,) in rows for lab in labels or () if str(lab) in self._node_keys]
        return set().union(*known) if known else None


EmbeddedCypherStore = KgliteStore
"""The embedded Cypher store under its role's name (``type: embedded_cypher_store``)."""

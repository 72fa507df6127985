"""An in-memory RDF store on rdflib: pure Python, no native code, slower than Oxigraph.

Useful where pyoxigraph cannot be installed, or to cross-check Oxigraph's answers. Values come out
exactly as :class:`~ragkit.stores.rdf.OxigraphStore` gives them: IRIs as full strings, literals as
their lexical form, numbers written the way Oxigraph writes them (``COUNT`` gives ``'594'``).

Example:
    >>> from ragkit.stores.rdflib_store import RdflibStore
    >>> store = RdflibStore(path="fixtures/library/graph.ttl")
    >>> store.query("SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }").rows  # doctest: +SKIP
    (('594',),)
"""

from __future__ import annotations

import hashlib
import logging
import math
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ragkit.core.component import register_resource
from ragkit.errors import InputError, MissingDependencyError, QueryParseError, ReadOnlyViolationError, StoreError
from ragkit.stores.base import DEFAULT_ROW_LIMIT, DEFAULT_TIMEOUT, QueryResult
from ragkit.stores.rdf import RDF_FORMATS, XSD, XSD_INTEGER_TYPES, RdfStore

logger = logging.getLogger(__name__)

__all__ = ["RdflibStore"]

# rdflib parses these into one Graph; quad formats (.nq, .trig) would need a Dataset, whose SPARQL
# evaluation fetches FROM/FROM NAMED graphs over the network or file system.
_TRIPLE_FORMATS = {"turtle": "turtle", "ntriples": "nt", "rdfxml": "xml", "n3": "n3"}

_DECIMAL = XSD + "decimal"
_FLOAT_TYPES = frozenset((XSD + "double", XSD + "float"))
_BOOLEAN = XSD + "boolean"
# Oxigraph's xsd:decimal is fixed-point with 18 fractional digits.
_DECIMAL_QUANTUM = Decimal(1).scaleb(-18)

# rdflib parses SPARQL with pyparsing, which is not thread-safe (RDFLib/rdflib#1282), and the
# read-only guard parses with rdflib too, in the caller's thread: both take the same lock.
from ragkit.query.guard import SPARQL_PARSE_LOCK as _PARSE_LOCK  # noqa: E402


@register_resource("rdflib_store")
class RdflibStore(RdfStore):
    """RDF files loaded into an in-memory rdflib graph, queried in SPARQL.

    Queries may use ``rdf:``, ``rdfs:``, ``xsd:``, ``owl:`` and rdflib's other common prefixes without
    declaring them; the graph's own prefixes (``lib:``) must be declared, as with Oxigraph. ``SERVICE``
    and ``FROM`` clauses are refused: rdflib would fetch their IRIs over the network.

    Args:
        path: RDF file(s) to load (``.ttl``, ``.nt``, ``.rdf``, ``.xml``, ``.n3``); a list loads several.
        timeout: seconds a query may run.
        row_limit: rows returned at most.

    Example:
        >>> store = RdflibStore(path="fixtures/library/graph.ttl")
        >>> store.query("ASK { ?s a <http://example.org/library/Book> }").boolean  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        path: str | list[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        row_limit: int = DEFAULT_ROW_LIMIT,
    ) -> None:
        super().__init__(timeout=timeout, row_limit=row_limit)
        if not path:
            raise ValueError("give 'path': the RDF file(s) to load")
        self.paths = [path] if isinstance(path, str) else list(path)
        for p in self.paths:
            fmt = RDF_FORMATS.get(Path(p).suffix.lower())
            if fmt is None:
                raise ValueError(f"cannot tell the RDF format of {p!r} (use one of: .ttl, .nt, .rdf, .xml, .n3)")
            if fmt not in _TRIPLE_FORMATS:
                raise ValueError(f"the rdflib store loads triples only, not {p!r} (convert it to Turtle, or use the oxigraph_store)")
        self._graph: Any = None
        self._fingerprint = ""
        self._declared_prefixes: dict[str, str] = {}

    def setup(self) -> None:
        try:
            import rdflib
        except ImportError:
            raise MissingDependencyError("rdflib", "rdf", "the rdflib store") from None
        # No built-in prefix bindings: the graph's namespaces then hold only what the files declare.
        graph = rdflib.Graph(bind_namespaces="none")
        digest = hashlib.sha256()
        for p in self.paths:
            path = Path(p)
            if not path.is_file():
                raise InputError(f"RDF file {p!r} does not exist (check the store's 'path')")
            data = path.read_bytes()
            digest.update(data)
            try:
                graph.parse(data=data, format=_TRIPLE_FORMATS[RDF_FORMATS[path.suffix.lower()]])
            except Exception as e:  # rdflib's parsers raise many unrelated exception types
                raise InputError(f"cannot parse {p}: {e} (fix the file, or check its extension matches its format)") from None
        self._declared_prefixes = {str(pfx): str(ns) for pfx, ns in graph.namespaces() if pfx}
        self._graph = graph
        self._fingerprint = digest.hexdigest()[:16] + f"-{len(graph)}"
        logger.debug("rdflib store loaded %d triples from %d file(s)", len(graph), len(self.paths))

    def teardown(self) -> None:
        super().teardown()
        self._graph = None

    def fingerprint(self) -> str:
        self.warm_up()
        return self._fingerprint

    def _execute(self, query: str, limit: int) -> QueryResult:
        from pyparsing import ParseBaseException
        from rdflib.plugins.sparql import prepareQuery

        try:
            with _PARSE_LOCK:
                prepared = prepareQuery(query)
        except ParseBaseException as e:
            raise QueryParseError(f"SPARQL syntax error: {e}", query=query, details=[str(e)]) from None
        except Exception as e:  # translation errors (unknown prefix, bad aggregate) are plain Exceptions
            raise QueryParseError(f"SPARQL error: {e}", query=query, details=[str(e)]) from None
        _refuse_remote_access(prepared, query)
        try:
            res = self._graph.query(prepared)
            if res.type == "ASK":
                answer = bool(res.askAnswer)
                return QueryResult(columns=("answer",), rows=((answer,),), boolean=answer)
            if res.type == "SELECT":
                cols = tuple(str(v) for v in (res.vars or ()))
                rows: list[tuple[Any, ...]] = []
                truncated = False
                for row in res:
                    if len(rows) >= limit:
                        truncated = True
                        break
                    rows.append(tuple(_lexical(t) for t in row))
                return QueryResult(columns=cols, rows=tuple(rows), truncated=truncated)
            triples: list[tuple[Any, ...]] = []
            truncated = False
            for s, p, o in res:
                if len(triples) >= limit:
                    truncated = True
                    break
                triples.append((_lexical(s), _lexical(p), _lexical(o)))
            return QueryResult(columns=("subject", "predicate", "object"), rows=tuple(triples), truncated=truncated)
        except Exception as e:
            raise StoreError(f"SPARQL evaluation failed in rdflib: {e}") from None


def _refuse_remote_access(prepared: Any, query: str) -> None:
    """Refuse SERVICE and FROM: rdflib would dereference their IRIs (network or local files)."""
    from rdflib.plugins.sparql.parserutils import CompValue

    algebra = prepared.algebra
    if getattr(algebra, "datasetClause", None):
        raise ReadOnlyViolationError(
            "FROM / FROM NAMED are not run by the rdflib store: rdflib would load the named IRIs "
            "(remove the FROM clause; the store queries its loaded files)",
            query=query,
            details=["FROM"],
        )
    seen: set[int] = set()
    stack: list[Any] = [algebra]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, CompValue):
            if node.name == "ServiceGraphPattern":
                raise ReadOnlyViolationError(
                    "SERVICE is not run by the rdflib store: it would send a query over the network (remove the SERVICE clause)",
                    query=query,
                    details=["SERVICE"],
                )
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def _lexical(term: Any) -> Any:
    """An rdflib term as Oxigraph's ``.value`` gives it: IRIs in full, literals in lexical form."""
    if term is None:
        return None
    from rdflib import Literal

    if isinstance(term, Literal) and term.datatype is not None:
        return _oxigraph_lexical(term)
    return str(term)


def _oxigraph_lexical(lit: Any) -> str:
    """A typed literal's lexical form as Oxigraph writes it (Oxigraph stores numbers as values).

    Ill-typed literals (``"abc"^^xsd:integer``) keep their text, as in Oxigraph.
    """
    dt = str(lit.datatype)
    value = lit.value
    text = str(lit)
    if value is None:
        return text
    try:
        if dt in XSD_INTEGER_TYPES:
            return str(int(value))
        if dt == _DECIMAL:
            return _decimal_text(Decimal(value) if not isinstance(value, Decimal) else value)
        if dt in _FLOAT_TYPES:
            return _double_text(float(value))
        if dt == _BOOLEAN:
            return "true" if value else "false"
    except (ValueError, TypeError, InvalidOperation, OverflowError):
        return text
    return text


def _decimal_text(d: Decimal) -> str:
    if not d.is_finite():
        return str(d)
    if d.as_tuple().exponent < -18:  # type: ignore[operator]
        d = d.quantize(_DECIMAL_QUANTUM, rounding=ROUND_DOWN)
    out = format(d, "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return "0" if out in ("-0", "") else out


def _double_text(f: float) -> str:
    # Oxigraph prints doubles like Rust's Display: shortest round-trip digits, never an exponent.
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "INF" if f > 0 else "-INF"
    out = format(Decimal(repr(f)), "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return out

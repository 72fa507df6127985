"""RDF graph stores queried in SPARQL.

:class:`RdfStore` reads a schema out of any SPARQL-answering backend with a few aggregate queries;
:class:`OxigraphStore` is the embedded default (pyoxigraph: fast, in memory or on disk).

Example:
    >>> from ragkit.stores.rdf import OxigraphStore
    >>> store = OxigraphStore(path="fixtures/library/graph.ttl")
    >>> store.query("SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }").rows  # doctest: +SKIP
    ((594,),)
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

from ragkit.core.component import register_resource
from ragkit.errors import InputError, MissingDependencyError, QueryParseError, StoreError
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

logger = logging.getLogger(__name__)

__all__ = ["RdfStore", "OxigraphStore", "RDF_FORMATS", "WELL_KNOWN_PREFIXES"]

RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
RDFS = "http://www.w3.org/2000/01/rdf-schema#"
XSD = "http://www.w3.org/2001/XMLSchema#"
WELL_KNOWN_PREFIXES = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "rdfs": RDFS,
    "xsd": XSD,
    "owl": "http://www.w3.org/2002/07/owl#",
}
# Vocabulary that describes the schema itself; it is not data a question asks about.
_META_NAMESPACES = ("http://www.w3.org/1999/02/22-rdf-syntax-ns#", RDFS, "http://www.w3.org/2002/07/owl#")
XSD_INTEGER_TYPES = frozenset(
    XSD + t
    for t in (
        "integer", "int", "long", "short", "byte", "nonNegativeInteger", "nonPositiveInteger", "positiveInteger",
        "negativeInteger", "unsignedLong", "unsignedInt", "unsignedShort", "unsignedByte",
    )
)  # fmt: skip
"""The XSD datatypes whose values are integers."""
RDF_FORMATS = {".ttl": "turtle", ".nt": "ntriples", ".rdf": "rdfxml", ".xml": "rdfxml", ".nq": "nquads", ".trig": "trig", ".n3": "n3"}


def _lexical(term: Any) -> Any:
    """An RDF term from pyoxigraph as a plain value: IRIs and literals as their string form."""
    if term is None:
        return None
    return getattr(term, "value", str(term))


class RdfStore(GraphStore):
    """Base of SPARQL stores: schema introspection written once in SPARQL, for every backend."""

    language: ClassVar[str] = "sparql"  # type: ignore[assignment]
    samples_per_property: ClassVar[int] = 3

    def _select(self, query: str) -> list[tuple[Any, ...]]:
        """Run a trusted internal query without the guard or limits (introspection only)."""
        return list(self._execute(query, 1_000_000).rows)

    def _schema(self) -> GraphSchema:
        classes = {
            c: int(n)
            for c, n in self._select("SELECT ?c (COUNT(DISTINCT ?s) AS ?n) WHERE { ?s a ?c . FILTER(isIRI(?c)) } GROUP BY ?c")
        }
        preds = {p: int(n) for p, n in self._select("SELECT ?p (COUNT(*) AS ?n) WHERE { ?s ?p ?o } GROUP BY ?p")}
        labels: dict[str, str] = {}
        comments: dict[str, str] = {}
        for s, lab in self._select(f"SELECT ?s ?l WHERE {{ ?s <{RDFS}label> ?l . {{ ?s a ?c }} UNION {{ ?x ?s ?y }} UNION {{ ?x a ?s }} }}"):
            labels.setdefault(s, lab)
        for s, com in self._select(f"SELECT ?s ?c WHERE {{ ?s <{RDFS}comment> ?c }}"):
            comments.setdefault(s, com)
        domains: dict[str, list[str]] = defaultdict(list)
        for p, c in self._select("SELECT DISTINCT ?p ?c WHERE { ?s ?p ?o . ?s a ?c . FILTER(isIRI(?c)) }"):
            domains[p].append(c)
        ranges: dict[str, list[str]] = defaultdict(list)
        for p, c in self._select("SELECT DISTINCT ?p ?c WHERE { ?s ?p ?o . ?o a ?c . FILTER(isIRI(?c)) }"):
            ranges[p].append(c)
        literal_types: dict[str, list[str]] = defaultdict(list)
        for p, dt in self._select("SELECT DISTINCT ?p (DATATYPE(?o) AS ?dt) WHERE { ?s ?p ?o . FILTER(isLiteral(?o)) }"):
            if dt:
                literal_types[p].append(dt)
        samples: dict[str, list[str]] = defaultdict(list)
        k = self.samples_per_property
        for p in preds:
            if p.startswith(_META_NAMESPACES) and p != f"{RDFS}label":
                continue
            rows = self._select(
                f"SELECT DISTINCT ?v WHERE {{ ?s <{p}> ?o . OPTIONAL {{ ?o <{RDFS}label> ?l }} BIND(COALESCE(?l, ?o) AS ?v) }} ORDER BY ?v LIMIT {k}"
            )
            samples[p] = [str(r[0]) for r in rows if r[0] is not None]

        out_classes = tuple(
            SchemaClass(name=c, label=labels.get(c), comment=comments.get(c), count=n)
            for c, n in sorted(classes.items(), key=lambda x: (-x[1], x[0]))
            if not c.startswith(_META_NAMESPACES)
        )
        out_props = []
        for p, n in sorted(preds.items(), key=lambda x: (-x[1], x[0])):
            if p.startswith(_META_NAMESPACES) and p not in (RDF_TYPE, f"{RDFS}label"):
                continue
            is_literal = bool(literal_types.get(p)) and not ranges.get(p)
            out_props.append(
                SchemaProperty(
                    name=p,
                    label=labels.get(p),
                    kind="datatype" if is_literal else "object",
                    domains=tuple(sorted(d for d in domains.get(p, []) if not d.startswith(_META_NAMESPACES))),
                    ranges=tuple(sorted(literal_types.get(p, []) if is_literal else ranges.get(p, []))),
                    count=n,
                    samples=tuple(samples.get(p, [])),
                )
            )
        return GraphSchema(language="sparql", classes=out_classes, properties=tuple(out_props), prefixes=self._prefixes(out_classes, out_props))

    def _values(self, max_values: int, max_chars: int) -> list[GraphValue]:
        rows = self._select(
            "SELECT ?v ?p (SAMPLE(?c) AS ?cls) WHERE { ?s ?p ?v . "
            f"FILTER(isLiteral(?v) && STRLEN(STR(?v)) <= {max_chars} && (DATATYPE(?v) = <{XSD}string> || LANG(?v) != \"\")) "
            # labels of the schema itself (classes, properties) name no entity a question asks about
            f"FILTER NOT EXISTS {{ ?s a ?meta . FILTER(?meta IN (<{RDFS}Class>, <http://www.w3.org/2002/07/owl#Class>, "
            "<http://www.w3.org/1999/02/22-rdf-syntax-ns#Property>, <http://www.w3.org/2002/07/owl#ObjectProperty>, "
            "<http://www.w3.org/2002/07/owl#DatatypeProperty>)) } "
            "FILTER NOT EXISTS { ?x a ?s } "
            f"OPTIONAL {{ ?s a ?c }} }} GROUP BY ?v ?p LIMIT {max_values}"
        )
        return [GraphValue(text=str(v), property=str(p), cls=c) for v, p, c in rows if v]

    def _prefixes(self, classes: tuple[SchemaClass, ...], props: list[SchemaProperty]) -> dict[str, str]:
        """Well-known prefixes plus one per namespace that the graph's own terms live in."""
        out = dict(WELL_KNOWN_PREFIXES)
        for pfx, ns in getattr(self, "_declared_prefixes", {}).items():
            if pfx and ns not in out.values():
                out[pfx] = ns
        namespaces = set()
        for name in [c.name for c in classes] + [p.name for p in props]:
            cut = max(name.rfind("#"), name.rfind("/"))
            if cut > 0:
                namespaces.add(name[: cut + 1])
        for ns in sorted(namespaces):
            if ns in out.values():
                continue
            base = "".join(ch for ch in ns.rstrip("/#").rsplit("/", 1)[-1].lower() if ch.isalnum())[:8] or "ns"
            if not base[0].isalpha():
                base = "ns" + base
            name, i = base, 2
            while name in out:
                name, i = f"{base}{i}", i + 1
            out[name] = ns
        return out


@register_resource("oxigraph_store")
class OxigraphStore(RdfStore):
    """Embedded Oxigraph (pyoxigraph): the default RDF store.

    Args:
        path: RDF file(s) to load (``.ttl``, ``.nt``, ``.rdf``, ``.nq``, ``.trig``); a list loads several.
        directory: an on-disk Oxigraph database to open instead of (or in addition to) files.
        timeout: seconds a query may run.
        row_limit: rows returned at most.

    Example:
        >>> store = OxigraphStore(path="fixtures/library/graph.ttl")
        >>> store.schema().classes[0].name  # doctest: +SKIP
        'http://example.org/library/Book'
    """

    thread_safe: ClassVar[bool] = True  # Oxigraph answers concurrent read queries.

    def __init__(
        self,
        path: str | list[str] | None = None,
        directory: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        row_limit: int = DEFAULT_ROW_LIMIT,
    ) -> None:
        super().__init__(timeout=timeout, row_limit=row_limit)
        if path is None and directory is None:
            raise ValueError("give 'path' (an RDF file) or 'directory' (an Oxigraph database folder)")
        self.paths = [path] if isinstance(path, str) else list(path or [])
        for p in self.paths:
            if Path(p).suffix.lower() not in RDF_FORMATS:
                raise ValueError(f"cannot tell the RDF format of {p!r} (use one of: {', '.join(RDF_FORMATS)})")
        self.directory = directory
        self._store: Any = None
        self._fingerprint = ""
        self._declared_prefixes: dict[str, str] = {}

    def setup(self) -> None:
        try:
            import pyoxigraph as ox
        except ImportError:
            raise MissingDependencyError("pyoxigraph", "rdf", "the Oxigraph store") from None
        store = ox.Store(self.directory) if self.directory else ox.Store()
        digest = hashlib.sha256()
        for p in self.paths:
            path = Path(p)
            if not path.is_file():
                raise InputError(f"RDF file {p!r} does not exist (check the store's 'path')")
            fmt = {
                "turtle": ox.RdfFormat.TURTLE,
                "ntriples": ox.RdfFormat.N_TRIPLES,
                "rdfxml": ox.RdfFormat.RDF_XML,
                "nquads": ox.RdfFormat.N_QUADS,
                "trig": ox.RdfFormat.TRIG,
                "n3": ox.RdfFormat.N3,
            }[RDF_FORMATS[path.suffix.lower()]]
            data = path.read_bytes()
            digest.update(data)
            try:
                store.bulk_load(data, format=fmt)
            except SyntaxError as e:
                raise InputError(f"cannot parse {p}: {e} (fix the file, or check its extension matches its format)") from None
            if fmt == ox.RdfFormat.TURTLE:
                self._declared_prefixes.update(_turtle_prefixes(data.decode("utf-8", "replace")))
        self._store = store
        self._fingerprint = digest.hexdigest()[:16] + f"-{len(store)}"

    def teardown(self) -> None:
        super().teardown()
        self._store = None

    def fingerprint(self) -> str:
        self.warm_up()
        if self.directory:  # an on-disk database can change under us: count it each time
            return f"{self._fingerprint}-{len(self._store)}"
        return self._fingerprint

    def _execute(self, query: str, limit: int) -> QueryResult:
        import pyoxigraph as ox

        try:
            res = self._store.query(query)
        except SyntaxError as e:
            raise QueryParseError(f"SPARQL syntax error: {e}", query=query, details=[str(e)]) from None
        except OSError as e:
            raise StoreError(f"Oxigraph failed: {e}") from None
        if isinstance(res, bool) or isinstance(res, ox.QueryBoolean):
            return QueryResult(columns=("answer",), rows=((bool(res),),), boolean=bool(res))
        if isinstance(res, ox.QuerySolutions):
            cols = tuple(v.value for v in res.variables)
            rows = []
            truncated = False
            try:
                for sol in res:
                    if len(rows) >= limit:
                        truncated = True
                        break
                    rows.append(tuple(_lexical(sol[i]) for i in range(len(cols))))
            except (OSError, SyntaxError, ValueError) as e:
                raise StoreError(f"SPARQL evaluation failed: {e}") from None
            return QueryResult(columns=cols, rows=tuple(rows), truncated=truncated)
        # CONSTRUCT / DESCRIBE: triples as rows
        rows = []
        truncated = False
        for t in res:
            if len(rows) >= limit:
                truncated = True
                break
            rows.append((_lexical(t.subject), _lexical(t.predicate), _lexical(t.object)))
        return QueryResult(columns=("subject", "predicate", "object"), rows=tuple(rows), truncated=truncated)


def _turtle_prefixes(text: str) -> dict[str, str]:
    import re

    return {m.group(1): m.group(2) for m in re.finditer(r"(?im)^\s*@?prefix\s+([A-Za-z][\w-]*)?:\s*<([^>]*)>", text) if m.group(1)}

"""Getting data into property-graph stores: Cypher scripts, and RDF mapped to a property graph.

* :func:`split_cypher_statements` cuts a Cypher script at the semicolons that end statements
  (never at one inside a string, a backticked name or a comment).
* :func:`load_cypher_script` runs a script against a Neo4j driver or session, a
  :class:`~ragkit.stores.cypher.Neo4jStore`, a kglite graph or an ArcadeDB database. Neo4j-5 schema
  statements (``CREATE CONSTRAINT``/``CREATE INDEX``) that an engine cannot run are skipped.
* :func:`rdf_to_cypher` maps an RDF file to a Cypher script (rules in its docstring), so RDF data
  can be asked in Cypher.

Example:
    >>> from ragkit.stores.loaders import split_cypher_statements
    >>> split_cypher_statements("CREATE (:A {s: 'x;y'}); MATCH (n) RETURN n")
    ["CREATE (:A {s: 'x;y'})", 'MATCH (n) RETURN n']
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from ragkit.errors import InputError, MissingDependencyError, RagkitError
from ragkit.stores.rdf import XSD_INTEGER_TYPES

logger = logging.getLogger(__name__)

__all__ = [
    "CYPHER_SUFFIXES",
    "cypher_name",
    "cypher_string",
    "is_schema_statement",
    "load_cypher_script",
    "local_name",
    "rdf_to_cypher",
    "read_script",
    "split_cypher_statements",
]

CYPHER_SUFFIXES = (".cypher", ".cql", ".cyp")
"""File name endings read as Cypher scripts."""

SchemaStatements = Literal["try", "skip", "run"]

_SCHEMA_STATEMENT = re.compile(r"^\s*(?:CREATE|DROP)\s+(?:OR\s+REPLACE\s+)?(?:[A-Za-z]+\s+){0,2}?(?:INDEX|CONSTRAINT)\b", re.IGNORECASE)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Words that Cypher parsers may reserve; names spelled like them are backticked.
_RESERVED = frozenset(
    """
    ALL AND AS ASC ASCENDING BY CALL CASE CONSTRAINT CONTAINS COUNT CREATE CSV DELETE DESC DESCENDING
    DETACH DISTINCT DO DROP ELSE END ENDS EXISTS FALSE FOR FOREACH FROM IN INDEX IS LIMIT LOAD MANDATORY
    MATCH MERGE NODETACH NOT NULL OF ON OPTIONAL OR ORDER REMOVE REQUIRE RETURN SCALAR SET SKIP STARTS
    THEN TRUE UNION UNIQUE UNWIND USE WHEN WHERE WITH XOR YIELD
    """.split()
)


# ---- Cypher scripts ---------------------------------------------------------------------------


def _split_with_lines(text: str) -> list[tuple[int, str]]:
    """Statements of ``text`` with the 1-based line each starts on; comments are dropped."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    started = False  # whether the statement in buf has anything but white space yet
    start_line = line = 1
    i, n = 0, len(text)
    quote: str | None = None
    while i < n:
        c = text[i]
        if quote is not None:  # inside a string or a backticked name
            buf.append(c)
            line += c == "\n"
            if c == "\\" and quote != "`" and i + 1 < n:
                buf.append(text[i + 1])
                line += text[i + 1] == "\n"
                i += 2
                continue
            if c == quote:
                if quote == "`" and text.startswith("`", i + 1):  # `` inside a name is a literal backtick
                    buf.append("`")
                    i += 2
                    continue
                quote = None
            i += 1
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            end = n if j < 0 else j + 2
            line += text.count("\n", i, end)
            buf.append(" ")
            i = end
            continue
        if c == ";":
            if started:
                out.append((start_line, "".join(buf).strip()))
            buf.clear()
            started = False
            i += 1
            continue
        if not started and not c.isspace():
            started, start_line = True, line
        if c in "'\"`":
            quote = c
        line += c == "\n"
        buf.append(c)
        i += 1
    if started:
        out.append((start_line, "".join(buf).strip()))
    return out


def split_cypher_statements(text: str) -> list[str]:
    """Cut a Cypher script into statements at the semicolons that end them.

    Semicolons inside ``'...'``/``"..."`` strings (with backslash escapes), backticked names and
    ``//``/``/* */`` comments do not split; comments are removed; empty statements are dropped.

    Example:
        >>> split_cypher_statements("CREATE (:A {s: 'a;b'}); /* x; */ RETURN `we;ird`;")
        ["CREATE (:A {s: 'a;b'})", 'RETURN `we;ird`']
    """
    return [s for _, s in _split_with_lines(text)]


def is_schema_statement(statement: str) -> bool:
    """Whether ``statement`` creates or drops an index or constraint (``CREATE CONSTRAINT ...``)."""
    return bool(_SCHEMA_STATEMENT.match(statement))


def _runner(target: Any) -> tuple[Callable[[str], None], Callable[[], None]]:
    """A function that runs one write statement on ``target``, and one that finishes up."""
    from ragkit.stores.cypher import KgliteStore, Neo4jStore

    if isinstance(target, Neo4jStore):
        session = target.write_session()

        def run_store(stmt: str) -> None:
            session.run(stmt).consume()

        return run_store, session.close
    if isinstance(target, KgliteStore):
        raise InputError("an embedded Cypher store loads its data from its 'path' and is read-only afterwards (list the script there)")
    if hasattr(target, "cypher") and callable(target.cypher):  # kglite.KnowledgeGraph

        def run_kglite(stmt: str) -> None:
            target.cypher(stmt)

        return run_kglite, lambda: None
    if hasattr(target, "verify_connectivity") and hasattr(target, "session"):  # neo4j.Driver
        session = target.session()

        def run_driver(stmt: str) -> None:
            session.run(stmt).consume()

        return run_driver, session.close
    if hasattr(target, "run") and callable(target.run):  # neo4j.Session / Transaction

        def run_session(stmt: str) -> None:
            res = target.run(stmt)
            if hasattr(res, "consume"):
                res.consume()

        return run_session, lambda: None
    if hasattr(target, "command") and hasattr(target, "transaction"):  # arcadedb_embedded.Database

        def run_arcadedb(stmt: str) -> None:
            with target.transaction():
                target.command("opencypher", stmt)

        return run_arcadedb, lambda: None
    raise TypeError(
        f"cannot load a Cypher script into a {type(target).__name__} "
        "(pass a Neo4jStore, a neo4j Driver or Session, a kglite KnowledgeGraph or an arcadedb Database)"
    )


def load_cypher_script(
    target: Any,
    path: str | Path,
    *,
    schema_statements: SchemaStatements = "try",
) -> int:
    """Run every statement of a Cypher script (a file of ``CREATE`` statements) against ``target``.

    Args:
        target: a :class:`~ragkit.stores.cypher.Neo4jStore` (its driver, in a write session: this
            is how test data gets into a store that is otherwise read-only), a ``neo4j.Driver``,
            ``neo4j.Session`` or transaction, a ``kglite.KnowledgeGraph``, or an
            ``arcadedb_embedded.Database`` (run as ``opencypher``).
        path: the script, or an RDF file (``.ttl``, ``.nt``, ...) to map with :func:`rdf_to_cypher`.
        schema_statements: what to do with ``CREATE``/``DROP`` ``INDEX``/``CONSTRAINT`` statements:
            ``"try"`` runs them and skips those the engine refuses, ``"skip"`` leaves them out,
            ``"run"`` runs them and fails on an error.

    Returns:
        The number of statements that ran.

    Raises:
        InputError: the file does not exist, or a data statement failed (the message names it).

    Example:
        >>> import kglite  # doctest: +SKIP
        >>> g = kglite.KnowledgeGraph()  # doctest: +SKIP
        >>> load_cypher_script(g, "movies.cypher")  # doctest: +SKIP
        5
    """
    statements = read_script(path)
    run, finish = _runner(target)
    done = 0
    try:
        for line, stmt in statements:
            schema = is_schema_statement(stmt)
            if schema and schema_statements == "skip":
                continue
            try:
                run(stmt)
            except RagkitError:
                raise
            except Exception as e:
                if schema and schema_statements == "try":
                    logger.info("skipped schema statement at %s:%d that the engine refused: %s", path, line, e)
                    continue
                raise InputError(
                    f"{path}:{line}: the statement starting {stmt[:60]!r} failed: {e} (fix the script, or check it suits this engine)"
                ) from e
            done += 1
    finally:
        finish()
    logger.info("loaded %d statements from %s", done, path)
    return done


def read_script(path: str | Path) -> list[tuple[int, str]]:
    """The statements of a Cypher script, or of the Cypher mapping of an RDF file, with their lines.

    Raises:
        InputError: the file does not exist or its ending is neither Cypher nor RDF.
    """
    from ragkit.stores.rdf import RDF_FORMATS

    p = Path(path)
    if not p.is_file():
        raise InputError(f"graph file {str(path)!r} does not exist (check the store's 'path')")
    suffix = p.suffix.lower()
    if suffix in RDF_FORMATS:
        return _split_with_lines(rdf_to_cypher(p))
    if suffix in CYPHER_SUFFIXES:
        return _split_with_lines(p.read_text(encoding="utf-8"))
    raise InputError(
        f"cannot tell what {str(path)!r} holds (use a Cypher script: {', '.join(CYPHER_SUFFIXES)}; or RDF: {', '.join(RDF_FORMATS)})"
    )


# ---- Cypher literals --------------------------------------------------------------------------


def cypher_string(s: str) -> str:
    """``s`` as a single-quoted Cypher string literal."""
    out = s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{out}'"


def cypher_name(name: str) -> str:
    """A label, relationship type or key as Cypher writes it: bare when it can be, else backticked."""
    if _IDENTIFIER.match(name) and name.upper() not in _RESERVED:
        return name
    return "`" + name.replace("`", "``") + "`"


def _cypher_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_cypher_value(x) for x in v) + "]"
    return cypher_string(str(v))


def _cypher_map(props: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{cypher_name(k)}: {_cypher_value(v)}" for k, v in props.items()) + "}"


# ---- RDF -> property graph --------------------------------------------------------------------

_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_RDFS = "http://www.w3.org/2000/01/rdf-schema#"
_OWL = "http://www.w3.org/2002/07/owl#"
_XSD = "http://www.w3.org/2001/XMLSchema#"
_META = (_RDF, _RDFS, _OWL, _XSD)
_RDF_TYPE = _RDF + "type"
_LABEL = _RDFS + "label"
_COMMENT = _RDFS + "comment"
_FLOAT_TYPES = frozenset((_XSD + "decimal", _XSD + "double", _XSD + "float"))
_BOOL = _XSD + "boolean"
_INT64 = 2**63

IRI_KEY = "iri"
"""The node property that keeps a mapped resource's IRI (``_:name`` for a blank node)."""
DEFAULT_LABEL = "Resource"
"""The label of a mapped resource that has no ``rdf:type``."""


def local_name(iri: str) -> str:
    """The part of an IRI after its last ``#``, ``/`` or ``:`` (``http://ex.org/lib#bornIn`` -> ``bornIn``)."""
    cut = max(iri.rfind("#"), iri.rfind("/"), iri.rfind(":"))
    name = iri[cut + 1 :] if cut >= 0 else iri
    return name or iri


def _literal_value(lexical: str, datatype: str | None) -> Any:
    try:
        if datatype in XSD_INTEGER_TYPES:
            v = int(lexical)
            return v if -_INT64 <= v < _INT64 else lexical
        if datatype in _FLOAT_TYPES:
            f = float(lexical)
            return f if math.isfinite(f) else lexical
        if datatype == _BOOL:
            if lexical.strip() in ("true", "1"):
                return True
            if lexical.strip() in ("false", "0"):
                return False
    except ValueError:
        pass
    return lexical


def _is_meta(iri: str) -> bool:
    return iri.startswith(_META)


def _property_key(predicate: str) -> str:
    if predicate == _LABEL:
        return "name"
    if predicate == _COMMENT:
        return "comment"
    key = local_name(predicate)
    return key + "_" if key == IRI_KEY else key


def _iter_triples(path: Path) -> Iterable[tuple[str, str, str, str | None, bool]]:
    """(subject, predicate, object, datatype, object is a literal) for every triple of ``path``."""
    from ragkit.stores.rdf import RDF_FORMATS

    try:
        import pyoxigraph as ox
    except ImportError:
        raise MissingDependencyError("pyoxigraph", "rdf", "mapping RDF to a property graph") from None
    fmt = {
        "turtle": ox.RdfFormat.TURTLE,
        "ntriples": ox.RdfFormat.N_TRIPLES,
        "rdfxml": ox.RdfFormat.RDF_XML,
        "nquads": ox.RdfFormat.N_QUADS,
        "trig": ox.RdfFormat.TRIG,
        "n3": ox.RdfFormat.N3,
    }[RDF_FORMATS[path.suffix.lower()]]

    def term(t: Any) -> str:
        if isinstance(t, ox.BlankNode):
            return "_:" + str(t.value)
        return str(t.value)

    try:
        for q in ox.parse(path=str(path), format=fmt):
            o = q.object
            if isinstance(o, ox.Literal):
                yield term(q.subject), q.predicate.value, o.value, o.datatype.value, True
            elif isinstance(o, (ox.NamedNode, ox.BlankNode)):
                yield term(q.subject), q.predicate.value, term(o), None, False
    except SyntaxError as e:
        raise InputError(f"cannot parse {path}: {e} (fix the file, or check its extension matches its format)") from None


def rdf_to_cypher(path: str | Path, *, chunk_size: int = 500) -> str:
    """Map an RDF file to a Cypher script that builds the same data as a property graph.

    The mapping:

    * every IRI or blank node that is a subject, or the object of a non-literal triple, becomes one
      node; its IRI is kept in the property ``iri`` (blank nodes as ``_:name``);
    * ``rdf:type`` gives the node's labels: the local name of each class IRI (the part after the
      last ``#``, ``/`` or ``:``; ``lib:Author`` -> ``:Author``); a node with no type is ``:Resource``;
    * a literal becomes a node property keyed by the predicate's local name (``lib:birthYear`` ->
      ``birthYear``), typed: ``xsd:integer`` and its kin -> integer, ``xsd:decimal``/``double``/
      ``float`` -> float, ``xsd:boolean`` -> boolean, anything else (dates, language-tagged text)
      -> its lexical string. ``rdfs:label`` becomes ``name`` (what Cypher users and models expect
      to read) and ``rdfs:comment`` becomes ``comment``; a predicate whose local name is ``iri``
      becomes ``iri_``. Several values of one key become a sorted list (strings if mixed);
    * a triple whose object is an IRI or blank node becomes a relationship from subject to object
      whose type is the predicate's local name, kept as written (``lib:bornIn`` -> ``:bornIn``,
      ``lib:author`` -> ``:author``), so the Cypher and SPARQL views of a graph share their names;
    * schema vocabulary is left out: resources typed only with RDF/RDFS/OWL classes (the classes and
      properties themselves) and triples with other RDF/RDFS/OWL predicates (``rdfs:subClassOf``,
      ``owl:sameAs``, ...). Names that collide after taking local names are merged.

    The script creates an index on ``iri`` per label, then the nodes, then the relationships
    (``UNWIND`` batches matched on ``iri``), in chunks of ``chunk_size``, so it loads into Neo4j,
    ArcadeDB or the embedded store alike.

    Args:
        path: an RDF file (``.ttl``, ``.nt``, ``.rdf``, ``.nq``, ``.trig``, ``.n3``).
        chunk_size: nodes or relationships per statement.

    Returns:
        The Cypher script, statements ending in ``;``.

    Example:
        >>> script = rdf_to_cypher("fixtures/library/graph.ttl")  # doctest: +SKIP
        >>> script.splitlines()[1]  # doctest: +SKIP
        'CREATE INDEX IF NOT EXISTS FOR (n:Author) ON (n.iri);'
    """
    from ragkit.stores.rdf import RDF_FORMATS

    p = Path(path)
    if not p.is_file():
        raise InputError(f"RDF file {str(path)!r} does not exist (check the store's 'path')")
    if p.suffix.lower() not in RDF_FORMATS:
        raise InputError(f"cannot tell the RDF format of {str(path)!r} (use one of: {', '.join(RDF_FORMATS)})")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")

    types: dict[str, set[str]] = defaultdict(set)
    literals: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    links: list[tuple[str, str, str]] = []
    subjects: set[str] = set()
    for s, pred, o, dt, is_literal in _iter_triples(p):
        subjects.add(s)
        if pred == _RDF_TYPE and not is_literal:
            types[s].add(o)
        elif is_literal:
            if _is_meta(pred) and pred not in (_LABEL, _COMMENT):
                continue
            literals[s][_property_key(pred)].append(_literal_value(o, dt))
        elif not _is_meta(pred):
            links.append((s, local_name(pred), o))

    schema_resources = {s for s, ts in types.items() if ts and all(_is_meta(t) for t in ts)}
    nodes = (subjects | {o for _, _, o in links}) - schema_resources
    labels: dict[str, list[str]] = {}
    for node in nodes:
        names = sorted({local_name(t) for t in types.get(node, ()) if not _is_meta(t)})
        labels[node] = names or [DEFAULT_LABEL]

    lines = [f"// Generated by ragkit.stores.loaders.rdf_to_cypher from {p.name}: {len(nodes)} nodes, {len(links)} relationships."]
    for label in sorted({lab for labs in labels.values() for lab in labs}):
        lines.append(f"CREATE INDEX IF NOT EXISTS FOR (n:{cypher_name(label)}) ON (n.{IRI_KEY});")

    ordered = sorted(nodes)
    for start in range(0, len(ordered), chunk_size):
        parts = []
        for node in ordered[start : start + chunk_size]:
            props: dict[str, Any] = {IRI_KEY: node}
            for key, values in sorted(literals.get(node, {}).items()):
                props[key] = _merge_values(values)
            parts.append(f"(:{':'.join(cypher_name(lab) for lab in labels[node])} {_cypher_map(props)})")
        lines.append("CREATE " + ",\n       ".join(parts) + ";")

    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    for s, rel, o in sorted(set(links)):
        if s in schema_resources or o in schema_resources:
            continue
        groups[(rel, labels[s][0], labels[o][0])].append((s, o))
    for (rel, la, lb), pairs in sorted(groups.items()):
        for start in range(0, len(pairs), chunk_size):
            batch = ", ".join(f"[{cypher_string(a)}, {cypher_string(b)}]" for a, b in pairs[start : start + chunk_size])
            lines.append(
                f"UNWIND [{batch}] AS pair "
                f"MATCH (a:{cypher_name(la)} {{{IRI_KEY}: pair[0]}}) MATCH (b:{cypher_name(lb)} {{{IRI_KEY}: pair[1]}}) "
                f"CREATE (a)-[:{cypher_name(rel)}]->(b);"
            )
    return "\n".join(lines) + "\n"


def _merge_values(values: list[Any]) -> Any:
    unique = list(dict.fromkeys(values))
    if len(unique) == 1:
        return unique[0]
    kinds = {type(v) for v in unique}
    if len(kinds) > 1 and not kinds <= {int, float}:
        unique = [str(v) for v in unique]
    return sorted(unique, key=lambda v: (str(type(v)), v))

"""SPARQL text utilities for generated queries: extraction, prefix completion, parsing."""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

from ragkit.query.text import reply_body

__all__ = ["extract_query", "add_missing_prefixes", "complete_triples", "parse_error", "unbound_variables", "schema_terms", "typed_schema_terms", "named_and_unknown_terms", "unknown_sparql_terms", "mistyped_variables"]

_START = re.compile(r"(?is)\b(PREFIX|BASE|SELECT|ASK|CONSTRUCT|DESCRIBE)\b")
_FENCE = re.compile(r"```(?:sparql|SPARQL|cypher|sql)?\s*\n?(.*?)(?:```|$)", re.S)
_PREFIXED = re.compile(r"(?<![\w<?$])([A-Za-z][\w-]*)?:([A-Za-z_][\w-]*)")
_DECLARED = re.compile(r"(?i)PREFIX\s+([A-Za-z][\w-]*)?:\s*<([^>]*)>")
_MODIFIER = r"(?:GROUP\s+BY|HAVING|ORDER\s+BY|LIMIT|OFFSET)\b[^{}\n]*"


def extract_query(text: str) -> str:
    """The query in a model's reply: inside a code fence if there is one, from the first keyword on,
    up to a blank line followed by prose (a 'Question:' the model went on to invent, say)."""
    text = reply_body(text, _FENCE, _START, ("question", "q", "answer", "sparql", "cypher"))
    return _balance_braces(text.strip())


def _balance_braces(q: str) -> str:
    """Drop text after the brace that closes the WHERE block, and close blocks the model left open."""
    depth, in_str, esc, end = 0, "", False, None
    opened = False
    for i, ch in enumerate(q):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == in_str:
                in_str = ""
            continue
        if ch in "\"'":
            in_str = ch
        elif ch == "<" and not opened:
            continue
        elif ch == "{":
            depth += 1
            opened = True
        elif ch == "}":
            depth -= 1
            if depth == 0 and opened:
                end = i
                # keep solution modifiers after the closing brace (GROUP BY, ORDER BY, LIMIT, ...)
                rest = q[i + 1 :]
                # (whole lines that start with one; prose after them or after the last LIMIT/OFFSET n is dropped)
                mod = re.match(rf"(?i)\s*{_MODIFIER}(?:[ \t]*\n\s*{_MODIFIER})*", rest)
                if mod:
                    last = re.match(r"(?is).*\b(?:LIMIT|OFFSET)\s+\d+", mod.group(0))
                    return (q[: i + 1] + (last or mod).group(0)).strip()
                return q[: end + 1]
    if depth > 0 and not in_str:
        return q + " }" * depth
    return q


def add_missing_prefixes(query: str, prefixes: dict[str, str]) -> str:
    """Declare prefixes the query uses but does not declare, when the schema knows them."""
    declared = {m.group(1) or "" for m in _DECLARED.finditer(query)}
    body = _DECLARED.sub("", query)
    body = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|<[^>\s]*>', " ", body)  # not inside strings/IRIs
    used = {m.group(1) or "" for m in _PREFIXED.finditer(body)}
    missing = [p for p in sorted(used - declared) if p in prefixes]
    if not missing:
        return query
    return "\n".join(f"PREFIX {p}: <{prefixes[p]}>" for p in missing) + "\n" + query


_NAME = r"(?:[A-Za-z][\w-]*)?:(?:[\w-]|\\[_~.\-!$&'()*+,;=/?#@%])+|<[^<>\s]+>"
# "?s pred ." / "?s pred }" / "?s pred ;": a triple pattern the model left without its object
_NO_OBJECT = re.compile(rf"(\?\w+)(\s+)({_NAME})(?=\s*[.;}}])")
_DANGLING = re.compile(r"(?i)\s*\b(?:GROUP|ORDER)\s+BY\s*(?=$|\b(?:LIMIT|OFFSET|HAVING|ORDER|GROUP)\b)")


def complete_triples(query: str) -> str:
    """Fix two small-model slips that are unambiguous to repair:

    * a triple pattern without its object (``?b lib:author .``) gets a variable object, one the
      SELECT clause projects if its name ends with the property's local name, else
      ``?<subject>_<local name>``;
    * a GROUP BY or ORDER BY with nothing after it is dropped.
    """
    head = re.search(r"(?is)\bSELECT\b(.*?)(?:\bWHERE\b|\{)", query)
    projected = re.findall(r"\?(\w+)", head.group(1)) if head else []

    def fill(m: re.Match[str]) -> str:
        subj, gap, pred = m.group(1), m.group(2), m.group(3)
        local = re.sub(r"\\(.)", r"\1", pred.strip("<>")).rstrip("/#")
        local = re.split(r"[#/:]", local)[-1]
        local = re.sub(r"\W", "_", local) or "value"
        var = next((v for v in projected if v == local or v.endswith("_" + local)), f"{subj[1:]}_{local}")
        return f"{subj}{gap}{pred} ?{var}"

    # only inside the braces, and never inside strings or IRIs in FILTERs (the pattern needs a variable subject)
    out = _NO_OBJECT.sub(fill, query) if "{" in query else query
    return _DANGLING.sub(" ", out).rstrip() if _DANGLING.search(out) else out


def fix_variable_names(query: str) -> str:
    """Variables written with a hyphen (``?T2_ref-owner_id``, from a local name such as
    ``:dogs\\#ref-owner_id``) are not SPARQL: the hyphens become underscores, the same in every
    occurrence. Outside strings only; ``?a-1`` and ``?a-?b`` (subtraction) are left alone."""

    def fix(m: re.Match[str]) -> str:
        return m.group(0).replace("-", "_")

    parts = re.split(r'("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')', query)
    return "".join(p if i % 2 else _HYPHEN_VAR.sub(fix, p) for i, p in enumerate(parts))


_HYPHEN_VAR = re.compile(r"[?$]\w+(?:-[A-Za-z_]\w*)+")
_empty_store: Any = None
_empty_lock = threading.Lock()


def parse_error(query: str) -> str | None:
    """The SPARQL syntax error in ``query``, or None when it parses (checked with pyoxigraph)."""
    global _empty_store
    import pyoxigraph as ox

    with _empty_lock:
        if _empty_store is None:
            _empty_store = ox.Store()
    try:
        res = _empty_store.query(query)
        if isinstance(res, ox.QuerySolutions):
            for _ in res:  # evaluation on an empty store is instant; it surfaces late errors
                break
    except SyntaxError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return str(e)
    return None


def _strip_literals(query: str) -> str:
    query = re.sub(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'', '""', query)
    query = re.sub(r"<[^<>\s]*>", "<>", query)
    return re.sub(r"(?<!\\)#[^\n]*", "", query)  # a comment, not the escaped "\#" of a local name


def unbound_variables(query: str) -> list[str]:
    """Variables a SELECT projects (directly or inside an expression) that the WHERE block never binds.

    Such a query runs but answers with empty cells: a typical small-model mistake worth repairing.
    """
    q = _strip_literals(query)
    m = re.search(r"(?is)\bSELECT\b(.*?)(?:\bWHERE\b|\{)", q)
    if not m or re.fullmatch(r"(?is)\s*(DISTINCT|REDUCED)?\s*\*\s*", m.group(1)):
        return []
    head, body = m.group(1), q[m.end() :]
    # only the WHERE block binds: GROUP BY / ORDER BY after its closing brace do not
    body = body[: body.rfind("}")] if "}" in body else body
    needed: list[str] = []
    depth, alias_next = 0, False
    for tok in re.findall(r"\(|\)|[?$]\w+|\bAS\b|[^\s()?$]+", head, flags=re.I):
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif tok.upper() == "AS" and depth == 1:
            alias_next = True
        elif tok[0] in "?$":
            if alias_next:
                alias_next = False
            else:
                needed.append(tok[1:])
    bound = {v[1:] for v in re.findall(r"[?$]\w+", body)}
    return sorted({v for v in needed if v not in bound})


_STANDARD_NS = (
    "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "http://www.w3.org/2000/01/rdf-schema#",
    "http://www.w3.org/2002/07/owl#",
    "http://www.w3.org/2001/XMLSchema#",
    "http://www.w3.org/2004/02/skos/core#",
)
"""Vocabularies every RDF graph may use without declaring them in its data."""
_RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"


_PN_ESCAPE = re.compile(r"\\([_~.\-!$&'()*+,;=/?#@%])")


class _EscapedNameFilter(logging.Filter):
    """rdflib warns about every prefixed name with an escape (``ex:a\\#b``) it keeps unexpanded;
    :func:`schema_terms` unescapes those names itself, so the warnings are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "\\" not in record.getMessage()


_rdflib_filter_installed = False


def schema_terms(query: str) -> list[str]:
    """The schema terms a SPARQL query names: every predicate IRI (inside property paths too) and every
    class IRI after ``a``/``rdf:type``, as full IRIs, first occurrence first.

    Raises:
        QueryParseError: when the query does not parse.
    """
    return [iri for _kind, iri in typed_schema_terms(query)]


@functools.lru_cache(maxsize=256)
def _algebra(query: str) -> Any:
    """rdflib's algebra of ``query`` (read only: it is cached, as the checks of one candidate each
    need it). Raises QueryParseError when it does not parse."""
    from rdflib.plugins.sparql import prepareQuery

    from ragkit.errors import QueryParseError
    from ragkit.query.guard import SPARQL_PARSE_LOCK

    global _rdflib_filter_installed
    if not _rdflib_filter_installed:
        logging.getLogger("rdflib.term").addFilter(_EscapedNameFilter())
        _rdflib_filter_installed = True
    try:
        with SPARQL_PARSE_LOCK:  # pyparsing grammars keep shared state
            return prepareQuery(query).algebra
    except Exception as e:  # rdflib raises pyparsing and its own errors
        raise QueryParseError(f"SPARQL does not parse: {e}") from None


def _basic_graph_patterns(node: Any) -> Iterator[list[tuple[Any, Any, Any]]]:
    """The triple patterns (subject, predicate or path, object) of each basic graph pattern of an
    algebra, in order: in OPTIONAL, UNION, MINUS, subqueries and FILTER [NOT] EXISTS too."""
    from rdflib.plugins.sparql.parserutils import CompValue

    if isinstance(node, CompValue):
        if node.name in ("BGP", "TriplesBlock"):
            block = []
            for t in node.get("triples") or []:
                t = list(t)
                block += [(t[i], t[i + 1], t[i + 2]) for i in range(0, len(t) - 2, 3)]  # a TriplesBlock keeps its triples flattened
            yield block
            return
        for v in node.values():
            yield from _basic_graph_patterns(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _basic_graph_patterns(v)
    elif isinstance(node, dict):
        for v in node.values():
            yield from _basic_graph_patterns(v)


def _iri(term: Any) -> str:
    """A term's IRI as written, without the escapes rdflib keeps from a prefixed name (singer:\\#name)."""
    return _PN_ESCAPE.sub(r"\1", str(term))


def typed_schema_terms(query: str) -> list[tuple[str, str]]:
    """:func:`schema_terms` with each term's role: ``("class", iri)`` or ``("property", iri)``."""
    from rdflib.paths import Path as RdfPath
    from rdflib.plugins.sparql.parserutils import CompValue
    from rdflib.term import URIRef

    found: list[tuple[str, str]] = []

    def path_iris(p: Any) -> None:
        if isinstance(p, URIRef):
            found.append(("property", str(p)))
        elif isinstance(p, RdfPath):
            for name in ("args", "arg", "path"):
                sub = getattr(p, name, None)
                for x in sub if isinstance(sub, (list, tuple)) else [sub] if sub is not None else []:
                    path_iris(x)
        elif isinstance(p, CompValue):  # a path not yet translated (inside FILTER [NOT] EXISTS)
            for v in p.values():
                path_iris(v)
        elif isinstance(p, (list, tuple)):
            for v in p:
                path_iris(v)

    for _s, p, o in (t for block in _basic_graph_patterns(_algebra(query)) for t in block):
        if isinstance(p, URIRef) and str(p) == _RDF_TYPE:
            if isinstance(o, URIRef):
                found.append(("class", str(o)))
        else:
            path_iris(p)
    # an IRI has no backslash: the escapes are the prefixed names'
    return list(dict.fromkeys((kind, _iri(t)) for kind, t in found))


def mistyped_variables(query: str, schema: Any) -> list[str]:
    """Variables the query gives a class (``?x a :concert``) and then uses where the graph has none of
    that class: as the subject of a property no instance of the class has, or as the object of a
    property whose values are literals or instances of other classes. Each as a line a repair round
    can use: ``?T2 is a :concert, but :singer\\#song_name has literal values (xsd:string)``.

    The domains and ranges are those the schema records (a store reads them from its data); a
    property without them is not checked, nor a variable typed in another basic graph pattern than
    its use, and a query that does not parse yields nothing here.
    """
    from rdflib.term import URIRef, Variable

    from ragkit.errors import QueryParseError

    try:
        blocks = list(_basic_graph_patterns(_algebra(query)))
    except QueryParseError:
        return []
    props = {p.name: p for p in schema.properties}
    out = []
    # a variable's classes are read within one basic graph pattern: a subquery, an OPTIONAL or a
    # UNION branch may use the same name for something else
    for block in blocks:
        types: dict[str, set[str]] = {}
        for s, p, o in block:
            if isinstance(s, Variable) and isinstance(p, URIRef) and str(p) == _RDF_TYPE and isinstance(o, URIRef):
                types.setdefault(str(s), set()).add(_iri(o))
        for s, p, o in block if types else ():
            prop = props.get(_iri(p)) if isinstance(p, URIRef) and str(p) != _RDF_TYPE else None
            if prop is None:
                continue
            name = schema.compact(prop.name)
            if isinstance(s, Variable) and str(s) in types and prop.domains and not types[str(s)] & set(prop.domains):
                has = ", ".join(schema.compact(c) for c in prop.domains)
                out.append(f"?{s} is a {_classes(types[str(s)], schema)}, but {name} is a property of {has}")
            if isinstance(o, Variable) and str(o) in types and prop.ranges and not types[str(o)] & set(prop.ranges):
                ranges = ", ".join(schema.compact(r) for r in prop.ranges)
                what = f"literal values ({ranges})" if prop.kind == "datatype" else f"values of {ranges}"
                out.append(f"?{o} is a {_classes(types[str(o)], schema)}, but {name} has {what}")
    return list(dict.fromkeys(out))


def _classes(iris: set[str], schema: Any) -> str:
    return " and ".join(schema.compact(c) for c in sorted(iris))


def named_and_unknown_terms(query: str, known: set[str]) -> tuple[list[str], list[str]]:
    """``(named, unknown)``: the schema terms the query names (standard RDF/RDFS/OWL/XSD terms left
    out) and those of them not in ``known`` (a schema's :meth:`~ragkit.stores.base.GraphSchema.terms`)."""
    named = [t for t in schema_terms(query) if t in known or not t.startswith(_STANDARD_NS)]
    return named, [t for t in named if t not in known]


def unknown_sparql_terms(query: str, schema: Any) -> list[str]:
    """Classes and properties the query names that ``schema`` (a :class:`GraphSchema`) does not have,
    as ``"class lib:Novel"`` / ``"property lib:writer"``.

    Terms of the standard vocabularies (rdf, rdfs, owl, xsd, skos) are always allowed. A query that
    does not parse yields nothing here: :func:`parse_error` reports it.
    """
    from ragkit.errors import QueryParseError

    try:
        terms = typed_schema_terms(query)
    except QueryParseError:
        return []
    classes = {c.name for c in schema.classes}
    props = {p.name for p in schema.properties}
    bad = []
    for kind, iri in terms:
        if iri.startswith(_STANDARD_NS) or iri in (classes if kind == "class" else props):
            continue
        bad.append(f"{kind} {schema.compact(iri)}")
    return sorted(bad)

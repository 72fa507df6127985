"""SPARQL text utilities for generated queries: extraction, prefix completion, parsing."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from ragkit.query.text import reply_body

__all__ = ["extract_query", "add_missing_prefixes", "parse_error", "unbound_variables", "unknown_sparql_terms"]

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
    return re.sub(r"#[^\n]*", "", query)


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


# Vocabularies every RDF graph may use without declaring them in its data.
_BUILTIN_NAMESPACES = (
    "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "http://www.w3.org/2000/01/rdf-schema#",
    "http://www.w3.org/2002/07/owl#",
    "http://www.w3.org/2001/XMLSchema#",
    "http://www.w3.org/2004/02/skos/core#",
)


def _unescape(iri: str) -> str:
    # rdflib keeps the backslash of an escaped prefixed-name local part (``:singer\\#name``)
    return re.sub(r"\\([_~.\-!$&'()*+,;=/?#@%])", r"\1", iri)


def _query_terms(query: str) -> tuple[set[str], set[str]]:
    """(predicate IRIs, class IRIs used as objects of rdf:type) in the query's triple patterns."""
    from rdflib import URIRef
    from rdflib.namespace import RDF
    from rdflib.paths import Path
    from rdflib.plugins.sparql import prepareQuery

    from ragkit.query.guard import SPARQL_PARSE_LOCK

    term_logger = logging.getLogger("rdflib.term")
    with SPARQL_PARSE_LOCK:  # pyparsing grammars keep shared state
        level = term_logger.level
        term_logger.setLevel(logging.ERROR)  # rdflib warns about the escapes it leaves in local names
        try:
            algebra = prepareQuery(query).algebra
        finally:
            term_logger.setLevel(level)
    preds: set[str] = set()
    classes: set[str] = set()

    def path_iris(p: object) -> list[str]:
        if isinstance(p, URIRef):
            return [_unescape(str(p))]
        out: list[str] = []
        for attr in ("args", "path"):
            sub = getattr(p, attr, None)
            for x in sub if isinstance(sub, list) else [sub] if sub is not None else []:
                out.extend(path_iris(x))
        return out

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "triples" and isinstance(v, list):
                    for t in v:
                        if len(t) == 3:
                            _, p, o = t
                            if isinstance(p, (URIRef, Path)):
                                preds.update(path_iris(p))
                            if p == RDF.type and isinstance(o, URIRef):
                                classes.add(_unescape(str(o)))
                else:
                    walk(v)
        elif isinstance(node, (list, tuple)):
            for x in node:
                walk(x)

    walk(algebra)
    return preds, classes


def unknown_sparql_terms(query: str, schema: Any) -> list[str]:
    """Classes and properties the query names that the schema (a :class:`GraphSchema`) does not have.

    Terms of the standard vocabularies (rdf, rdfs, owl, xsd, skos) are always allowed. A query that
    does not parse yields no terms here: :func:`parse_error` reports it.
    """
    try:
        preds, classes = _query_terms(query)
    except Exception:  # noqa: BLE001 - a parse failure is parse_error's to report
        return []
    known_props = {p.name for p in schema.properties}
    known_classes = {c.name for c in schema.classes}
    bad: list[str] = []
    for iri in sorted(classes):
        if iri not in known_classes and not iri.startswith(_BUILTIN_NAMESPACES):
            bad.append(f"class {schema.compact(iri)}")
    for iri in sorted(preds):
        if iri not in known_props and not iri.startswith(_BUILTIN_NAMESPACES):
            bad.append(f"property {schema.compact(iri)}")
    return bad


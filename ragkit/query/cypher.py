"""Cypher text utilities for generated queries: extraction and schema checks."""

from __future__ import annotations

import re

from ragkit.query.text import reply_body
from ragkit.stores.base import GraphSchema

__all__ = ["extract_cypher", "cypher_terms", "unknown_cypher_terms"]

# A query starts at its first clause. Write clauses count too (upper-case only, so prose like "create"
# does not), so that "MERGE (n) RETURN n" reaches the read-only guard whole, not as "RETURN n".
_START = re.compile(r"(?is)\b(OPTIONAL\s+MATCH|MATCH|WITH|UNWIND|CALL|RETURN|(?-i:CREATE|MERGE|DETACH|DELETE|SET|REMOVE|FOREACH|LOAD|DROP))\b")
_FENCE = re.compile(r"```(?:cypher|Cypher|CYPHER|sql)?\s*\n?(.*?)(?:```|$)", re.S)


def extract_cypher(text: str) -> str:
    """The query in a model's reply: inside a code fence if any, from the first clause keyword on,
    up to a line that starts another turn ('Question:', ...); trailing semicolons dropped."""
    text = reply_body(text, _FENCE, _START, ("question", "q", "answer", "values", "cypher"))
    # a blank line followed by something other than a clause is prose the model added after the query
    prose = re.search(r"\n\s*\n(?!\s*(?:OPTIONAL\s+MATCH|MATCH|WITH|UNWIND|CALL|RETURN|WHERE|ORDER\s+BY|SKIP|LIMIT|UNION)\b)", text, re.I)
    if prose:
        text = text[: prose.start()]
    return text.strip().rstrip(";").strip()


def _strip_strings(q: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', q)


def cypher_terms(query: str) -> list[str]:
    """The node labels (``label :X``), relationship types (``relationship :R``) and property keys
    (``property .k``) a query names, in order, each once."""
    q = _strip_strings(query)
    named: list[str] = []
    # (n:Label:Other) and (:Label) — labels inside node patterns
    for m in re.finditer(r"\(\s*\w*\s*((?::\s*(?:`[^`]+`|\w+)\s*)+)(?=[\s{)])", q):
        for quoted, plain in re.findall(r":\s*(?:`([^`]+)`|(\w+))", m.group(1)):
            lab = (quoted or plain).strip()
            if lab:
                named.append(f"label :{lab}")
    # -[r:TYPE|OTHER*1..2]-
    for m in re.finditer(r"\[\s*\w*\s*:\s*([\w|`: ]+)", q):
        for t in re.split(r"[|:]", m.group(1)):
            t = t.strip().strip("`")
            if t:
                named.append(f"relationship :{t}")
    # n.key — property keys of nodes and relationships (not function calls such as date.truncate())
    for m in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\.(`[^`]+`|[A-Za-z_]\w*\b)(?!\s*\()", q):
        named.append(f"property .{m.group(2).strip('`')}")
    # {key: value} inside a node or relationship pattern: (n:Label {key: ...}), [r:TYPE {key: ...}]
    for m in re.finditer(r"[(\[]\s*\w*\s*(?::\s*(?:`[^`]+`|[\w|]+)\s*)*\{([^{}]*)\}\s*[)\]]", q):
        for k in re.findall(r"(?:^|,)\s*(`[^`]+`|\w+)\s*:", m.group(1)):
            named.append(f"property .{k.strip('`')}")
    return list(dict.fromkeys(named))


def unknown_cypher_terms(query: str, schema: GraphSchema) -> list[str]:
    """Node labels, relationship types and property keys the query names that the schema does not have.

    Property keys are checked only when the schema lists some (a schema read without them cannot
    tell a wrong key from a right one)."""
    known = {f"label :{c.name}" for c in schema.classes}
    known |= {f"relationship :{p.name}" for p in schema.properties if p.kind == "relationship"}
    keys = {f"property .{p.name}" for p in schema.properties if p.kind != "relationship"}
    out = []
    for t in cypher_terms(query):
        if t.startswith("property "):
            if keys and t not in keys:
                out.append(t)
        elif t not in known:
            out.append(t)
    return out

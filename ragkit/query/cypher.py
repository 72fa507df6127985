"""Cypher text utilities for generated queries: extraction and schema checks."""

from __future__ import annotations

import re

from ragkit.stores.base import GraphSchema

__all__ = ["extract_cypher", "unknown_cypher_terms"]

_START = re.compile(r"(?is)\b(OPTIONAL\s+MATCH|MATCH|WITH|UNWIND|CALL|RETURN)\b")
_FENCE = re.compile(r"```(?:cypher|Cypher|CYPHER|sql)?\s*\n?(.*?)(?:```|$)", re.S)


def extract_cypher(text: str) -> str:
    """The query in a model's reply: inside a code fence if any, from the first clause keyword on,
    up to a line that starts another turn ('Question:', ...); trailing semicolons dropped."""
    m = _FENCE.search(text)
    if m:
        text = m.group(1)
    m = _START.search(text)
    if m:
        text = text[m.start() :]
    cut = re.search(r"(?im)^\s*(question|q|answer|values|cypher)\s*:", text)
    if cut and cut.start() > 0:
        text = text[: cut.start()]
    return text.strip().rstrip(";").strip()


def _strip_strings(q: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', q)


def unknown_cypher_terms(query: str, schema: GraphSchema) -> list[str]:
    """Node labels and relationship types the query names that the schema does not have."""
    q = _strip_strings(query)
    labels = {c.name for c in schema.classes}
    rels = {p.name for p in schema.properties if p.kind == "relationship"}
    bad: list[str] = []
    # (n:Label:Other) and (:Label) — labels inside node patterns
    for m in re.finditer(r"\(\s*\w*\s*((?::\s*`?[\w ]+?`?\s*)+)[\s{)]", q):
        for lab in re.findall(r":\s*`?([\w ]+?)`?(?=\s*[:\s{)])", m.group(1) + " "):
            if lab.strip() and lab.strip() not in labels:
                bad.append(f"label :{lab.strip()}")
    # -[r:TYPE|OTHER*1..2]-
    for m in re.finditer(r"\[\s*\w*\s*:\s*([\w|`: ]+)", q):
        for t in re.split(r"[|:]", m.group(1)):
            t = t.strip().strip("`")
            if t and t not in rels:
                bad.append(f"relationship :{t}")
    return list(dict.fromkeys(bad))

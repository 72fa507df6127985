"""Cypher text utilities for generated queries: extraction and schema checks."""

from __future__ import annotations

import re

from ragkit.query.text import reply_body
from ragkit.stores.base import GraphSchema

__all__ = [
    "extract_cypher",
    "cypher_terms",
    "unknown_cypher_terms",
    "misdirected_relationships",
    "misplaced_properties",
    "relationship_ends",
    "far_labels",
    "node_labels",
    "variable_owners",
    "property_owners",
    "past_final_return",
    "final_clause",
    "ends_in_return",
    "reply_may_end",
]

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
    return _end_at_final_return(text.strip().rstrip(";").strip()).rstrip(";").strip()


_CLAUSE_WORDS = r"(?<![\w.])(UNION|RETURN|OPTIONAL\s+MATCH|MATCH|(?<!STARTS )(?<!ENDS )WITH|UNWIND|CALL|CREATE|MERGE|DELETE|DETACH|SET|REMOVE|FOREACH|LOAD)(?!\w)"
_CLAUSE = re.compile("(?i)" + _CLAUSE_WORDS)
_UPPER_CLAUSE = re.compile(_CLAUSE_WORDS)
_READ_CLAUSES = {"RETURN", "MATCH", "WITH", "UNWIND", "CALL"}


def _top_clauses(query: str, clause: re.Pattern[str] = _CLAUSE) -> list[tuple[str, int, int]]:
    """Each clause at the top level of ``query`` (outside subqueries, pattern comprehensions, maps,
    strings and backquoted names): its word, upper case (``OPTIONAL MATCH`` as ``MATCH``), and where
    the word starts and ends."""
    plain = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', lambda m: " " * len(m.group(0)), query)
    out = []
    for m in clause.finditer(plain):
        before = plain[: m.start()]
        if sum(before.count(c) for c in "([{") == sum(before.count(c) for c in ")]}"):
            out.append((m.group(1).upper().split()[-1], m.start(), m.end()))
    return out


def final_clause(query: str) -> str | None:
    """The word of ``query``'s last clause at the top level, upper case: ``'RETURN'``, ``'WITH'``,
    ...; None when it has none."""
    clauses = _top_clauses(query)
    return clauses[-1][0] if clauses else None


def ends_in_return(query: str) -> bool:
    """Whether ``query`` is a whole read query: its last clause returns something (``... RETURN
    m.title``), or it is a procedure call alone (``CALL db.labels()``, which may yield without
    ``RETURN``). ``MATCH (p:Person) WITH p, count(*) AS n ORDER BY n DESC LIMIT 1`` is not: Neo4j
    refuses a query that ends in ``WITH``, and an embedded engine that runs it returns whatever the
    ``WITH`` carries (whole nodes)."""
    clauses = _top_clauses(query)
    if [word for word, _, _ in clauses] == ["CALL"]:
        return True
    return bool(clauses) and clauses[-1][0] == "RETURN" and bool(query[clauses[-1][2] :].strip())


def _after_final_return(query: str, clause: re.Pattern[str] = _CLAUSE) -> int | None:
    """Where a read clause follows ``query``'s final ``RETURN`` (at the top level, with no ``UNION``
    between), or None."""
    returned = False
    for word, start, _ in _top_clauses(query, clause):
        if word == "RETURN":
            returned = True
        elif word == "UNION":
            returned = False
        elif returned and word in _READ_CLAUSES:
            return start
    return None


def _end_at_final_return(query: str) -> str:
    """``query`` cut before a read clause that follows its final ``RETURN``: Cypher ends a query at
    ``RETURN``, and a small model that goes on (``RETURN m.title MATCH (m:Movie) ...``) is repeating
    itself. Neo4j refuses such a query; some embedded engines silently ignore the rest. A write
    clause there is left for the read-only guard to refuse."""
    cut = _after_final_return(query)
    return query if cut is None else query[:cut].rstrip()


def past_final_return(text: str) -> bool:
    """Whether a query being written has begun a read clause after its final ``RETURN``, so that
    nothing it writes from here on is kept (:func:`extract_cypher` cuts it). Stricter than the cut,
    as generation ends on it: only upper-case clause words count (prose such as "return the movies
    with ..." does not), and only once the clause word is complete (``RETURN matches`` is not
    ``RETURN`` then ``MATCH``)."""
    head = re.sub(r"\w+\Z", "", text)
    return _after_final_return(head, _UPPER_CLAUSE) is not None


def reply_may_end(text: str) -> bool:
    """Whether a reply being written may end here: once the query in it returns something
    (:func:`ends_in_return`), or before any query has begun. A reply of prose only (no upper-case read
    clause) ends as the model wants and is refused afterwards, rather than running on to the token
    limit."""
    query = extract_cypher(text)
    begun = any(m.group(1).split()[-1] in _READ_CLAUSES for m in _UPPER_CLAUSE.finditer(query))
    return not begun or ends_in_return(query)


def _strip_strings(q: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', q)


def _label_names(text: str) -> list[str]:
    """The labels of ``:A:`B c``` (a node pattern's label part), in order."""
    return [lab for quoted, plain in re.findall(r":\s*(?:`([^`]+)`|(\w+))", text) if (lab := (quoted or plain).strip())]


def _type_names(text: str) -> list[str]:
    """The relationship types of ``TYPE|OTHER`` or ``:TYPE|:OTHER`` (a relationship pattern's type part), in order."""
    return [t for x in re.split(r"[|:]", text) if (t := x.strip().strip("`"))]


# n.key: a variable's property (not a function call such as date.truncate() or apoc.date.format())
_PROPERTY_USE = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\.(`[^`]+`|[A-Za-z_]\w*\b)(?!\s*\(|\.\w)")
# key: in the inside of a pattern's {key: value, ...} map
_MAP_KEY = re.compile(r"(?:^|,)\s*(`[^`]+`|\w+)\s*:")


def cypher_terms(query: str) -> list[str]:
    """The node labels (``label :X``), relationship types (``relationship :R``) and property keys
    (``property .k``) a query names, in order, each once."""
    q = _strip_strings(query)
    named: list[str] = []
    # (n:Label:Other) and (:Label) — labels inside node patterns
    for m in re.finditer(r"\(\s*\w*\s*((?::\s*(?:`[^`]+`|\w+)\s*)+)(?=[\s{)])", q):
        named += [f"label :{lab}" for lab in _label_names(m.group(1))]
    # -[r:TYPE|OTHER*1..2]-
    for m in re.finditer(r"\[\s*\w*\s*:\s*([\w|`: ]+)", q):
        named += [f"relationship :{t}" for t in _type_names(m.group(1))]
    # n.key — property keys of nodes and relationships (not function calls such as date.truncate()
    # or apoc.date.format())
    for m in _PROPERTY_USE.finditer(q):
        named.append(f"property .{m.group(2).strip('`')}")
    # {key: value} inside a node or relationship pattern: (n:Label {key: ...}), [r:TYPE {key: ...}];
    # not a map passed to a function, as in duration({days: 30})
    for m in re.finditer(r"(?:(?<![\w.])\(|\[)\s*\w*\s*(?::\s*(?:`[^`]+`|[\w|]+)\s*)*\{([^{}]*)\}\s*[)\]]", q):
        for k in _MAP_KEY.findall(m.group(1)):
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


_NAME = r"(?:`[^`]+`|\w+)"
_NODE = rf"\(\s*(\w*)\s*((?::\s*{_NAME}\s*)*)(?:\{{[^{{}}]*\}})?\s*\)"
# one hop: <-[r:TYPE|OTHER*1..2 {k: v}]-> ; the types, a variable length and the arrows are captured
# (each type follows a ``|``: an optional one would let a long name split into types in 2^n ways
# when the pattern fails, as on a query cut short)
_REL = rf"(<?)-\s*(?:\[\s*\w*\s*(?::\s*({_NAME}(?:\s*\|\s*:?\s*{_NAME})*))?\s*(\*[\d.\s]*)?\s*(?:\{{[^{{}}]*\}})?\s*\])?\s*-(>?)"
_HOP = re.compile(rf"{_NODE}\s*{_REL}\s*(?={_NODE})")
_NODE_RE = re.compile(_NODE)


RelationshipEnds = dict[str, tuple[frozenset[str], frozenset[str]]]


def relationship_ends(schema: GraphSchema) -> RelationshipEnds:
    """Each relationship type's start and end labels, for the types whose schema records both."""
    return {p.name: (frozenset(p.domains), frozenset(p.ranges)) for p in schema.properties if p.kind == "relationship" and p.domains and p.ranges}


def _fits(ends: RelationshipEnds, names: list[str], start: set[str], end: set[str]) -> bool:
    """Some type of ``names`` goes from a node labelled ``start`` to one labelled ``end`` (no labels: any node)."""
    return any((not start or start & ends[t][0]) and (not end or end & ends[t][1]) for t in names)


def far_labels(ends: RelationshipEnds, names: list[str], near: set[str], arrow: str) -> set[str] | None:
    """The labels the far node of a hop may have: the hop leaves a node labelled ``near`` (no labels:
    any node) over one of the types ``names``, written with ``arrow`` (``->``, ``<-`` or ``-``).
    None when a type's ends are not recorded (anything may follow); empty when the hop cannot be."""
    if not names or any(t not in ends for t in names):
        return None
    out: set[str] = set()
    for t in names:
        start, end = ends[t]
        if arrow != "<-" and (not near or near & start):
            out |= end
        if arrow != "->" and (not near or near & end):
            out |= start
    return out


def node_labels(query: str) -> dict[str, set[str]]:
    """The labels each variable is given in the query's node patterns (strings already blanked)."""
    bound: dict[str, set[str]] = {}
    for m in _NODE_RE.finditer(query):
        if m.group(1) and m.group(2):
            bound.setdefault(m.group(1), set()).update(_label_names(m.group(2)))
    return bound


def misdirected_relationships(query: str, schema: GraphSchema) -> list[str]:
    """Relationship patterns whose end labels or direction the schema does not have, each as what the
    query wrote and what the schema has: ``(:Movie)-[:REVIEWED]->(:Movie) (the schema has
    (:Person)-[:REVIEWED]->(:Movie))``.

    A node's labels come from its pattern, or from the pattern that bound its variable elsewhere in
    the query; a node without labels matches any. Only types whose start and end labels the schema
    lists are checked, and variable-length hops are not (their ends are several hops apart).
    """
    q = _strip_strings(query)
    ends = relationship_ends(schema)
    if not ends:
        return []
    bound = node_labels(q)
    out = []
    for m in _HOP.finditer(q):
        lvar, llabels, left_arrow, types, hops, right_arrow = m.groups()[:6]
        rnode = _NODE_RE.match(q, m.end())
        if not types or hops or rnode is None:
            continue
        a = set(_label_names(llabels)) or bound.get(lvar, set())
        b = set(_label_names(rnode.group(2))) or bound.get(rnode.group(1), set())
        names = [t for t in _type_names(types) if t in ends]
        if not names:
            continue  # an unknown type is reported as an unknown term
        if left_arrow and not right_arrow:
            ok = _fits(ends, names, b, a)
        elif right_arrow and not left_arrow:
            ok = _fits(ends, names, a, b)
        else:
            ok = _fits(ends, names, a, b) or _fits(ends, names, b, a)
        if ok:
            continue
        arrow = ("<-", "-") if left_arrow and not right_arrow else ("-", "->") if right_arrow else ("-", "-")
        wrote = f"({_show(a)}){arrow[0]}[:{'|'.join(names)}]{arrow[1]}({_show(b)})"
        has = "; ".join(f"({_show(ends[t][0])})-[:{t}]->({_show(ends[t][1])})" for t in names)
        out.append(f"{wrote} (the schema has {has})")
    return list(dict.fromkeys(out))


_REL_VAR = re.compile(rf"\[\s*([A-Za-z_]\w*)\s*:\s*({_NAME}(?:\s*\|\s*:?\s*{_NAME})*)")
_MAP_IN_PATTERN = re.compile(rf"(?:(?<![\w.])\(|\[)\s*(\w*)\s*((?::\s*{_NAME}\s*(?:\|\s*:?\s*{_NAME}\s*)*)*)\{{([^{{}}]*)\}}\s*[)\]]")


def variable_owners(query: str) -> dict[str, set[str]]:
    """What each variable's properties belong to: the labels its node patterns give it, or the types
    of its relationship pattern (strings already blanked)."""
    owners = node_labels(query)
    for m in _REL_VAR.finditer(query):
        owners.setdefault(m.group(1), set()).update(_type_names(m.group(2)))
    return owners


def property_owners(schema: GraphSchema) -> dict[str, set[str]]:
    """The property keys of each label and relationship type, as the schema records them (property
    graph schemas give each ``node_property`` the label or type that has it in ``domains``)."""
    keys: dict[str, set[str]] = {}
    for p in schema.properties:
        if p.kind != "relationship":
            for owner in p.domains:
                keys.setdefault(owner, set()).add(p.name)
    return keys


def misplaced_properties(query: str, schema: GraphSchema) -> list[str]:
    """Property keys read from a variable whose labels (or relationship types) do not have them, each
    as what the query wrote and what the schema has: ``m.rating (a :Movie has released, tagline,
    title, votes; rating is on :REVIEWED)``.

    A variable's labels are those its node patterns give it (``(m:Movie)``); a relationship
    variable's types those of its pattern (``[r:REVIEWED]``). Variables bound otherwise (``WITH m AS
    x``, ``UNWIND``) and keys of a schema that records no per-label keys are not checked. Keys in a
    pattern's map (``(m:Movie {name: ...})``) are checked against the pattern's own labels.
    """
    keys = property_owners(schema)
    if not keys:
        return []
    q = _strip_strings(query)
    owners = variable_owners(q)
    # (what the query wrote, the key, the labels or types it is read from)
    uses = [(f"{v}.{k.strip('`')}", k.strip("`"), owners[v]) for v, k in _PROPERTY_USE.findall(q) if v in owners]
    for m in _MAP_IN_PATTERN.finditer(q):
        names = set(_label_names(m.group(2)) if m.group(0).startswith("(") else _type_names(m.group(2)))
        for k in _MAP_KEY.findall(m.group(3)):
            uses.append((f"{{{k.strip('`')}: ...}}", k.strip("`"), names))
    out = []
    for wrote, key, names in uses:
        if not names or any(key in keys.get(n, ()) for n in names):
            continue
        has = "; ".join(f"a :{n} has {', '.join(sorted(keys[n])) or 'no properties'}" if n in keys else f":{n} has no properties" for n in sorted(names))
        elsewhere = sorted(n for n, ks in keys.items() if key in ks)
        where = f"; {key} is on {', '.join(':' + n for n in elsewhere)}" if elsewhere else ""
        out.append(f"{wrote} ({has}{where})")
    return list(dict.fromkeys(out))


def _show(labels: set[str]) -> str:
    return "|".join(f":{x}" for x in sorted(labels))

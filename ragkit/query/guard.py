"""The read-only guard: refuses generated SPARQL and Cypher queries that could write or reach out.

Generated queries come from a language model, so the guard treats them as untrusted input. It
tokenises each query the way the database would (strings, comments, IRIs and quoted names
are read as units, so a keyword inside one does not count) and refuses the query if any keyword
or procedure could modify the store, load data, administer the database or reach another
endpoint. When it cannot read a query completely, for example because a string is never closed,
it refuses the query.

Before tokenising, the guard builds several readings of the text: Unicode NFKC (so fullwidth
``ＤＥＬＥＴＥ`` reads as ``DELETE``), with format characters such as zero-width spaces
removed or read as spaces, and the text as written. It refuses the query if any reading is
refused. SPARQL codepoint escapes (``\\u0044``) are expanded first, because SPARQL parsers
expand them before they parse.

Example:
    >>> check_read_only("SELECT ?s WHERE { ?s ?p 'DELETE' }", "sparql")
    >>> is_read_only("MATCH (n) DETACH DELETE n", "cypher")
    False
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ragkit.errors import QueryParseError, ReadOnlyViolationError

__all__ = [
    "MAX_QUERY_CHARS",
    "READ_ONLY_PROCEDURES",
    "UNSAFE_FUNCTION_NAMESPACES",
    "check_read_only",
    "is_read_only",
]

MAX_QUERY_CHARS = 20_000
"""Longest query the guard accepts, in characters."""

READ_ONLY_PROCEDURES: frozenset[str] = frozenset(
    {
        "db.labels",
        "db.relationshipTypes",
        "db.propertyKeys",
        "db.schema.visualization",
        "db.schema.nodeTypeProperties",
        "db.schema.relTypeProperties",
        "db.index.fulltext.queryNodes",
        "db.index.vector.queryNodes",
    }
)
"""Cypher procedures that ``CALL`` may run; names are matched exactly, case included."""

UNSAFE_FUNCTION_NAMESPACES: tuple[str, ...] = (
    "apoc.cypher.",
    "apoc.periodic.",
    "apoc.do.",
    "apoc.create.",
    "apoc.merge.",
    "apoc.refactor.",
    "apoc.nodes.",
    "apoc.load.",
    "apoc.import.",
    "apoc.export.",
    "apoc.trigger.",
    "apoc.custom.",
    "apoc.systemdb.",
    "apoc.util.",
    "dbms.",
)
"""Namespaces (lower case) of Cypher functions refused even outside ``CALL``.

Neo4j runs functions read-only, so this list is a second line of defence: it catches procedures
written as function calls (``RETURN apoc.cypher.runWrite(...)``) and functions that read files
or URLs.
"""

_SPARQL_FORMS = frozenset({"SELECT", "ASK", "CONSTRUCT", "DESCRIBE"})
_FORMS_TEXT = "SELECT, ASK, CONSTRUCT or DESCRIBE"


class _Reason(NamedTuple):
    """Why a term is refused, as a verb phrase for one term and for several."""

    one: str
    many: str


_WRITES = _Reason("modifies the graph", "modify the graph")
_LOADS = _Reason("loads data from outside the graph", "load data from outside the graph")
_REMOTE = _Reason("sends part of the query to another endpoint", "send parts of the query to other endpoints")
_ADMIN = _Reason("runs an administration command", "run administration commands")
_DATABASE = _Reason("switches to another database", "switch to other databases")
_BATCHES = _Reason("commits a subquery in separate transactions", "commit subqueries in separate transactions")
_PROCEDURE = _Reason(
    "is not on ragkit's allow-list of read-only procedures",
    "are not on ragkit's allow-list of read-only procedures",
)
_UNKNOWN_CALL = _Reason("calls something the guard cannot identify", "call things the guard cannot identify")
_FUNCTION = _Reason(
    "can write to the graph or reach outside it", "can write to the graph or reach outside it"
)

# Every SPARQL 1.1 Update operation starts with one of these words (WITH starts a modify).
_SPARQL_REFUSED: dict[str, _Reason] = {
    "INSERT": _WRITES,
    "DELETE": _WRITES,
    "LOAD": _LOADS,
    "CLEAR": _WRITES,
    "CREATE": _WRITES,
    "DROP": _WRITES,
    "COPY": _WRITES,
    "MOVE": _WRITES,
    "ADD": _WRITES,
    "WITH": _WRITES,
    "SERVICE": _REMOTE,
}

_CYPHER_REFUSED: dict[str, _Reason] = {
    "CREATE": _WRITES,
    "MERGE": _WRITES,
    "DELETE": _WRITES,
    "DETACH": _WRITES,
    "NODETACH": _WRITES,
    "SET": _WRITES,
    "REMOVE": _WRITES,
    "INSERT": _WRITES,  # GQL's synonym for CREATE, accepted by recent Neo4j versions
    "FOREACH": _WRITES,
    "DROP": _WRITES,
    "LOAD": _LOADS,
    "USE": _DATABASE,
    "ALTER": _ADMIN,
    "GRANT": _ADMIN,
    "DENY": _ADMIN,
    "REVOKE": _ADMIN,
    "START": _ADMIN,
    "STOP": _ADMIN,
    "TERMINATE": _ADMIN,
    "SHOW": _ADMIN,
    "RENAME": _ADMIN,
    "ENABLE": _ADMIN,
    "DEALLOCATE": _ADMIN,
    "REALLOCATE": _ADMIN,
}


class _Token(NamedTuple):
    """One lexical unit.

    ``kind`` is ``word`` (a bare word: keyword or unquoted name), ``name`` (a SPARQL prefixed
    name or a Cypher backtick-quoted name), ``var``, ``iri``, ``string``, ``number`` or
    ``punct``. Comments and whitespace produce no tokens.
    """

    kind: str
    text: str


class _Finding(NamedTuple):
    term: str
    reason: _Reason


_Lexer = Callable[[str], list[_Token]]


class _UnreadableError(Exception):
    """The tokeniser could not read the query to its end (an unterminated string or comment)."""

    def __init__(self, what: str, start: str) -> None:
        self.what = what
        self.start = start
        super().__init__(what)


# Line ends as str.splitlines() knows them: ending a comment at any of them shows the guard at
# least as much code as the database sees.
_LINE_END = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LETTERS = re.compile(r"[^\W\d_]+")

_SPARQL_TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<comment>\#[^{_LINE_END}]*)
  | (?P<string>'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
      |(?!''')'(?:\\.|[^'\\\n\r])*'|(?!\"\"\")"(?:\\.|[^"\\\n\r])*")
  | (?P<quote>'''|\"\"\"|['"])
  | (?P<iri><[^<>"{{}}|^`\\\x00-\x20\s]*>)
  | (?P<var>[?$]\w+)
  | (?P<word>(?:[\w.:%-]|\\\S|[^\x00-\x7f\s])+)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# A prefixed name's prefix is empty, "_" (blank node) or starts with a letter and does not end in ".".
_SPARQL_PREFIX = re.compile(r"(?:_|[^\W\d_](?:[\w.-]*[\w-])?)?")
_SPARQL_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})")

_CYPHER_TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<comment>//[^{_LINE_END}]*|/\*.*?\*/)
  | (?P<opencomment>/\*)
  | (?P<string>'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*")
  | (?P<quote>['"])
  | (?P<name>`(?:[^`]|``)*`)
  | (?P<backtick>`)
  | (?P<var>\$(?:\w+|`(?:[^`]|``)*`))
  | (?P<word>\w+)
  | (?P<punct>\.\.|::|.)
    """,
    re.VERBOSE | re.DOTALL,
)
# Tokens after which "." is a property lookup or a namespace separator, not the end of a number.
_CYPHER_LOOKUP_BASE = frozenset({")", "]", "}", "{", ","})

SPARQL_PARSE_LOCK = threading.Lock()
"""Held while rdflib's (not thread-safe) SPARQL parser runs; take it around any other rdflib parse."""


# -- public API --------------------------------------------------------------------------------
def check_read_only(
    query: str,
    language: str,
    *,
    allow_service: bool = False,
    allowed_procedures: frozenset[str] | None = None,
) -> None:
    """Raise unless ``query`` is a read-only query in ``language``.

    SPARQL queries must be SELECT, ASK, CONSTRUCT or DESCRIBE queries without any SPARQL Update
    keyword and, unless ``allow_service`` is set, without ``SERVICE``. When rdflib is installed
    the query must also parse as a SPARQL query. Cypher queries must not contain a clause that
    writes, loads, or administers the database, and ``CALL`` may run only procedures on the
    allow-list. Anything the guard cannot read completely is refused.

    Args:
        query: the query text, as it will be sent to the store.
        language: ``"sparql"`` or ``"cypher"`` (case-insensitive).
        allow_service: accept SPARQL ``SERVICE`` clauses (federated queries to other endpoints).
        allowed_procedures: Cypher procedures ``CALL`` may run, replacing
            ``READ_ONLY_PROCEDURES``; names are matched exactly.

    Raises:
        ReadOnlyViolationError: the query was refused; the message says why and ``details``
            lists the offending keywords or procedures.
        QueryParseError: SPARQL that does not parse (so it cannot be confirmed read-only); refused too.
        ValueError: ``language`` is neither SPARQL nor Cypher.
    """
    lang = language.strip().lower() if isinstance(language, str) else ""
    if lang not in ("sparql", "cypher"):
        raise ValueError(f"unknown query language {language!r} (use 'sparql' or 'cypher')")
    if not isinstance(query, str):
        raise _refused(
            repr(query)[:200], f"the query is a {type(query).__name__}, not a string", ["not a string"]
        )
    if "\x00" in query:
        raise _refused(query, "the query contains a NUL character, which no query needs", ["NUL"])
    if len(query) > MAX_QUERY_CHARS:
        raise _refused(
            query,
            f"the query is {len(query):,} characters long, over the limit of {MAX_QUERY_CHARS:,}",
            ["too long"],
        )
    if lang == "sparql":
        _check_sparql(query, allow_service=allow_service)
    else:
        procedures = READ_ONLY_PROCEDURES if allowed_procedures is None else allowed_procedures
        _check_cypher(query, procedures)


def is_read_only(
    query: str,
    language: str,
    *,
    allow_service: bool = False,
    allowed_procedures: frozenset[str] | None = None,
) -> bool:
    """Whether ``check_read_only`` accepts ``query``.

    Args:
        query: the query text.
        language: ``"sparql"`` or ``"cypher"``.
        allow_service: as for ``check_read_only``.
        allowed_procedures: as for ``check_read_only``.

    Returns:
        True when the query is accepted, False when it is refused.

    Raises:
        ValueError: ``language`` is neither SPARQL nor Cypher.
    """
    try:
        check_read_only(query, language, allow_service=allow_service, allowed_procedures=allowed_procedures)
    except (ReadOnlyViolationError, QueryParseError):
        return False
    return True


# -- SPARQL ------------------------------------------------------------------------------------
def _check_sparql(query: str, *, allow_service: bool) -> None:
    expanded = _SPARQL_ESCAPE.sub(_expand_escape, query)
    if "\x00" in expanded:
        raise _refused(query, "the query contains a NUL character, which no query needs", ["NUL"])
    primary: list[_Token] | None = None
    for reading in _readings([expanded, query]):
        tokens = _tokens_or_refuse(query, reading, _sparql_tokens)
        if primary is None:
            primary = tokens
            if not tokens:
                raise _refused(query, f"the query is empty (write a {_FORMS_TEXT} query)", ["empty"])
        found = _sparql_findings(tokens, allow_service=allow_service)
        if found:
            raise _refusal(query, found)
    first = _sparql_first_word(primary or [])
    if first.upper() not in _SPARQL_FORMS:
        what = f"starts with {first}" if first else "has nothing after its PREFIX and BASE declarations"
        raise _refused(query, f"the query {what}, not with {_FORMS_TEXT}", [first or "no query form"])
    _confirm_sparql_parses(query)


def _expand_escape(m: re.Match[str]) -> str:
    code = int(m.group(1) or m.group(2), 16)
    if code > 0x10FFFF:
        return m.group(0)
    return chr(code)


def _sparql_tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    for m in _SPARQL_TOKEN.finditer(text):
        kind = m.lastgroup
        value = m.group()
        if kind in ("space", "comment"):
            continue
        if kind == "quote":
            what = "long string" if len(value) == 3 else "string"
            raise _UnreadableError(f"an unterminated {what}", text[m.start() : m.start() + 30])
        if kind == "word" and ":" in value:
            prefix = value.split(":", 1)[0]
            if _SPARQL_PREFIX.fullmatch(prefix):
                kind = "name"
        tokens.append(_Token(kind or "punct", value))
    return tokens


def _sparql_findings(tokens: list[_Token], *, allow_service: bool) -> list[_Finding]:
    found: list[_Finding] = []
    for tok in tokens:
        if tok.kind != "word":
            continue
        upper = tok.text.upper()
        # Only keywords and built-in function names are bare words in SPARQL, and none of those
        # contains an update keyword, so a substring match is safe and also catches run-together
        # keywords that a lenient parser might split ("DELETEWHERE").
        for keyword, reason in _SPARQL_REFUSED.items():
            if keyword in upper and not (keyword == "SERVICE" and allow_service):
                found.append(_Finding(keyword, reason))
    return found


def _sparql_first_word(tokens: list[_Token]) -> str:
    """The first token after the prologue (BASE, PREFIX and VERSION declarations), or ""."""
    i = 0
    while i < len(tokens):
        word = tokens[i].text.upper() if tokens[i].kind == "word" else ""
        if word in ("BASE", "VERSION"):
            i += 2
        elif word == "PREFIX":
            i += 3
        else:
            return tokens[i].text[:40]
    return ""


def _confirm_sparql_parses(query: str) -> None:
    # pyoxigraph has no parse-only entry point: Store().query() evaluates the query, and
    # evaluation runs ASK queries eagerly and sends SERVICE requests. rdflib's parser only
    # parses, and rejects update syntax.
    try:
        from rdflib.plugins.sparql.parser import parseQuery
    except ImportError:
        return
    try:
        with SPARQL_PARSE_LOCK:  # pyparsing grammars keep shared state
            parseQuery(query)
    except RecursionError:
        # rdflib's recursive-descent parser runs out of stack at roughly 80 triple patterns in
        # one group or 40 nested groups.
        raise _refused(
            query,
            "the query is too long or too deeply nested for the SPARQL parser to confirm that it "
            "only reads (split it into smaller queries)",
            ["too complex to parse"],
        ) from None
    except Exception as e:  # noqa: BLE001 - any parser failure means the query is unverified
        # Unverifiable means refused; it surfaces as a parse error so a repair step can fix the syntax.
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QueryParseError(
            f"refused: the query does not parse as a SPARQL {_FORMS_TEXT} query ({reason}), "
            "so the guard cannot confirm that it only reads; fix the syntax",
            query=query,
            details=["parse error", reason],
        ) from None


# -- Cypher ------------------------------------------------------------------------------------
def _check_cypher(query: str, procedures: frozenset[str]) -> None:
    for n, reading in enumerate(_readings([query])):
        tokens = _tokens_or_refuse(query, reading, _cypher_tokens)
        if n == 0 and not tokens:
            raise _refused(query, "the query is empty (write a MATCH ... RETURN query)", ["empty"])
        found = _cypher_findings(tokens, procedures)
        if found:
            raise _refusal(query, found, _backtick_hint(found))


def _backtick_hint(found: list[_Finding]) -> str:
    """Tell how to keep a refused keyword that was meant as a name (``start``, ``set``)."""
    names = list(dict.fromkeys(f.term for f in found if f.term in _CYPHER_REFUSED))
    if not names:
        return ""
    if len(names) == 1:
        return f" (to use {names[0]} as a name, quote it in backticks)"
    return f" (to use {_join(names)} as names, quote them in backticks)"


def _cypher_tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    for m in _CYPHER_TOKEN.finditer(text):
        kind = m.lastgroup
        value = m.group()
        if kind in ("space", "comment"):
            continue
        start = text[m.start() : m.start() + 30]
        if kind == "opencomment":
            raise _UnreadableError("an unterminated /* comment", start)
        if kind == "quote":
            raise _UnreadableError("an unterminated string", start)
        if kind == "backtick":
            raise _UnreadableError("an unterminated `quoted name`", start)
        if kind == "name":
            value = value[1:-1].replace("``", "`")
        elif kind == "word" and value[0].isdigit():
            kind = "number"
        tokens.append(_Token(kind or "punct", value))
    return tokens


def _cypher_findings(tokens: list[_Token], procedures: frozenset[str]) -> list[_Finding]:
    found: list[_Finding] = []
    for i, tok in enumerate(tokens):
        if tok.kind == "number":
            # "1E5DELETE" may lex as a number followed by a keyword.
            found.extend(
                _Finding(run.upper(), _CYPHER_REFUSED[run.upper()])
                for run in _LETTERS.findall(tok.text)
                if run.upper() in _CYPHER_REFUSED
            )
            continue
        if tok.kind not in ("word", "name") or _is_cypher_name(tokens, i):
            continue
        upper = tok.text.upper()
        if tok.kind == "word" and upper in _CYPHER_REFUSED:
            term = "LOAD CSV" if upper == "LOAD" and _word_at(tokens, i + 1) == "CSV" else upper
            found.append(_Finding(term, _CYPHER_REFUSED[upper]))
        elif tok.kind == "word" and upper == "TRANSACTIONS" and _ends_in_transactions(tokens, i):
            found.append(_Finding("IN TRANSACTIONS", _BATCHES))
        elif tok.kind == "word" and upper == "CALL":
            found.extend(_cypher_call(tokens, i, procedures))
        else:
            name, end = _dotted_name(tokens, i)
            if "." in name and _punct_at(tokens, end) == "(" and _word_at(tokens, i - 1) != "CALL":
                if name.lower().startswith(UNSAFE_FUNCTION_NAMESPACES):
                    found.append(_Finding(f"{name}()", _FUNCTION))
    return found


def _is_cypher_name(tokens: list[_Token], i: int) -> bool:
    """Whether the word at ``i`` is a property key, label, type or map key rather than a keyword."""
    before = _punct_at(tokens, i - 1)
    if before == ".":
        # After a number, "1." could be read as a float followed by a keyword.
        base = tokens[i - 2] if i >= 2 else None
        return base is not None and (base.kind in ("word", "name", "var") or base.text in _CYPHER_LOOKUP_BASE)
    if before == ":":
        return True
    return before in ("{", ",") and _punct_at(tokens, i + 1) == ":"


def _ends_in_transactions(tokens: list[_Token], i: int) -> bool:
    """Whether TRANSACTIONS at ``i`` ends ``} IN [n] [CONCURRENT] TRANSACTIONS``."""
    j = i - 1
    while j >= 0 and (tokens[j].kind in ("number", "var") or _word_at(tokens, j) == "CONCURRENT"):
        j -= 1
    return _word_at(tokens, j) == "IN" and _punct_at(tokens, j - 1) == "}"


def _cypher_call(tokens: list[_Token], i: int, procedures: frozenset[str]) -> list[_Finding]:
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    if nxt is not None and nxt.kind == "punct" and nxt.text in ("{", "("):
        return []  # a subquery, whose clauses are checked like the rest of the query
    if nxt is None or nxt.kind not in ("word", "name"):
        return [_Finding("CALL", _UNKNOWN_CALL)]
    name, _ = _dotted_name(tokens, i + 1)
    if name in procedures:
        return []
    return [_Finding(f"CALL {name}", _PROCEDURE)]


def _dotted_name(tokens: list[_Token], i: int) -> tuple[str, int]:
    """The name ``a.b.c`` starting at ``i`` and the index just after it."""
    parts = [tokens[i].text]
    j = i + 1
    while _punct_at(tokens, j) == "." and j + 1 < len(tokens) and tokens[j + 1].kind in ("word", "name"):
        parts.append(tokens[j + 1].text)
        j += 2
    return ".".join(parts), j


def _word_at(tokens: list[_Token], i: int) -> str:
    if 0 <= i < len(tokens) and tokens[i].kind == "word":
        return tokens[i].text.upper()
    return ""


def _punct_at(tokens: list[_Token], i: int) -> str:
    if 0 <= i < len(tokens) and tokens[i].kind == "punct":
        return tokens[i].text
    return ""


# -- shared ------------------------------------------------------------------------------------
def _readings(texts: Iterable[str]) -> list[str]:
    """The distinct readings of ``texts`` to check, the normalised reading of the first one first.

    Format characters are invisible, and a database may drop them, treat them as spaces (Neo4j
    does for U+180E) or keep them as name characters; NFKC may turn a harmless character into a
    quote. Each reading stands for one of these interpretations.
    """
    out: dict[str, None] = {}
    for text in texts:
        if text.isascii():
            out.setdefault(text, None)
            continue
        dropped = _without_format(text, "")
        spaced = _without_format(text, " ")
        out.setdefault(_without_format(unicodedata.normalize("NFKC", dropped), ""), None)
        out.setdefault(_without_format(unicodedata.normalize("NFKC", spaced), " "), None)
        out.setdefault(spaced, None)
        out.setdefault(text, None)
    return list(out)


def _without_format(text: str, replacement: str) -> str:
    return "".join(replacement if unicodedata.category(c) == "Cf" else c for c in text)


def _tokens_or_refuse(query: str, reading: str, lex: _Lexer) -> list[_Token]:
    try:
        return lex(reading)
    except _UnreadableError as e:
        raise _refused(
            query,
            f"the query has {e.what} (starting {e.start!r}), so the guard cannot read it completely",
            [e.what.removeprefix("an ")],
        ) from None


def _refusal(query: str, findings: list[_Finding], hint: str = "") -> ReadOnlyViolationError:
    groups: dict[_Reason, list[str]] = {}
    for f in findings:
        terms = groups.setdefault(f.reason, [])
        if f.term not in terms:
            terms.append(f.term)
    parts = [
        f"{_join(terms)}, which {reason.one if len(terms) == 1 else reason.many}" for reason, terms in groups.items()
    ]
    details = [term for terms in groups.values() for term in terms]
    return _refused(query, "the query contains " + ", and ".join(parts) + hint, details)


def _refused(query: str, why: str, details: list[str]) -> ReadOnlyViolationError:
    return ReadOnlyViolationError(
        f"refused: {why}; ragkit runs read-only queries only", query=query, details=details
    )


def _join(terms: list[str]) -> str:
    if len(terms) == 1:
        return terms[0]
    return ", ".join(terms[:-1]) + " and " + terms[-1]


"""The read-only guard refuses every mutating or evasive query and accepts tricky read-only ones."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import ragkit.query.guard as guard
from ragkit.errors import QueryError, QueryParseError, ReadOnlyViolationError
from ragkit.query.guard import MAX_QUERY_CHARS, READ_ONLY_PROCEDURES, check_read_only, is_read_only

# -- queries that must be refused ------------------------------------------------------------------
REFUSED_SPARQL = [
    "INSERT DATA { <http://x/a> <http://x/b> <http://x/c> }",
    "insert data { <http://x/a> <http://x/b> <http://x/c> }",
    "InSeRt DaTa { <http://x/a> <http://x/b> 'c' }",
    "DELETE DATA { <http://x/a> <http://x/b> <http://x/c> }",
    "DELETE WHERE { ?s ?p ?o }",
    "DELETE WHERE {}",
    "INSERT DATA {}",
    "DELETE { ?s ?p ?o } INSERT { ?s ?p 'x' } WHERE { ?s ?p ?o }",
    "WITH <http://g> DELETE { ?s ?p ?o } WHERE { ?s ?p ?o }",
    "PREFIX ex: <http://x/> INSERT { ?s ex:p 1 } WHERE { ?s ?p ?o }",
    "LOAD <http://evil.example/data.ttl>",
    "load silent <http://evil.example/data.ttl> into graph <http://g>",
    "CLEAR ALL",
    "clear default",
    "DROP GRAPH <http://g>",
    "DROP SILENT ALL",
    "CREATE GRAPH <http://g>",
    "COPY <http://a> TO <http://b>",
    "MOVE DEFAULT TO <http://b>",
    "ADD <http://a> TO <http://b>",
    # several operations: an update after a query
    "SELECT * WHERE { ?s ?p ?o } ; DROP ALL",
    "SELECT * WHERE { ?s ?p ?o };\nINSERT DATA { <a:b> <a:c> <a:d> }",
    "CONSTRUCT { ?s ?p ?o } WHERE { ?s ?p ?o } ; CLEAR ALL",
    # federation
    "SELECT * WHERE { SERVICE <http://evil.example/sparql> { ?s ?p ?o } }",
    "select * where { service silent <http://evil> { ?s ?p ?o } }",
    # Unicode disguises
    "ＩＮＳＥＲＴ ＤＡＴＡ { <http://x/a> <http://x/b> 1 }",
    "SELECT * WHERE { ?s ?p ?o } ; ＤＲＯＰ ALL",
    "DEL\u200bETE WHERE { ?s ?p ?o }",
    "INS\u2060ERT DATA { <a:b> <a:c> <a:d> }",
    "\ufeffDROP ALL",
    "CLEAR\u3000ALL",
    # comments and layout between tokens
    "DELETE#comment\nWHERE { ?s ?p ?o }",
    "DELETE\tWHERE\n{ ?s ?p ?o }",
    "# just a comment\nDROP ALL",
    "SELECT ?s WHERE { ?s ?p ?o } # note\rDROP ALL",
    "SELECT ?s WHERE { ?s ?p ?o } # note\u2028DROP ALL",
    # strings that never end, hiding the rest of the text
    'SELECT * WHERE { ?s ?p "x } ; DROP ALL',
    "SELECT * WHERE { ?s ?p '''x } ; DROP ALL",
    "SELECT * WHERE { ?s ?p 'x\n} ; DROP ALL #'",
    # codepoint escapes, which SPARQL parsers expand before parsing
    'SELECT * WHERE { ?s ?p "x\\u0022 } ; DROP ALL #" }',
    "\\u0044ELETE WHERE { ?s ?p ?o }",
    # run-together keywords
    "DELETEWHERE{?s ?p ?o}",
    "SELECT * WHERE { ?s ?p ?o.DROP }",
    # not a query at all
    "PREFIX ex: <http://x/>",
    "ex:thing",
]

REFUSED_CYPHER = [
    "CREATE (n:Person {name: 'x'})",
    "create (n)",
    "CrEaTe (n)",
    "MATCH (n) DETACH DELETE n",
    "match (n) delete n",
    "MERGE (n:Person {name: 'x'}) RETURN n",
    "MATCH (n) SET n.x = 1 RETURN n",
    "MATCH (n) SET n += {x: 1}",
    "MATCH (n) SET n:Admin",
    "MATCH (n) REMOVE n:Label",
    "MATCH (n) REMOVE n.x",
    "MATCH (a), (b) CREATE (a)-[:KNOWS]->(b)",
    "INSERT (n:Person {name: 'x'})",
    "MATCH (n) NODETACH DELETE n",
    "LOAD CSV FROM 'https://evil.example/x.csv' AS row RETURN row",
    "load csv with headers from 'file:///etc/passwd' as row return row",
    "MATCH (n) FOREACH (x IN [1] | SET n.y = x)",
    "WITH 1 AS x CREATE (n {x: x})",
    "UNWIND [1, 2] AS i MERGE (n {i: i})",
    "CALL db.labels() YIELD label WITH label MERGE (:Seen {l: label})",
    # subqueries
    "CALL { CREATE (n:X) RETURN n } RETURN n",
    "MATCH (n) WITH n CALL (n) { SET n.x = 1 } RETURN n",
    "CALL { MATCH (n) RETURN n } IN TRANSACTIONS OF 10 ROWS RETURN n",
    "CALL { MATCH (n) RETURN n } IN 4 CONCURRENT TRANSACTIONS RETURN n",
    # procedures and functions
    "CALL apoc.create.node(['X'], {}) YIELD node RETURN node",
    "OPTIONAL CALL apoc.create.node(['X'], {}) YIELD node RETURN node",
    "CALL `apoc`.`create`.`node`(['X'], {})",
    "CALL dbms.security.createUser('eve', 'pw', false)",
    "CALL dbms.killQuery('q-1')",
    "CALL db.createLabel('X')",
    "CALL db.clearQueryCaches()",
    "CALL gds.pageRank.write('g', {writeProperty: 'pr'})",
    "CALL apoc.load.json('http://evil.example/') YIELD value RETURN value",
    "CALL apoc.periodic.iterate('MATCH (n) RETURN n', 'DELETE n', {})",
    "MATCH (n) CALL apoc.cypher.runWrite('CREATE (m)', {}) YIELD value RETURN value",
    "MATCH (n) RETURN apoc.cypher.runWrite('CREATE (m)', {})",
    "CALL db.labels() YIELD label CALL apoc.create.node([label], {}) YIELD node RETURN node",
    "CALL $procedure",
    # schema and administration
    "CREATE INDEX FOR (n:X) ON (n.p)",
    "DROP INDEX my_index",
    "DROP DATABASE neo4j",
    "USE system MATCH (n) RETURN n",
    "SHOW DATABASES",
    "ALTER USER neo4j SET PASSWORD 'x'",
    "GRANT ROLE admin TO eve",
    "DENY READ {*} ON GRAPH * TO eve",
    "REVOKE ROLE admin FROM neo4j",
    "STOP DATABASE neo4j",
    "START DATABASE neo4j",
    "TERMINATE TRANSACTIONS 'neo4j-transaction-1'",
    # several statements, prefixes
    "MATCH (n) RETURN n; MATCH (m) DELETE m",
    "CYPHER runtime=slotted MATCH (n) DELETE n",
    "EXPLAIN MATCH (n) DELETE n",
    # Unicode disguises
    "ＭＡＴＣＨ (n) ＤＥＬＥＴＥ n",
    "MATCH (n) DEL\u200bETE n",
    "MATCH (n) DEL\u00adETE n",
    "WITH 1 AS x\u180eCREATE (n)",
    # comments and layout between tokens
    "MATCH (n)/*x*/DELETE/**/n",
    "MATCH (n) // harmless\nDELETE n",
    "MATCH (n) // harmless\u2028DELETE n",
    "MATCH (n)\n\tDETACH\n\tDELETE n",
    "MATCH (n) WITH n WHERE n.x > 1E5DELETE n",
    # unreadable: strings, comments and names that never end
    "MATCH (n) WHERE n.name = 'x RETURN n DELETE n",
    'MATCH (n) WHERE n.name = "x RETURN n DELETE n',
    "MATCH (n) /* DELETE n",
    "MATCH (`n) DELETE n",
]

REFUSED_ANY = [
    ("sparql", ""),
    ("sparql", "   \n\t"),
    ("sparql", "# only a comment"),
    ("sparql", "\u200b"),
    ("sparql", "SELECT * WHERE { ?s ?p ?o }\x00"),
    ("cypher", ""),
    ("cypher", "// only a comment"),
    ("cypher", "/* */"),
    ("cypher", "MATCH (n) RETURN n\x00"),
]

# -- queries that must be accepted -----------------------------------------------------------------
ACCEPTED_SPARQL = [
    "SELECT ?s WHERE { ?s ?p ?o }",
    "select ?s where { ?s ?p ?o } limit 10",
    "ASK { ?s ?p ?o }",
    "CONSTRUCT { ?s ?p ?o } WHERE { ?s ?p ?o }",
    "DESCRIBE <http://example.org/book/1>",
    'PREFIX ex: <http://example.org/> SELECT ?b WHERE { ?b ex:title "How to DELETE a file" }',
    "SELECT ?s WHERE { ?s ?p 'please create, insert and drop' }",
    'SELECT ?s WHERE { ?s ?p """multi\nline INSERT DATA { }""" }',
    "PREFIX lib: <http://example.org/lib#> "
    "SELECT ?insert ?delete WHERE { ?insert lib:set ?delete . ?delete lib:drop $load }",
    "SELECT ?s WHERE { ?s <http://example.org/ns#delete> <http://example.org/drop/insert#CLEAR> }",
    "PREFIX : <http://x/> SELECT ?s WHERE { ?s :insert :load ; :copy ?o }",
    "PREFIX ex: <http://x/> SELECT ?with WHERE { ?with ex:with ex:service }",
    "# DELETE everything? No, just read.\nSELECT ?s WHERE { ?s ?p ?o } # DROP ALL",
    "PREFIX ex: <http://x/> SELECT ?a (COUNT(?b) AS ?n) WHERE { ?b a ex:Book ; ex:author ?a } "
    "GROUP BY ?a HAVING (COUNT(?b) > 1) ORDER BY DESC(?n)",
    "SELECT ?s WHERE { { ?s ?p 1 } UNION { ?s ?p 2 } OPTIONAL { ?s ?q ?o } "
    "FILTER NOT EXISTS { ?s a ?t } MINUS { ?s ?x ?y } }",
    "SELECT ?r WHERE { ?s ?p ?o FILTER(REGEX(?o, 'insert|delete', 'i')) BIND(REPLACE(?o, 'drop', 'add') AS ?r) }",
    "BASE <http://x/> PREFIX ex: <ex#> SELECT * WHERE { ?s ex:p ?o }",
    "SELECT ?s WHERE { ?s ?p ?o } VALUES ?o { 'CLEAR ALL' }",
    "SELECT ?s WHERE { ?s ?p \"Zoë\"@fr . ?s ?q 'x'@en-GB . ?s ?r \"👩\u200d💻\" }",
    "SELECT ?s WHERE { ?s <http://x/p> ?o . FILTER(?o < 5 && ?o > 1) }",
    "PREFIX ex: <http://x/> SELECT ?s WHERE { ?s ex:p/ex:q* ?o ; ^ex:r ?x . _:b ex:p ?s }",
]

ACCEPTED_CYPHER = [
    "MATCH (n) RETURN n LIMIT 10",
    "MATCH (n) WHERE n.name = 'DROP TABLE' RETURN n",
    "MATCH (n:Person) RETURN n.delete, n.create, n . set",
    "MATCH (`create`:Person) RETURN `create`.name AS `set`",
    "CALL db.labels() YIELD label RETURN label",
    "CALL db.relationshipTypes()",
    "CALL db.index.fulltext.queryNodes('titles', 'merge sort') YIELD node, score RETURN node.title, score",
    "MATCH (a:Person) OPTIONAL MATCH (a)-[:WROTE]->(b:Book) RETURN a.name, count(b) AS books ORDER BY books DESC",
    "MATCH (a:Author) RETURN a.name AS name UNION MATCH (p:Publisher) RETURN p.name AS name",
    "MATCH (p:Person) WHERE COUNT { (p)-[:WROTE]->() } > 2 RETURN p",
    "MATCH (p:Person) WHERE EXISTS { MATCH (p)-[:WROTE]->(:Book) } RETURN p",
    "// delete nothing, just read\nMATCH (n) /* SET n.x = 1 */ RETURN n",
    'MATCH (n) WHERE n.title CONTAINS "create" OR n.title STARTS WITH \'merge\' RETURN n',
    "MATCH (n {create: 1, `merge`: 2}) RETURN n {.name, .delete}",
    "MATCH p = shortestPath((a)-[*..5]-(b)) RETURN length(p)",
    "MATCH (n:Set)-[:CREATE]->(m) RETURN n, m",
    "MATCH (a)-[:CREATED]->(b) RETURN a, b",
    "UNWIND [1, 2, 3] AS x WITH x WHERE x IN $list RETURN collect(x)",
    "CALL { MATCH (n) RETURN n } RETURN count(n)",
    "MATCH (n) RETURN duration.between(n.created, date()) AS age, date.truncate('month', n.created)",
    "WITH [1, 2] AS transactions UNWIND transactions AS t RETURN t",
    "RETURN apoc.text.join(['a', 'b'], ',') AS s",
    "MATCH (n) RETURN n.x * 1.5 AS y, n.`delete` AS d, $set AS p",
    "MATCH (n) RETURN 'it''s' AS a, 'back\\'slash DELETE' AS b",
    "MATCH (n) DEL/**/ETE n",  # a comment splits the word: no DELETE keyword here
]


@pytest.mark.parametrize("query", REFUSED_SPARQL)
def test_refuses_sparql(query: str) -> None:
    with pytest.raises(ReadOnlyViolationError):
        check_read_only(query, "sparql")
    assert not is_read_only(query, "sparql")


@pytest.mark.parametrize("query", REFUSED_CYPHER)
def test_refuses_cypher(query: str) -> None:
    with pytest.raises(ReadOnlyViolationError):
        check_read_only(query, "cypher")
    assert not is_read_only(query, "cypher")


@pytest.mark.parametrize(("language", "query"), REFUSED_ANY)
def test_refuses_empty_and_nul(language: str, query: str) -> None:
    assert not is_read_only(query, language)


@pytest.mark.parametrize("query", ACCEPTED_SPARQL)
def test_accepts_sparql(query: str) -> None:
    check_read_only(query, "sparql")
    assert is_read_only(query, "sparql")


@pytest.mark.parametrize("query", ACCEPTED_CYPHER)
def test_accepts_cypher(query: str) -> None:
    check_read_only(query, "cypher")
    assert is_read_only(query, "cypher")


def test_case_counts() -> None:
    assert len(REFUSED_SPARQL) + len(REFUSED_CYPHER) + len(REFUSED_ANY) >= 60
    assert len(ACCEPTED_SPARQL) + len(ACCEPTED_CYPHER) >= 25


# -- messages and details ----------------------------------------------------------------------------
def test_message_names_keyword_and_reason() -> None:
    query = "DELETE WHERE { ?s ?p ?o }"
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only(query, "sparql")
    err = info.value
    assert str(err) == (
        "refused: the query contains DELETE, which modifies the graph; ragkit runs read-only queries only"
    )
    assert err.details == ["DELETE"]
    assert err.query == query
    assert isinstance(err, QueryError)


def test_message_groups_several_reasons() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("SELECT * WHERE { SERVICE <http://x> { ?s ?p ?o } } ; DROP ALL ; INSERT DATA {}", "sparql")
    message = str(info.value)
    assert "SERVICE, which sends part of the query to another endpoint" in message
    assert "DROP and INSERT, which modify the graph" in message
    assert info.value.details == ["SERVICE", "DROP", "INSERT"]


def test_cypher_message_suggests_backticks() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("MATCH (start)-[:NEXT]->(stop) DETACH DELETE start", "cypher")
    message = str(info.value)
    assert "START and STOP, which run administration commands" in message
    assert "DETACH and DELETE, which modify the graph" in message
    assert "as names, quote them in backticks" in message
    assert info.value.details == ["START", "STOP", "DETACH", "DELETE"]


def test_normalised_keyword_is_reported_plainly() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("MATCH (n) ＤＥＬ\u200bＥＴＥ n", "cypher")
    assert info.value.details == ["DELETE"]


def test_procedure_message() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("CALL apoc.create.node(['X'], {}) YIELD node RETURN node", "cypher")
    assert "CALL apoc.create.node, which is not on ragkit's allow-list of read-only procedures" in str(info.value)
    assert info.value.details == ["CALL apoc.create.node"]


def test_function_message() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("MATCH (n) RETURN apoc.cypher.runWrite('CREATE (m)', {})", "cypher")
    assert "apoc.cypher.runWrite()" in str(info.value)
    assert info.value.details == ["apoc.cypher.runWrite()"]


def test_load_csv_and_transactions_details() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("LOAD CSV FROM 'x' AS r CALL { RETURN 1 } IN TRANSACTIONS RETURN r", "cypher")
    assert info.value.details == ["LOAD CSV", "IN TRANSACTIONS"]
    assert "loads data from outside the graph" in str(info.value)


def test_unterminated_message() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only('SELECT * WHERE { ?s ?p "x } ; DROP ALL', "sparql")
    assert "unterminated string" in str(info.value)
    assert "cannot read it completely" in str(info.value)
    assert info.value.details == ["unterminated string"]


def test_not_a_query_form_message() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("PREFIX ex: <http://x/> ex:thing", "sparql")
    assert "starts with ex:thing, not with SELECT, ASK, CONSTRUCT or DESCRIBE" in str(info.value)


def test_empty_message() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("  ", "cypher")
    assert "empty" in str(info.value)
    assert info.value.details == ["empty"]


def test_length_limit() -> None:
    base = "SELECT ?s WHERE { ?s ?p ?o }"
    at_limit = base + " " * (MAX_QUERY_CHARS - len(base))
    check_read_only(at_limit, "sparql")
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only(at_limit + " ", "sparql")
    assert f"over the limit of {MAX_QUERY_CHARS:,}" in str(info.value)
    assert info.value.details == ["too long"]


def test_nul_message() -> None:
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only("MATCH (n) RETURN n\x00", "cypher")
    assert "NUL" in str(info.value)


def test_non_string_is_refused() -> None:
    assert not is_read_only(b"SELECT * WHERE { ?s ?p ?o }", "sparql")  # type: ignore[arg-type]


# -- options -----------------------------------------------------------------------------------------
def test_allow_service() -> None:
    query = "SELECT * WHERE { SERVICE <http://example.org/sparql> { ?s ?p ?o } }"
    assert not is_read_only(query, "sparql")
    assert is_read_only(query, "sparql", allow_service=True)
    assert not is_read_only(query + " ; DROP ALL", "sparql", allow_service=True)


def test_allowed_procedures_override() -> None:
    assert not is_read_only("CALL apoc.meta.schema()", "cypher")
    assert is_read_only("CALL apoc.meta.schema()", "cypher", allowed_procedures=frozenset({"apoc.meta.schema"}))
    assert not is_read_only("CALL db.labels()", "cypher", allowed_procedures=frozenset())


def test_default_allow_list() -> None:
    for name in READ_ONLY_PROCEDURES:
        assert is_read_only(f"CALL {name}()", "cypher"), name
    # procedure names are matched exactly
    assert not is_read_only("CALL DB.LABELS()", "cypher")


def test_language_is_case_insensitive_and_validated() -> None:
    assert is_read_only("SELECT * WHERE { ?s ?p ?o }", "SPARQL")
    assert is_read_only("MATCH (n) RETURN n", " Cypher ")
    with pytest.raises(ValueError, match="unknown query language"):
        check_read_only("SELECT 1", "sql")


# -- parser confirmation and dependencies --------------------------------------------------------------
def test_sparql_that_does_not_parse_is_refused() -> None:
    pytest.importorskip("rdflib")
    with pytest.raises(QueryParseError) as info:
        check_read_only("SELECT ?s WHERE { ?s ?p ?o", "sparql")
    assert "does not parse" in str(info.value)
    assert info.value.details[0] == "parse error"
    assert not is_read_only("SELECT ?s WHERE { ?s ?p ?o", "sparql")


def test_long_sparql_is_accepted_until_the_parser_gives_up() -> None:
    pytest.importorskip("rdflib")
    patterns = " ".join(f"?s <http://x/p{i}> ?o{i} ." for i in range(30))
    check_read_only(f"SELECT ?s WHERE {{ {patterns} }}", "sparql")
    patterns = " ".join(f"?s <http://x/p{i}> ?o{i} ." for i in range(400))
    with pytest.raises(ReadOnlyViolationError) as info:
        check_read_only(f"SELECT ?s WHERE {{ {patterns} }}", "sparql")
    assert info.value.details == ["too complex to parse"]


def test_works_without_rdflib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdflib.plugins.sparql.parser", None)
    # without a parser a malformed query passes the guard (the store rejects it) ...
    check_read_only("SELECT ?s WHERE { ?s ?p ?o", "sparql")
    # ... but every keyword check still applies
    assert not is_read_only("SELECT * WHERE { ?s ?p ?o } ; DROP ALL", "sparql")
    assert not is_read_only("INSERT DATA {}", "sparql")


def test_imports_only_stdlib_and_ragkit_errors() -> None:
    tree = ast.parse(Path(guard.__file__).read_text(encoding="utf-8"))
    top_level: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module)
    third_party = {m for m in top_level if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"}
    assert third_party == {"ragkit.errors"}

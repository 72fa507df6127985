"""Unit tests of the Cypher stores and loaders: the embedded store over the library fixture mapped
from RDF, the Cypher script splitter, and the Neo4j store's offline behaviour.

Fast and offline: no server is started and nothing leaves the process.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ragkit.errors import (
    InputError,
    MissingDependencyError,
    QueryParseError,
    QueryTimeoutError,
    ReadOnlyViolationError,
)
from ragkit.stores import cypher as cypher_mod
from ragkit.stores.base import DEFAULT_ROW_LIMIT, DEFAULT_TIMEOUT
from ragkit.stores.cypher import EmbeddedCypherStore, KgliteStore, Neo4jStore, PropertyGraphStore, cypher_type_name
from ragkit.stores.loaders import (
    _split_with_lines,
    cypher_name,
    cypher_string,
    is_schema_statement,
    load_cypher_script,
    local_name,
    rdf_to_cypher,
    split_cypher_statements,
)
from ragkit.stores.rdf import OxigraphStore

pytest.importorskip("kglite")
pytest.importorskip("pyoxigraph")

ROOT = Path(__file__).resolve().parents[3]
GRAPH = str(ROOT / "fixtures" / "library" / "graph.ttl")
PREFIXES = "PREFIX lib: <http://example.org/library/>\nPREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"


@pytest.fixture(scope="module")
def store() -> Any:
    s = KgliteStore(path=GRAPH)
    s.warm_up()
    yield s
    s.close()


@pytest.fixture(scope="module")
def oxigraph() -> Any:
    s = OxigraphStore(path=GRAPH)
    s.warm_up()
    yield s
    s.close()


def _canon(v: Any) -> str:
    """Numbers by value (lexical SPARQL numbers too), lists sorted, everything else as its string."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, (int, float)):
        return repr(round(float(v), 9))
    if isinstance(v, list):
        return repr(sorted(_canon(x) for x in v))
    return str(v)


def _rows(rows: Any) -> Counter[tuple[str, ...]]:
    return Counter(tuple(sorted(_canon(v) for v in r)) for r in rows)


# ---- construction and lifecycle -----------------------------------------------------------------


def test_defaults_and_registration() -> None:
    s = KgliteStore(path=GRAPH)
    assert s.language == "cypher"
    assert isinstance(s, PropertyGraphStore)
    assert (s.timeout, s.row_limit) == (DEFAULT_TIMEOUT, DEFAULT_ROW_LIMIT)
    assert s.paths == [GRAPH]
    assert not s.is_warm
    assert KgliteStore.type_name == "embedded_cypher_store"
    assert EmbeddedCypherStore is KgliteStore
    assert Neo4jStore.type_name == "neo4j_store"
    assert s.init_params["path"] == GRAPH


def test_neo4j_store_init_does_no_io_and_hides_the_password() -> None:
    s = Neo4jStore("bolt://127.0.0.1:1", password="s3cret-pass", database="movies", timeout=3)
    assert (s.username, s.database, s.timeout, s.row_limit) == ("neo4j", "movies", 3, DEFAULT_ROW_LIMIT)
    assert s.language == "cypher"
    assert not s.is_warm
    assert "s3cret-pass" not in repr(s)
    with pytest.raises(ValueError, match="Bolt address"):
        Neo4jStore("localhost:7687")


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="cannot tell"):
        KgliteStore(path="graph.csv")
    with pytest.raises(ValueError, match="give 'path'"):
        KgliteStore(path=[])
    with pytest.raises(ValueError, match="timeout"):
        KgliteStore(path=GRAPH, timeout=0)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    s = KgliteStore(path=str(tmp_path / "nope.cypher"))
    with pytest.raises(InputError, match="does not exist"):
        s.warm_up()
    assert not s.is_warm


def test_broken_script_is_an_input_error_naming_the_line(tmp_path: Path) -> None:
    script = tmp_path / "bad.cypher"
    script.write_text("CREATE (:A {x: 1});\n\nCREATE (:B {x: );\n")
    with pytest.raises(InputError, match=r"bad\.cypher:3"):
        KgliteStore(path=str(script)).warm_up()


def test_warm_up_loads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = cypher_mod.read_script

    def counting(path: Any) -> Any:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(cypher_mod, "read_script", counting)
    s = KgliteStore(path=GRAPH)
    assert calls == []  # __init__ does no I/O
    s.warm_up()
    s.warm_up()
    s.query("MATCH (n) RETURN count(n) AS n")
    s.schema()
    assert calls == [GRAPH]
    s.close()
    assert not s.is_warm


def test_missing_packages_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kglite", None)
    with pytest.raises(MissingDependencyError, match="kglite"):
        KgliteStore(path=GRAPH).warm_up()
    monkeypatch.setitem(sys.modules, "neo4j", None)
    with pytest.raises(MissingDependencyError, match="neo4j"):
        Neo4jStore("bolt://127.0.0.1:1").warm_up()


def test_fingerprint_is_stable_and_counts(store: KgliteStore) -> None:
    fp = store.fingerprint()
    assert fp == store.fingerprint()
    assert fp == KgliteStore(path=GRAPH).fingerprint()
    assert fp.endswith("n-" + str(store.query("MATCH ()-[r]->() RETURN count(r) AS n").rows[0][0]) + "r")


# ---- schema of the mapped library fixture -----------------------------------------------------


def test_schema_of_the_mapped_library(store: KgliteStore) -> None:
    schema = store.schema()
    assert schema.language == "cypher"
    counts = {c.name: c.count for c in schema.classes}
    assert counts == {"Book": 38, "Author": 22, "City": 12, "Genre": 8, "Publisher": 6, "Award": 5, "Country": 5}
    rels = {p.name: p for p in schema.properties if p.kind == "relationship"}
    assert set(rels) == {"author", "publishedBy", "hasGenre", "bornIn", "wonAward", "locatedIn", "headquarteredIn"}
    assert (rels["author"].domains, rels["author"].ranges, rels["author"].count) == (("Book",), ("Author",), 38)
    assert (rels["bornIn"].domains, rels["bornIn"].ranges) == (("Author",), ("City",))
    assert (rels["locatedIn"].domains, rels["locatedIn"].ranges) == (("City",), ("Country",))
    assert (rels["headquarteredIn"].domains, rels["headquarteredIn"].ranges) == (("Publisher",), ("City",))
    props = {(p.domains[0], p.name): p for p in schema.properties if p.kind == "node_property"}
    assert props[("Book", "name")].ranges == ("STRING",)
    assert props[("Book", "publicationYear")].ranges == ("INTEGER",)
    assert props[("Book", "rating")].ranges == ("FLOAT",)
    assert props[("Book", "rating")].count == 33  # some books have no rating
    assert props[("City", "population")].ranges == ("INTEGER",)
    assert props[("Author", "name")].samples and len(props[("Author", "name")].samples) <= 3
    # kglite's virtual keys (id, title, type) are not reported, nor is the RDF schema vocabulary
    assert not {k for _, k in props} & {"id", "title", "type", "label"}
    assert "Class" not in counts and "ObjectProperty" not in counts
    assert {"Book", "author", "publicationYear"} <= schema.terms()


def test_schema_is_cached_until_refresh(store: KgliteStore) -> None:
    assert store.schema() is store.schema()
    assert store.schema(refresh=True) == store.schema()


# ---- Cypher over the mapping answers what SPARQL answers over the RDF ---------------------------

EQUIVALENT = [
    (
        "MATCH (b:Book {name: 'The Glass Orchard'})-[:author]->(a:Author) RETURN a.name",
        "SELECT ?n WHERE { ?b rdfs:label 'The Glass Orchard' ; lib:author ?a . ?a rdfs:label ?n }",
    ),
    (
        "MATCH (b:Book)-[:author]->(a:Author) RETURN b.name, a.name",
        "SELECT ?b ?a WHERE { ?x lib:author ?y . ?x rdfs:label ?b . ?y rdfs:label ?a }",
    ),
    (
        "MATCH (a:Author)-[:bornIn]->(:City)-[:locatedIn]->(c:Country) RETURN c.name, count(a) AS n",
        "SELECT ?c (COUNT(?a) AS ?n) WHERE { ?a lib:bornIn ?city . ?city lib:locatedIn ?k . ?k rdfs:label ?c } GROUP BY ?c",
    ),
    (
        "MATCH (b:Book) WHERE b.rating IS NULL RETURN b.name",
        "SELECT ?n WHERE { ?b a lib:Book ; rdfs:label ?n . FILTER NOT EXISTS { ?b lib:rating ?r } }",
    ),
    (
        "MATCH (b:Book)-[:hasGenre]->(g:Genre) RETURN g.name, avg(b.pageCount) AS pages, max(b.publicationYear) AS latest",
        "SELECT ?g (AVG(?p) AS ?pages) (MAX(?y) AS ?latest) WHERE { ?b lib:hasGenre ?x ; lib:pageCount ?p ; lib:publicationYear ?y . ?x rdfs:label ?g } GROUP BY ?g",
    ),
    (
        "MATCH (p:Publisher)-[:headquarteredIn]->(c:City) WHERE p.foundedYear < 1950 RETURN p.name, c.name, c.population",
        "SELECT ?p ?c ?pop WHERE { ?x lib:foundedYear ?f ; lib:headquarteredIn ?y ; rdfs:label ?p . ?y rdfs:label ?c ; lib:population ?pop . FILTER(?f < 1950) }",
    ),
]


@pytest.mark.parametrize(("cypher", "sparql"), EQUIVALENT)
def test_cypher_over_the_mapping_matches_sparql(store: KgliteStore, oxigraph: OxigraphStore, cypher: str, sparql: str) -> None:
    got = store.query(cypher).rows
    want = oxigraph.query(PREFIXES + sparql).rows
    assert want, "the SPARQL reference query should return rows"
    assert _rows(got) == _rows(want)


def test_values_are_plain_json(store: KgliteStore) -> None:
    res = store.query(
        "MATCH p = (b:Book {name: 'The Glass Orchard'})-[r:author]->(a:Author) RETURN b, r, a, p, [b.name, a.name] AS names, b {.name, .rating} AS m"
    )
    assert res.columns == ("b", "r", "a", "p", "names", "m")
    (b, r, a, p, names, m) = res.rows[0]
    assert b == {
        "iri": "http://example.org/library/book_the_glass_orchard",
        "name": "The Glass Orchard",
        "publicationYear": 1979,
        "pageCount": 412,
        "rating": 4.6,
    }
    assert r == {}
    assert a["name"] == "Ada Quill" and "id" not in a and "title" not in a and "type" not in a
    assert p == [b, r, a]
    assert names == ["The Glass Orchard", "Ada Quill"]
    assert m == {"name": "The Glass Orchard", "rating": 4.6}


# ---- limits, guard and errors -----------------------------------------------------------------


def test_row_limit_and_truncation() -> None:
    s = KgliteStore(path=GRAPH, row_limit=5)
    res = s.query("MATCH (b:Book) RETURN b.name")
    assert len(res.rows) == 5 and res.truncated
    res = s.query("MATCH (b:Book) RETURN b.name", limit=3)
    assert len(res.rows) == 3 and res.truncated
    res = s.query("MATCH (b:Book) RETURN b.name LIMIT 5")
    assert len(res.rows) == 5 and not res.truncated
    res = s.query("MATCH (b:Book) RETURN b.name", limit=50)  # a larger per-call limit is capped by row_limit
    assert len(res.rows) == 5 and res.truncated
    assert s.query("MATCH (b:Book) RETURN count(b) AS n").rows == ((38,),)
    s.close()


@pytest.mark.parametrize(
    "query",
    [
        "CREATE (:Book {name: 'Injected'})",
        "MATCH (b:Book) SET b.rating = 0",
        "MATCH (b:Book) DETACH DELETE b",
        "MERGE (a:Author {name: 'X'}) RETURN a",
        "MATCH (n) CALL { WITH n DELETE n } RETURN 1",
    ],
)
def test_mutating_query_is_refused_before_reaching_the_store(store: KgliteStore, monkeypatch: pytest.MonkeyPatch, query: str) -> None:
    before = store.query("MATCH (n) RETURN count(n) AS n, sum(coalesce(n.rating, 0)) AS r").rows
    reached: list[str] = []
    real = store._run
    monkeypatch.setattr(store, "_run", lambda q, limit, timeout: reached.append(q) or real(q, limit, timeout))
    with pytest.raises(ReadOnlyViolationError):
        store.query(query)
    assert reached == []
    monkeypatch.undo()
    assert store.query("MATCH (n) RETURN count(n) AS n, sum(coalesce(n.rating, 0)) AS r").rows == before


def test_the_engine_itself_is_read_only(store: KgliteStore) -> None:
    # defence in depth: even a write that got past the guard is refused by the read-only graph
    with pytest.raises(ReadOnlyViolationError):
        store._execute("CREATE (:Book {name: 'Injected'})", 10)
    assert store.query("MATCH (b:Book {name: 'Injected'}) RETURN count(b) AS n").rows == ((0,),)


def test_syntax_error_is_a_parse_error(store: KgliteStore) -> None:
    with pytest.raises(QueryParseError) as info:
        store.query("MATCH (b:Book RETURN b")
    assert info.value.query == "MATCH (b:Book RETURN b"
    assert info.value.details


def test_empty_query_is_an_input_error(store: KgliteStore) -> None:
    with pytest.raises(InputError):
        store.query("   ")


def test_timeout() -> None:
    s = KgliteStore(path=GRAPH, timeout=0.3)
    with pytest.raises(QueryTimeoutError, match="0.3 s"):
        s.query("MATCH (a), (b), (c), (d) RETURN count(*) AS n")
    assert s.query("MATCH (b:Book) RETURN count(b) AS n").rows == ((38,),)  # the store still answers
    s.close()


# ---- loaders ----------------------------------------------------------------------------------


def test_splitter_keeps_semicolons_in_strings_names_and_comments() -> None:
    script = (
        "CREATE CONSTRAINT IF NOT EXISTS FOR (p:Person) REQUIRE (p.name) IS UNIQUE;\n"
        "CREATE (:A {s: 'semi;colon', t: \"dq;\", u: 'it\\'s; \\\\'});\n"
        "// a comment; with a semicolon\n"
        "CREATE (:`We;ird` {v: 1}) /* block; comment */ ;\n"
        ";;\n"
        "MATCH (n) RETURN n"
    )
    assert split_cypher_statements(script) == [
        "CREATE CONSTRAINT IF NOT EXISTS FOR (p:Person) REQUIRE (p.name) IS UNIQUE",
        "CREATE (:A {s: 'semi;colon', t: \"dq;\", u: 'it\\'s; \\\\'})",
        "CREATE (:`We;ird` {v: 1})",
        "MATCH (n) RETURN n",
    ]
    assert [line for line, _ in _split_with_lines(script)] == [1, 2, 4, 6]


def test_splitter_handles_a_multi_line_string() -> None:
    assert split_cypher_statements("CREATE (:A {s: 'a;\nb'});\nRETURN 1") == ["CREATE (:A {s: 'a;\nb'})", "RETURN 1"]


def test_schema_statement_detection() -> None:
    assert is_schema_statement("CREATE CONSTRAINT IF NOT EXISTS FOR (p:Person) REQUIRE (p.name) IS UNIQUE")
    assert is_schema_statement("create index if not exists for (m:Movie) on (m.released)")
    assert is_schema_statement("CREATE RANGE INDEX idx FOR (n:A) ON (n.x)")
    assert is_schema_statement("DROP CONSTRAINT c")
    assert not is_schema_statement("CREATE (:Index {name: 'x'})")
    assert not is_schema_statement("MATCH (n) RETURN n")


def test_scripts_with_tricky_strings_round_trip(tmp_path: Path) -> None:
    tricky = 'It\'s "quoted"; back\\slash\nnew line\ttab'
    script = tmp_path / "t.cypher"
    script.write_text(
        "CREATE INDEX IF NOT EXISTS FOR (a:A) ON (a.s);\n"
        f"CREATE (:A {{s: {cypher_string(tricky)}, n: 1}});\n"
        f"CREATE (:{cypher_name('B-c')} {{{cypher_name('odd key')}: 2}});\n"
    )
    s = KgliteStore(path=str(script))
    assert s.query("MATCH (a:A) RETURN a.s").rows == ((tricky,),)
    assert s.query("MATCH (b:`B-c`) RETURN b.`odd key`").rows == ((2,),)
    s.close()


def test_load_cypher_script_into_a_kglite_graph(tmp_path: Path) -> None:
    import kglite

    script = tmp_path / "s.cypher"
    script.write_text("CREATE TEXT INDEX t IF NOT EXISTS FOR (n:A) ON (n.s);\nCREATE (:A {s: 'x;y'}), (:A {s: 'z'});\n")
    graph = kglite.KnowledgeGraph()
    assert load_cypher_script(graph, script) == 1  # the index statement kglite refuses is skipped
    assert graph.cypher("MATCH (a:A) RETURN count(a) AS n").to_list() == [{"n": 2}]
    with pytest.raises(InputError, match="does not exist"):
        load_cypher_script(graph, tmp_path / "missing.cypher")
    with pytest.raises(InputError):
        load_cypher_script(graph, script, schema_statements="run")
    with pytest.raises(TypeError, match="cannot load"):
        load_cypher_script(object(), script)


def test_rdf_to_cypher_mapping() -> None:
    script = rdf_to_cypher(GRAPH)
    assert script == rdf_to_cypher(GRAPH)  # deterministic
    statements = split_cypher_statements(script)
    assert "CREATE INDEX IF NOT EXISTS FOR (n:Author) ON (n.iri)" in statements
    assert (
        "(:Book {iri: 'http://example.org/library/book_the_glass_orchard', name: 'The Glass Orchard', pageCount: 412, publicationYear: 1979, rating: 4.6})"
        in script
    )
    assert "CREATE (a)-[:bornIn]->(b)" in script
    assert ":Class" not in script and "ObjectProperty" not in script
    assert local_name("http://example.org/library/bornIn") == "bornIn"
    assert local_name("http://example.org/onto#Thing") == "Thing"
    assert local_name("urn:isbn:123") == "123"
    assert [cypher_name(n) for n in ("bornIn", "when", "odd key", "a`b")] == ["bornIn", "`when`", "`odd key`", "`a``b`"]


def test_rdf_to_cypher_types_lists_and_untyped_resources(tmp_path: Path) -> None:
    ttl = tmp_path / "g.ttl"
    ttl.write_text(
        "@prefix ex: <http://ex.org/> .\n"
        "@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .\n"
        "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n"
        'ex:a a ex:Thing, ex:Other ; rdfs:label "A" ; ex:flag "true"^^xsd:boolean ; ex:when "2020-01-02"^^xsd:date ;\n'
        '    ex:tag "x", "y" ; ex:iri "kept" ; ex:link ex:b ; ex:to [ rdfs:label "blank" ] .\n'
    )
    s = KgliteStore(path=str(ttl))
    rows = s.query("MATCH (a:Thing:Other) RETURN a.name, a.flag, a.`when`, a.tag, a.iri, a.iri_").rows
    assert rows == (("A", True, "2020-01-02", ["x", "y"], "http://ex.org/a", "kept"),)
    assert s.query("MATCH (:Thing)-[:link]->(b:Resource) RETURN b.iri").rows == (("http://ex.org/b",),)
    assert s.query("MATCH (:Thing)-[:to]->(b) RETURN b.name, b.iri STARTS WITH '_:'").rows == (("blank", True),)
    keys = {(p.domains[0], p.name) for p in s.schema().properties if p.kind == "node_property"}
    assert {("Thing", "name"), ("Other", "flag"), ("Resource", "iri")} <= keys
    assert not {k for _, k in keys} & {"id", "title", "type"}  # also for the secondary label
    s.close()


def test_rdf_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        rdf_to_cypher(tmp_path / "missing.ttl")
    bad = tmp_path / "bad.ttl"
    bad.write_text("this is not turtle .")
    with pytest.raises(InputError, match="cannot parse"):
        KgliteStore(path=str(bad)).warm_up()


def test_cypher_type_names() -> None:
    import datetime

    assert [cypher_type_name(v) for v in (True, 1, 1.5, "s", [1], {"a": 1}, b"x")] == [
        "BOOLEAN",
        "INTEGER",
        "FLOAT",
        "STRING",
        "LIST",
        "MAP",
        "BYTES",
    ]
    assert cypher_type_name(datetime.date(2020, 1, 1)) == "DATE"
    assert cypher_type_name(datetime.datetime(2020, 1, 1)) == "LOCAL DATETIME"

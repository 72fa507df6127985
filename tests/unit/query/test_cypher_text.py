"""Cypher text utilities: extracting a query from a model's reply and checking its labels,
relationship types and relationship patterns against the schema."""

from __future__ import annotations

import pytest

from ragkit.query.cypher import ends_in_return, extract_cypher, misdirected_relationships, misplaced_properties, past_final_return, unknown_cypher_terms
from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty

Q = "MATCH (p:Person)-[:LIVES_IN]->(c:City) RETURN c.name"

SCHEMA = GraphSchema(
    language="cypher",
    classes=(SchemaClass(name="Person"), SchemaClass(name="City"), SchemaClass(name="Film Star")),
    properties=(
        SchemaProperty(name="LIVES_IN", kind="relationship", domains=("Person",), ranges=("City",)),
        SchemaProperty(name="ACTED_IN", kind="relationship", domains=("Film Star",), ranges=("City",)),
        SchemaProperty(name="name", kind="node_property", domains=("Person",), ranges=("STRING",)),
    ),
)


# ---- extract_cypher -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply",
    [
        Q,
        f"{Q};",
        f"```cypher\n{Q};\n```\nThis returns the city's name.",
        f"```Cypher\n{Q}\n```",
        f"```\n{Q}\n```",
        f"Here you go: {Q};",
        f"Cypher: {Q}",
        f"{Q}\nQuestion: Who lives in Oslo?\nMATCH (x) RETURN x",
        f'{Q}\nValues: "Ann"',
        f"{Q}\n\nThis query returns the name of the city.",
        f"{Q};\n\n",
    ],
)
def test_extract_cypher_strips_fences_prose_turns_and_semicolons(reply: str) -> None:
    assert extract_cypher(reply) == Q


def test_extract_cypher_keeps_multiline_queries_and_optional_match() -> None:
    q = 'MATCH (p:Person)\nWHERE p.name = "Ann"\nRETURN p'
    assert extract_cypher(q) == q
    spaced = "MATCH (p:Person)\n\nWHERE p.name = 'Ann'\n\nRETURN p"
    assert extract_cypher(spaced + ";\n\nNote: it works.") == spaced
    assert extract_cypher("OPTIONAL MATCH (a) RETURN a") == "OPTIONAL MATCH (a) RETURN a"
    assert extract_cypher("WITH 1 AS x RETURN x") == "WITH 1 AS x RETURN x"


@pytest.mark.parametrize(
    ("reply", "query"),
    [
        # the model repeats itself after a complete query: Cypher ends at RETURN
        ("MATCH (m:Movie) RETURN m.title MATCH (m:Movie) RETURN m.title MATCH (m:Mov", "MATCH (m:Movie) RETURN m.title"),
        ("MATCH (m:Movie) RETURN m.title ORDER BY m.title LIMIT 3\nWITH m RETURN m", "MATCH (m:Movie) RETURN m.title ORDER BY m.title LIMIT 3"),
        # what does not end the query
        ("MATCH (a:Person) RETURN a.name UNION MATCH (b:Movie) RETURN b.title", None),
        ("MATCH (p:Person) CALL { WITH p MATCH (p)-->(m) RETURN count(m) AS n } RETURN p.name, n", None),
        ("MATCH (p:Person) RETURN p.name, [(p)-->(m) WHERE m.title STARTS WITH 'A' | m.title] AS ts", None),
        ("MATCH (p:Person) RETURN CASE WHEN p.name STARTS WITH 'A' THEN 1 ELSE 0 END AS a", None),
        ("MATCH (p:Person) RETURN p.name AS n, 'RETURN x MATCH y' AS s", None),
        ("MATCH (p:Person) RETURN p CREATE (x:Thing)", None),  # a write: left for the guard to refuse
    ],
)
def test_extract_cypher_ends_the_query_at_its_final_return(reply: str, query: str | None) -> None:
    assert extract_cypher(reply) == (query or reply)


@pytest.mark.parametrize(
    ("text", "over"),
    [
        ("MATCH (m:Movie) RETURN m.title\nMATCH (", True),
        ("MATCH (m:Movie) RETURN m.title WITH ", True),
        ("MATCH (m:Movie) RETURN m.title\nOPTIONAL MATCH (", True),
        # not yet: the clause word may still become another word
        ("MATCH (m:Movie) RETURN m.title\nMATCH", False),
        ("MATCH (m:Movie) RETURN matched", False),
        ("MATCH (m:Movie) RETURN m.title\nOPTIONAL ", False),
        # never: prose, a union, a subquery, a string, a write clause
        ("This will return the movies with ", False),
        ("MATCH (a:Person) RETURN a.name UNION MATCH (", False),
        ("MATCH (p:Person) CALL { WITH p MATCH (p)-->(m) RETURN count(m) AS n } RETURN p.name, n", False),
        ("MATCH (p:Person) RETURN p.name, 'x' AS y, [(p)-->(m) WHERE m.title STARTS WITH ", False),
        ("MATCH (p:Person) RETURN p.name, 'RETURN x MATCH y' AS ", False),
        ("MATCH (p:Person) RETURN p CREATE (", False),
    ],
)
def test_past_final_return_says_when_generation_can_end(text: str, over: bool) -> None:
    assert past_final_return(text) is over
    if over:  # what generation ends on is what extraction would cut
        assert extract_cypher(text + "x:Movie) RETURN x") == "MATCH (m:Movie) RETURN m.title"


@pytest.mark.parametrize(
    "query",
    ["MERGE (n:Person {name: 'x'}) RETURN n", "CREATE (n:City) RETURN n", "DETACH DELETE n", "MATCH (n) SET n.x = 1 RETURN n"],
)
def test_extract_cypher_keeps_a_leading_write_clause_for_the_guard(query: str) -> None:
    assert extract_cypher(f"Sure, here it is: {query};") == query


def test_extract_cypher_skips_prose_that_merely_mentions_a_write_word() -> None:
    assert extract_cypher(f"Let me create and set up the query: {Q}") == Q


# ---- unknown_cypher_terms -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "bad"),
    [
        (Q, []),
        ("MATCH p=(a:Person)-[:LIVES_IN]->(:City) RETURN p", []),
        ('MATCH (a:Person {name: "Ann"}) RETURN a', []),
        ('MATCH (a:Person{name:"Ann"}) RETURN a', []),
        ("MATCH (a:Person) RETURN a.name AS x, count(*) AS n", []),
        ("MATCH (p:Persn)-[:LIVES]->(c:Town) RETURN c", ["label :Persn", "label :Town", "relationship :LIVES"]),
        ("MATCH (:Person:Ghost) RETURN 1", ["label :Ghost"]),
        ("MATCH (p : Person : Ghost ) RETURN 1", ["label :Ghost"]),
        ("MATCH (a)-[r:LIVES_IN|WORKS_IN*1..2]-(b) RETURN a", ["relationship :WORKS_IN"]),
        ("MATCH (a:Person)\nWITH a MATCH (a)-[:KNOWS]->(b) RETURN b", ["relationship :KNOWS"]),
        ("MATCH (a:Ghost)-[:LIVES_IN]->(b:Ghost) RETURN b", ["label :Ghost"]),  # reported once
        # look-alikes inside strings are not labels
        ('MATCH (a:Person) WHERE a.name = "(b:Bad)" RETURN a', []),
        ('MATCH (p:Person {name: "x:Foo"}) RETURN p', []),
        # back-ticked names may contain spaces
        ("MATCH (a:`Film Star`)-[:`ACTED_IN`]->(c) RETURN a", []),
        ("MATCH (a:`Film Starr`:Person) RETURN a", ["label :Film Starr"]),
    ],
)
def test_unknown_cypher_terms(query: str, bad: list[str]) -> None:
    assert unknown_cypher_terms(query, SCHEMA) == bad


@pytest.mark.parametrize(
    ("query", "bad"),
    [
        ("MATCH (p:Person {name: 'Ann'})-[:LIVES_IN]->(c:City) RETURN c.name, {n: c.name} AS m", []),
        ("MATCH (p:Person) WHERE p.age > 3 RETURN p.nmae", ["property .age", "property .nmae"]),
        ("MATCH (p:Person {nam: 'Ann'}) RETURN p.name", ["property .nam"]),
        ("MATCH (p:Person) RETURN p.name, date.truncate('year', date()) AS y", []),  # a function, not a key
        ("MATCH (p:Person) RETURN apoc.date.format(p.born, 'ms', 'yyyy') AS y", ["property .born"]),  # namespaced
        ("MATCH (p:Person) WHERE p.name >= date() - duration({days: 30}) RETURN p", []),  # a map argument
        ("MATCH (p:Person) WHERE p.name >= datetime({year: date().year - 1}) RETURN p", []),
        ("MATCH (p:Person) RETURN p.`name`", []),
    ],
)
def test_unknown_property_keys(query: str, bad: list[str]) -> None:
    assert unknown_cypher_terms(query, SCHEMA) == bad


# ---- misdirected_relationships ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "wrong"),
    [
        (Q, []),
        ("MATCH (c:City)<-[:LIVES_IN]-(p:Person) RETURN c", []),
        ("MATCH (c:City)-[:LIVES_IN]-(p:Person) RETURN c", []),  # undirected: either way
        ("MATCH (p)-[:LIVES_IN]->(c) RETURN c", []),  # no labels: nothing to check
        ("MATCH (a:Person)-->(b:City) RETURN a", []),  # no type
        ("MATCH (a:City)-[:LIVES_IN*1..3]->(b:Person) RETURN a", []),  # variable length: ends are hops apart
        ("MATCH (p:Person)-[:KNOWS]->(c:City) RETURN c", []),  # an unknown type is an unknown term, not this
        ("MATCH (c:City {name: '(a:City)-[:LIVES_IN]->(b:City)'}) RETURN c", []),  # inside a string
        ("MATCH (c:City)-[:LIVES_IN]->(p:Person) RETURN c", ["(:City)-[:LIVES_IN]->(:Person) (the schema has (:Person)-[:LIVES_IN]->(:City))"]),
        ("MATCH (c:City)<-[r:LIVES_IN]-(x:City) RETURN c", ["(:City)<-[:LIVES_IN]-(:City) (the schema has (:Person)-[:LIVES_IN]->(:City))"]),
        # the variable's labels come from where it was bound
        ("MATCH (c:City) MATCH (c)-[:LIVES_IN]->(x) RETURN x", ["(:City)-[:LIVES_IN]->() (the schema has (:Person)-[:LIVES_IN]->(:City))"]),
        # every hop of a path, and anonymous nodes
        (
            "MATCH (p:Person)-[:LIVES_IN]->(:City)<-[:ACTED_IN]-(:Person) RETURN p",
            ["(:City)<-[:ACTED_IN]-(:Person) (the schema has (:Film Star)-[:ACTED_IN]->(:City))"],
        ),
        ("MATCH (p:`Film Star`)-[:ACTED_IN]->(c:City) RETURN p", []),
        ("MATCH (p:Person)-[:LIVES_IN|ACTED_IN]->(c:City) RETURN p", []),  # one of the types fits
        ("MATCH (c:City)-[:ACTED_IN | :LIVES_IN]->(p:Person) RETURN c", ["(:City)-[:ACTED_IN|LIVES_IN]->(:Person) (the schema has "
         "(:Film Star)-[:ACTED_IN]->(:City); (:Person)-[:LIVES_IN]->(:City))"]),  # the older ``|:`` between types
    ],
)
def test_misdirected_relationships(query: str, wrong: list[str]) -> None:
    assert misdirected_relationships(query, SCHEMA) == wrong


def test_a_query_cut_short_in_a_long_type_name_is_checked_at_once() -> None:
    # A model that runs out of tokens mid-name leaves "[r:SOME_LONG_NAME" unclosed. The hop pattern
    # once let such a name split into types in 2^n ways before failing: 60 letters never returned.
    import signal

    def stuck(*_: object) -> None:
        raise AssertionError("misdirected_relationships did not return within 20 s: its pattern backtracks")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(20)
    try:
        assert misdirected_relationships("MATCH (c:City)-[r:" + "LIVES" * 12 + " RETURN c", SCHEMA) == []
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_relationships_without_recorded_ends_are_not_checked() -> None:
    bare = GraphSchema(language="cypher", properties=(SchemaProperty(name="LIVES_IN", kind="relationship"),))
    assert misdirected_relationships("MATCH (c:City)-[:LIVES_IN]->(p:Person) RETURN c", bare) == []


# ---- misplaced_properties -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "wrong"),
    [
        ("MATCH (p:Person)-[r:REVIEWED]->(m:Movie) WHERE r.rating > 50 RETURN p.name, m.title", []),
        ("MATCH (m:Movie) WHERE m.rating < 50 RETURN m.title", ["m.rating (a :Movie has released, title; rating is on :REVIEWED)"]),
        ("MATCH (m:Movie) RETURN m.name", ["m.name (a :Movie has released, title; name is on :Person)"]),
        ("MATCH (m:Movie {name: 'x'}) RETURN m", ["{name: ...} (a :Movie has released, title; name is on :Person)"]),
        ("MATCH ()-[r:REVIEWED {title: 'x'}]->() RETURN r", ["{title: ...} (a :REVIEWED has rating; title is on :Movie)"]),
        ("MATCH (m:Movie) MATCH (m)<-[:REVIEWED]-(p) RETURN m.released, p.name", []),  # m's labels from its first pattern; p has none
        ("MATCH (x:Person) RETURN x.name UNION MATCH (x:Movie) RETURN x.title", []),  # a reused name: either label's keys
        ("MATCH (m:Movie) WITH m AS film RETURN film.name", []),  # bound by WITH: not checked
        ("MATCH (m:Movie) WHERE m.title = 'p.title' RETURN m", []),  # inside a string
        ("MATCH (m:Movie) RETURN m.votes", ["m.votes (a :Movie has released, title)"]),  # a key no label has
    ],
)
def test_misplaced_properties(keyed_schema: GraphSchema, query: str, wrong: list[str]) -> None:
    assert misplaced_properties(query, keyed_schema) == wrong


def test_a_schema_without_keys_per_label_checks_no_property() -> None:
    flat = GraphSchema(language="cypher", classes=(SchemaClass(name="Movie"),), properties=(SchemaProperty(name="name", kind="node_property"),))
    assert misplaced_properties("MATCH (m:Movie) RETURN m.title", flat) == []


# ---- ends_in_return -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query, whole",
    [
        ("MATCH (m:Movie) RETURN m.title", True),
        ("MATCH (p:Person) CALL { WITH p MATCH (p)-->(m) RETURN count(m) AS n } RETURN p.name, n", True),
        ("MATCH (a:Person) RETURN a.name UNION MATCH (b:Movie) RETURN b.title", True),
        ("CALL db.labels()", True),
        ("CALL db.labels() YIELD label", True),
        # the last clause is not a RETURN: Neo4j refuses these
        ("MATCH (p:Person)-[:ACTED_IN]->(m:Movie) WITH p, count(m) AS n ORDER BY n DESC LIMIT 1", False),
        ("MATCH (m:Movie) WHERE m.title = 'RETURN me'", False),
        ("MATCH (a:Person) RETURN a.name UNION MATCH (b:Movie) WITH b", False),
        ("MATCH (p:Person) RETURN ", False),
        ("MATCH (p:Person) CALL db.labels() YIELD label", False),
        ("", False),
    ],
)
def test_ends_in_return(query: str, whole: bool) -> None:
    assert ends_in_return(query) is whole

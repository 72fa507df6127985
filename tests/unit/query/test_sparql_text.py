"""SPARQL text utilities: extracting a query from a model's reply, completing prefixes, parsing, and
finding projected variables that the WHERE block never binds."""

from __future__ import annotations

import pytest

from ragkit.query.sparql import add_missing_prefixes, extract_query, parse_error, unbound_variables

Q = "SELECT ?x WHERE { ?x a ex:Book }"


# ---- extract_query ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply",
    [
        Q,
        f"```sparql\n{Q}\n```",
        f"```SPARQL\n{Q}\n```\nThis query finds every book.",
        f"```\n{Q}\n```",
        f"Here is the query:\n{Q}\n\nIt lists all the books.",
        f"{Q}\nThe query above lists the books.",
        f"{Q}\nQuestion: Who wrote it?\nSELECT ?y WHERE {{ ?y ?p ?o }}",
        f"{Q}\n\nquestion: Where is it?\n{Q}",
        f"SPARQL: {Q}",
        f"  \n{Q}  \n",
    ],
)
def test_extract_query_strips_fences_prose_and_invented_turns(reply: str) -> None:
    assert extract_query(reply) == Q


def test_extract_query_keeps_prefixes_and_ask() -> None:
    q = "PREFIX ex: <http://ex/>\nASK { ?x ex:p ?y }"
    assert extract_query(f"Sure!\n{q}\nThat is all.") == q


def test_extract_query_closes_unbalanced_braces() -> None:
    assert extract_query("SELECT ?x WHERE { ?x a ex:Book . { ?x ex:p ?y ") == "SELECT ?x WHERE { ?x a ex:Book . { ?x ex:p ?y } }"
    assert extract_query("SELECT ?x WHERE { ?x ex:p ?y") == "SELECT ?x WHERE { ?x ex:p ?y }"


def test_extract_query_ignores_braces_inside_strings() -> None:
    q = 'SELECT ?x WHERE { ?x ex:name "a } b" }'
    assert extract_query(q + "\nSome prose.") == q
    assert extract_query('SELECT ?x WHERE { ?x ex:name "{" ') == 'SELECT ?x WHERE { ?x ex:name "{" }'


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "SELECT ?a (COUNT(?b) AS ?n) WHERE { ?a ex:wrote ?b } GROUP BY ?a ORDER BY DESC(?n) LIMIT 3\n\nThis counts books.",
            "SELECT ?a (COUNT(?b) AS ?n) WHERE { ?a ex:wrote ?b } GROUP BY ?a ORDER BY DESC(?n) LIMIT 3",
        ),
        (
            "SELECT (COUNT(?x) AS ?n) WHERE { ?x ?p ?o } GROUP BY ?p HAVING (COUNT(?x) > 1)",
            "SELECT (COUNT(?x) AS ?n) WHERE { ?x ?p ?o } GROUP BY ?p HAVING (COUNT(?x) > 1)",
        ),
        (
            "SELECT ?a WHERE { ?a ex:p ?b }\nGROUP BY ?a\nORDER BY ?a\nLIMIT 3 OFFSET 6\nThis pages through them.",
            "SELECT ?a WHERE { ?a ex:p ?b }\nGROUP BY ?a\nORDER BY ?a\nLIMIT 3 OFFSET 6",
        ),
        # prose right after a modifier line (no blank line), or on the LIMIT line itself
        ("SELECT ?x WHERE { ?x ?p ?o } LIMIT 5\nThis query lists five things.", "SELECT ?x WHERE { ?x ?p ?o } LIMIT 5"),
        ("SELECT ?x WHERE { ?x ?p ?o } ORDER BY ?x\nThe query sorts them.", "SELECT ?x WHERE { ?x ?p ?o } ORDER BY ?x"),
        ("SELECT ?x WHERE { ?x ?p ?o } LIMIT 5.", "SELECT ?x WHERE { ?x ?p ?o } LIMIT 5"),
        ('SELECT ?x WHERE { ?x ?p ?o } LIMIT 10\nValues: "Ann"', "SELECT ?x WHERE { ?x ?p ?o } LIMIT 10"),
    ],
)
def test_extract_query_keeps_solution_modifiers_and_drops_what_follows(reply: str, expected: str) -> None:
    assert extract_query(reply) == expected
    assert parse_error("PREFIX ex: <http://ex/>\n" + expected) is None


def test_extract_query_drops_a_trailing_update_after_the_where_block() -> None:
    assert extract_query("SELECT * WHERE { ?s ?p ?o } ; DROP ALL") == "SELECT * WHERE { ?s ?p ?o }"


def test_extract_query_of_no_query_returns_the_text() -> None:
    assert extract_query("I don't know.") == "I don't know."
    assert extract_query("") == ""


# ---- add_missing_prefixes -----------------------------------------------------------------------
PREFIXES = {"ex": "http://ex/", "foo": "http://foo/", "http": "http://wrong/", "rdfs": "http://www.w3.org/2000/01/rdf-schema#", "": "http://d/"}


def test_add_missing_prefixes_declares_only_used_and_known_ones() -> None:
    q = "SELECT ?x WHERE { ?x ex:p ?y . ?x rdfs:label ?l . ?x unknown:q ?z }"
    out = add_missing_prefixes(q, PREFIXES)
    assert out.splitlines()[:2] == ["PREFIX ex: <http://ex/>", "PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>"]
    assert out.endswith(q) and "unknown" not in out.split("SELECT")[0] and "foo" not in out


def test_add_missing_prefixes_ignores_prefixes_inside_strings_and_iris() -> None:
    q = 'SELECT ?x WHERE { ?x <http://ex/p> "foo:bar" ; <http://ex/q> \'ex:baz\' ; <urn:foo:x> ?y }'
    assert add_missing_prefixes(q, PREFIXES) == q


def test_add_missing_prefixes_keeps_declared_ones_and_handles_the_empty_prefix() -> None:
    declared = "PREFIX ex: <http://elsewhere/>\nSELECT ?x WHERE { ?x ex:p ?y }"
    assert add_missing_prefixes(declared, PREFIXES) == declared  # the query's own declaration wins
    assert add_missing_prefixes("SELECT ?x WHERE { ?x :singer\\#name ?y }", PREFIXES).startswith("PREFIX : <http://d/>\n")
    assert add_missing_prefixes("SELECT ?x WHERE { ?x ?p ?y }", PREFIXES) == "SELECT ?x WHERE { ?x ?p ?y }"


def test_completed_query_parses() -> None:
    q = add_missing_prefixes("SELECT ?l WHERE { ?x rdfs:label ?l ; ex:p ?y }", PREFIXES)
    assert parse_error(q) is None


# ---- parse_error --------------------------------------------------------------------------------
def test_parse_error() -> None:
    assert parse_error("SELECT ?x WHERE { ?x ?p ?o }") is None
    assert parse_error("ASK { ?x ?p ?o }") is None
    assert parse_error("SELECT ?x WHERE { ?x ?p }")  # a missing object
    assert parse_error("SELECT ?x WHERE { ?x undeclared:p ?o }")  # an undeclared prefix
    assert parse_error("not a query at all")


# ---- unbound_variables --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "unbound"),
    [
        ("SELECT ?x ?y WHERE { ?x ?p ?o }", ["y"]),
        ("SELECT ?x WHERE { ?s ?p ?o }", ["x"]),
        ("SELECT ?s WHERE { ?s ?p ?o }", []),
        ("SELECT $x WHERE { ?x ?p ?o }", []),
        ("SELECT DISTINCT ?x WHERE { ?x ?p ?o }", []),
        ("SELECT REDUCED ?x WHERE { ?s ?p ?o }", ["x"]),
        # COUNT(*) is not SELECT *
        ("SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }", []),
        ("SELECT ?x (COUNT(*) AS ?n) WHERE { ?s ?p ?o }", ["x"]),
        ("SELECT ?x (COUNT(*) AS ?n) WHERE { ?x ?p ?o } GROUP BY ?x", []),
        # SELECT * projects only what is bound
        ("SELECT * WHERE { ?s ?p ?o }", []),
        ("SELECT DISTINCT * { ?s ?p ?o }", []),
        # an alias is bound by its expression; the variables inside it must be bound
        ("SELECT (COUNT(DISTINCT ?s) AS ?n) ?c WHERE { ?s a ?c } GROUP BY ?c", []),
        ("SELECT (SUM(?v) AS ?t) WHERE { ?s ?p ?o }", ["v"]),
        ("SELECT (?a AS ?b) WHERE { ?a ?p ?o }", []),
        ("SELECT ?n WHERE { ?s ?p ?o BIND(STR(?o) AS ?n) }", []),
        # GROUP BY / ORDER BY after the WHERE block bind nothing
        ("SELECT ?g WHERE { ?s ?p ?o } GROUP BY ?g", ["g"]),
        ("SELECT ?a (COUNT(?b) AS ?n) WHERE { ?a ?p ?o } GROUP BY ?a ?b", ["b"]),
        ("SELECT ?o WHERE { ?s ?p ?x } ORDER BY ?o", ["o"]),
        # look-alikes in strings, IRIs and comments do not bind
        ('SELECT ?x WHERE { ?s ?p "?x" }', ["x"]),
        ("SELECT ?x WHERE { ?s ?p ?o FILTER(?o = <http://a?x>) }", ["x"]),
        ("SELECT ?x WHERE { ?s ?p ?o } # ?x", ["x"]),
        ("SELECT ?x WHERE { ?s ?p ?o # ?x\n }", ["x"]),
        # an escaped '#' in a local name is not a comment: what follows it still binds
        ("SELECT ?a ?w WHERE { ?t a :pets . ?t :pets\\#age ?a . ?t :pets\\#weight ?w }", []),
        ("SELECT ?a ?w WHERE { ?t :pets\\#age ?a } # ?w", ["w"]),
        # sub-selects bind for the outer query
        ("SELECT ?s WHERE { { SELECT ?s WHERE { ?s ?p ?o } } }", []),
        # not a SELECT
        ("ASK { ?s ?p ?o }", []),
        ("CONSTRUCT { ?s ?p ?x } WHERE { ?s ?p ?o }", []),
    ],
)
def test_unbound_variables(query: str, unbound: list[str]) -> None:
    assert unbound_variables(query) == unbound


# ---- unknown_sparql_terms -------------------------------------------------------------------------
from ragkit.query.sparql import unknown_sparql_terms  # noqa: E402
from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty  # noqa: E402

NS = "http://example.org/s/"
SCHEMA = GraphSchema(
    language="sparql",
    classes=(SchemaClass(name=NS + "singer"),),
    properties=(SchemaProperty(name=NS + "singer#name", kind="datatype"), SchemaProperty(name=NS + "knows")),
    prefixes={"": NS},
)
P = f"PREFIX : <{NS}>\nPREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        ("SELECT ?n WHERE { ?s a :singer ; :singer\\#name ?n }", []),
        ("SELECT ?n WHERE { ?s a :singer ; rdfs:label ?n }", []),  # standard vocabularies are allowed
        ("SELECT ?n WHERE { ?s a :singers ; :singer\\#name ?n }", ["class :singers"]),
        ("SELECT ?n WHERE { ?s a :singer ; :singer\\#nam ?n }", ["property :singer\\#nam"]),
        ("SELECT ?n WHERE { ?s :knows/:likes ?n }", ["property :likes"]),  # inside a property path
        ("SELECT ?n WHERE { { ?s :age ?n } UNION { ?s :knows ?n } FILTER EXISTS { ?n :born ?b } }", ["property :age", "property :born"]),
        ("SELECT ?n WHERE { ?s <http://example.org/s/other> ?n }", ["property :other"]),
        ("SELECT ?n WHERE { ?s :knows ?n . ?n a ?t }", []),  # a variable class is not a term
        ("SELECT ?n WHERE { ?s :nope", []),  # does not parse: parse_error's to report
    ],
)
def test_unknown_sparql_terms(body: str, bad: list[str]) -> None:
    assert unknown_sparql_terms(P + body, SCHEMA) == bad


# ---- complete_triples ----------------------------------------------------------------------------
from ragkit.query.sparql import complete_triples  # noqa: E402


@pytest.mark.parametrize(
    ("body", "fixed"),
    [
        # the object the SELECT projects, when its name ends with the property's local name
        ("SELECT ?t1_age WHERE { ?t1 a :singer . ?t1 :singer\\#age . }", "SELECT ?t1_age WHERE { ?t1 a :singer . ?t1 :singer\\#age ?t1_age . }"),
        # otherwise ?<subject>_<local name>, also before ';' and '}'
        ("SELECT ?n WHERE { ?b :author ; :title ?n }", "SELECT ?n WHERE { ?b :author ?b_author ; :title ?n }"),
        ("SELECT ?n WHERE { ?b :title ?n . ?b <http://example.org/s/knows> }", "SELECT ?n WHERE { ?b :title ?n . ?b <http://example.org/s/knows> ?b_knows }"),
        # a GROUP BY / ORDER BY with nothing after it
        ("SELECT ?n WHERE { ?b :title ?n } GROUP BY", "SELECT ?n WHERE { ?b :title ?n }"),
        ("SELECT ?n WHERE { ?b :title ?n } ORDER BY LIMIT 3", "SELECT ?n WHERE { ?b :title ?n } LIMIT 3"),
        # complete queries are left alone
        ("SELECT ?n WHERE { ?b :title ?n . FILTER(?n != :x) } ORDER BY ?n", "SELECT ?n WHERE { ?b :title ?n . FILTER(?n != :x) } ORDER BY ?n"),
        ("SELECT ?n WHERE { ?b a :singer ; :title ?n }", "SELECT ?n WHERE { ?b a :singer ; :title ?n }"),
    ],
)
def test_complete_triples(body: str, fixed: str) -> None:
    assert complete_triples(P + body) == P + fixed
    assert parse_error(P + fixed) is None


def test_hyphens_in_variable_names_become_underscores() -> None:
    from ragkit.query.sparql import fix_variable_names

    q = 'SELECT ?t2_ref-owner_id WHERE { ?t2 :dogs\\#ref-owner_id ?t2_ref-owner_id . FILTER(?a-1 > ?b-?c || ?n = "?x-y") }'
    fixed = fix_variable_names(q)
    assert fixed.count("?t2_ref_owner_id") == 2
    assert ":dogs\\#ref-owner_id" in fixed  # names keep their hyphens
    assert "?a-1" in fixed and "?b-?c" in fixed and '"?x-y"' in fixed  # subtraction and strings untouched
    assert parse_error(fix_variable_names("SELECT ?a-b WHERE { ?s ?p ?a-b }")) is None


# ---- mistyped_variables ---------------------------------------------------------------------------
from ragkit.query.sparql import mistyped_variables  # noqa: E402

XSD = "http://www.w3.org/2001/XMLSchema#"
TYPED = GraphSchema(
    language="sparql",
    classes=(SchemaClass(name=NS + "singer"), SchemaClass(name=NS + "concert")),
    properties=(
        SchemaProperty(name=NS + "singer#name", kind="datatype", domains=(NS + "singer",), ranges=(XSD + "string",)),
        SchemaProperty(name=NS + "concert#year", kind="datatype", domains=(NS + "concert",), ranges=(XSD + "string",)),
        SchemaProperty(name=NS + "sings_at", kind="object", domains=(NS + "singer",), ranges=(NS + "concert",)),
        SchemaProperty(name=NS + "knows"),  # domains and ranges not recorded
    ),
    prefixes={"": NS, "xsd": XSD},
)


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        ("SELECT ?n WHERE { ?s a :singer ; :singer\\#name ?n . ?s :sings_at ?c . ?c a :concert }", []),
        ("SELECT ?n WHERE { ?c a :concert ; :singer\\#name ?n }", ["?c is a :concert, but :singer\\#name is a property of :singer"]),
        ("SELECT ?c WHERE { ?s a :singer . ?c a :concert . ?s :singer\\#name ?c }", ["?c is a :concert, but :singer\\#name has literal values (xsd:string)"]),
        ("SELECT ?x WHERE { ?s a :singer . ?x a :singer . ?s :sings_at ?x }", ["?x is a :singer, but :sings_at has values of :concert"]),
        ("SELECT ?x WHERE { ?s a :concert . ?s :knows ?x }", []),  # no domain recorded: not checked
        ("SELECT ?n WHERE { ?s :singer\\#name ?n }", []),  # untyped
        # one name, two basic graph patterns: each is read on its own
        ("SELECT * WHERE { { ?s a :singer ; :singer\\#name ?n } UNION { ?s a :concert ; :concert\\#year ?n } }", []),
        ("SELECT ?n WHERE { ?c a :concert ; :singer\\#nam", []),  # does not parse: parse_error's to report
    ],
)
def test_mistyped_variables(body: str, wrong: list[str]) -> None:
    assert mistyped_variables(P + body, TYPED) == wrong

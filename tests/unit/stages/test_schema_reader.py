"""Reading a graph's schema and rendering it for a query-writing prompt: compact names, pruning to
a token budget by relevance to the question, and adopting the examples' prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit import Pipeline
from ragkit.errors import InputError
from ragkit.stages.schema.reader import GraphSchemaReader, adopt_prefixes, render_schema
from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty
from ragkit.stores.examples import QueryExample
from ragkit.stores.rdf import WELL_KNOWN_PREFIXES, OxigraphStore
from ragkit.testing import TinyGraphStore

TOWN = """\
@prefix ex: <http://example.org/town/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
ex:rome a ex:City ; rdfs:label "Rome" ; ex:population 2800000 ; ex:homepage <http://rome.example/> .
ex:ann a ex:Person ; rdfs:label "Ann" ; ex:livesIn ex:rome .
"""
SINGER_NS = "http://example.org/concert_singer/"
SINGERS = f"""\
<{SINGER_NS}singer/1> a <{SINGER_NS}singer> ;
  <{SINGER_NS}singer#name> "Joe Sharp" ;
  <{SINGER_NS}singer#age> 52 .
"""


def store_of(tmp_path: Path, text: str, name: str = "g.ttl") -> OxigraphStore:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return OxigraphStore(path=str(p))


# ---- the stage --------------------------------------------------------------------------------
def test_defaults_and_validation() -> None:
    store = TinyGraphStore()
    reader = GraphSchemaReader(store=store)
    assert reader.max_tokens == 1500 and store.setup_calls == 0
    assert GraphSchemaReader(store=store, max_tokens=None).max_tokens is None
    with pytest.raises(ValueError, match="max_tokens must be at least 50"):
        GraphSchemaReader(store=store, max_tokens=49)


@pytest.mark.parametrize("question", ["", "   "])
def test_empty_question_is_an_input_error(question: str) -> None:
    with pytest.raises(InputError, match="the question is empty"):
        GraphSchemaReader(store=TinyGraphStore()).run(question=question)


def test_rendering_lists_classes_and_properties_with_prefixed_names(tmp_path: Path) -> None:
    out = GraphSchemaReader(store=store_of(tmp_path, TOWN)).run(question="Where does Ann live?")
    lines = out.text.splitlines()
    assert "PREFIX ex: <http://example.org/town/>" in lines and "PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>" in lines
    assert "PREFIX owl: <http://www.w3.org/2002/07/owl#>" not in lines  # no term of the graph uses it
    classes = next(line for line in lines if line.startswith("Classes: "))
    assert set(classes.removeprefix("Classes: ").split(", ")) == {"ex:City", "ex:Person"}
    assert lines.index(classes) + 1 == lines.index("Properties:")
    assert "ex:livesIn: ex:Person -> ex:City  e.g. \"Rome\"" in lines  # an object's label is its sample
    assert "ex:population: ex:City -> xsd:integer  e.g. \"2800000\"" in lines
    assert any(line.startswith("rdfs:label: ") for line in lines)
    assert "<http://" not in "\n".join(line for line in lines if not line.startswith("PREFIX"))


def test_rdf_type_is_not_listed_as_a_property(tmp_path: Path) -> None:
    out = GraphSchemaReader(store=store_of(tmp_path, TOWN)).run(question="Which cities are there?")
    assert "http://www.w3.org/1999/02/22-rdf-syntax-ns#type" in out.graph_schema.terms()
    assert not any(line.startswith(("rdf:type", "a:")) for line in out.text.splitlines())


def test_iris_are_not_shown_as_samples(tmp_path: Path) -> None:
    text = GraphSchemaReader(store=store_of(tmp_path, TOWN)).run(question="homepage?").text
    line = next(line for line in text.splitlines() if line.startswith("ex:homepage"))
    assert line == "ex:homepage: ex:City -> literal" and "rome.example" not in text


def test_the_rendering_names_terms_the_store_understands(tmp_path: Path) -> None:
    store = store_of(tmp_path, TOWN)
    text = GraphSchemaReader(store=store).run(question="Where does Ann live?").text
    prefixes = "\n".join(line for line in text.splitlines() if line.startswith("PREFIX"))
    rows = store.query(prefixes + '\nSELECT ?c WHERE { ?p rdfs:label "Ann" ; ex:livesIn ?x . ?x rdfs:label ?c }').rows
    assert rows == (("Rome",),)


def test_property_graph_rendering() -> None:
    schema = GraphSchema(
        language="cypher",
        classes=(SchemaClass(name="Person"), SchemaClass(name="City")),
        properties=(
            SchemaProperty(name="LIVES_IN", kind="relationship", domains=("Person",), ranges=("City",)),
            SchemaProperty(name="name", kind="node_property", domains=("Person",), ranges=("STRING",), samples=("Ann",)),
        ),
    )
    assert render_schema(schema).splitlines() == [
        "Node labels: :Person, :City",
        "Relationships and properties:",
        "(:Person)-[:LIVES_IN]->(:City)",
        'Person.name: STRING  e.g. "Ann"',
    ]


# ---- pruning to a budget ------------------------------------------------------------------------
NS = "http://example.org/t/"
PROPS = ("founded", "mayor", "twinTown", "area", "population", "elevation")
WIDE = GraphSchema(
    language="sparql",
    classes=(SchemaClass(name=NS + "City"),),
    properties=tuple(SchemaProperty(name=NS + p, domains=(NS + "City",), kind="datatype") for p in PROPS)
    + (SchemaProperty(name=NS + "nickname", domains=(NS + "City",), kind="datatype", samples=("Eternal City",)),),
    prefixes={"t": NS},
)


def listed(text: str) -> list[str]:
    return [line.split(":")[1] for line in text.splitlines() if line.startswith("t:") and "->" in line]


def by_lines(text: str) -> int:
    return len(text.splitlines())


def test_without_a_budget_everything_is_listed() -> None:
    assert listed(render_schema(WIDE, "Who is the mayor?")) == [*PROPS, "nickname"]
    assert listed(render_schema(WIDE, "Who is the mayor?", max_tokens=10_000)) == [*PROPS, "nickname"]


def test_a_tight_budget_drops_the_least_relevant_properties_first() -> None:
    # prefix, classes and title take 3 lines: a budget of 5 leaves room for two properties
    text = render_schema(WIDE, "What is the population of the place whose mayor is Ann?", max_tokens=5, count_tokens=by_lines)
    assert listed(text) == ["mayor", "population"]  # kept in schema order
    assert text.splitlines()[:3] == [f"PREFIX t: <{NS}>", "Classes: t:City", "Properties:"]
    text = render_schema(WIDE, "When was it founded, and what is its elevation?", max_tokens=5, count_tokens=by_lines)
    assert listed(text) == ["founded", "elevation"]
    # "twin town" shares two words, "mayor" one: the more relevant is kept first, but the listing keeps schema order
    text = render_schema(WIDE, "Which twin town does the mayor like?", max_tokens=5, count_tokens=by_lines)
    assert listed(text) == ["mayor", "twinTown"]
    assert listed(render_schema(WIDE, "Which twin town does the mayor like?", max_tokens=4, count_tokens=by_lines)) == ["twinTown"]


def test_sample_values_count_towards_relevance() -> None:
    text = render_schema(WIDE, "Which city is called the Eternal City?", max_tokens=4, count_tokens=by_lines)
    assert listed(text) == ["nickname"]


def test_classes_and_prefixes_stay_even_when_nothing_fits() -> None:
    text = render_schema(WIDE, "mayor", max_tokens=1, count_tokens=by_lines)
    assert text.splitlines() == [f"PREFIX t: <{NS}>", "Classes: t:City", "Properties:"]


def test_the_stage_prunes_to_its_budget(tmp_path: Path) -> None:
    ttl = "@prefix t: <http://example.org/t/> .\n" + "".join(
        f't:c{i} a t:City ; t:{p} "{p} value {i}" .\n' for i in range(3) for p in (*PROPS, *(f"extra{k}" for k in range(20)))
    )
    store = store_of(tmp_path, ttl)
    full = GraphSchemaReader(store=store, max_tokens=None).run(question="Who is the mayor?").text
    small = GraphSchemaReader(store=store, max_tokens=80).run(question="Who is the mayor?").text
    assert len(small) // 4 + 1 <= 80 < len(full) // 4 + 1
    assert "t:mayor:" in small and "t:extra19:" in full and "t:extra19:" not in small


# ---- adopting the examples' prefixes --------------------------------------------------------------
def test_compact_escapes_local_names() -> None:
    s = GraphSchema(language="sparql", prefixes={"": SINGER_NS, "ex": "http://ex/"})
    assert s.compact(SINGER_NS + "singer#name") == ":singer\\#name"
    assert s.compact("http://ex/a.b") == "ex:a\\.b" and s.compact("http://ex/a.") == "<http://ex/a.>"
    assert s.compact("http://other/x") == "<http://other/x>"


def test_adopt_prefixes() -> None:
    auto = {**WELL_KNOWN_PREFIXES, "concerts": SINGER_NS, "singer": SINGER_NS + "singer#", "other": "http://other/"}
    got = adopt_prefixes(auto, [f"PREFIX : <{SINGER_NS}>\nSELECT ?n WHERE {{ ?s :singer\\#name ?n }}", "prefix ex: <http://ex/> ASK {}"])
    assert list(got)[:2] == ["", "ex"]  # the examples' prefixes first
    assert got[""] == SINGER_NS and got["ex"] == "http://ex/"
    assert "concerts" not in got and "singer" not in got  # renamed / covered by ":"
    assert got["other"] == "http://other/" and got["rdfs"] == WELL_KNOWN_PREFIXES["rdfs"]
    assert adopt_prefixes(auto, []) == auto
    assert adopt_prefixes(auto, ["PREFIX rdfs: <http://mine/>"])["rdfs"] == "http://mine/"  # the examples win


def test_examples_prefixes_are_adopted_in_the_rendering(tmp_path: Path) -> None:
    store = store_of(tmp_path, SINGERS)
    plain = GraphSchemaReader(store=store).run(question="What is the name of the singer?").text
    assert "singer:name" in plain  # without examples: the store's own prefixes
    ex = QueryExample(question="How old is Joe?", query=f'PREFIX : <{SINGER_NS}>\nSELECT ?a WHERE {{ ?s :singer\\#name "Joe" ; :singer\\#age ?a }}')
    out = GraphSchemaReader(store=store).run(question="What is the name of the singer?", examples=[ex])
    lines = out.text.splitlines()
    assert lines[0] == f"PREFIX : <{SINGER_NS}>"
    assert not any(line.startswith(("PREFIX singer:", "PREFIX concerts:")) for line in lines)
    assert "Classes: :singer" in lines
    assert ':singer\\#name: :singer -> xsd:string  e.g. "Joe Sharp"' in lines
    assert out.graph_schema.prefixes[""] == SINGER_NS
    # a query written in that notation runs
    prefixes = "\n".join(line for line in lines if line.startswith("PREFIX"))
    assert store.query(prefixes + "\nSELECT ?n WHERE { ?s a :singer ; :singer\\#name ?n }").rows == (("Joe Sharp",),)


def test_yaml_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "g.ttl"
    p.write_text(TOWN, encoding="utf-8")
    spec = {
        "version": 1,
        "resources": {"graph": {"type": "oxigraph_store", "path": str(p)}},
        "stages": [{"name": "schema", "type": "graph_schema_reader", "store": "graph", "max_tokens": 300}],
        "inputs": {"question": "schema.question"},
        "outputs": {"text": "schema.text"},
    }
    pipe = Pipeline.from_dict(spec)
    assert Pipeline.from_dict(pipe.to_dict()) == pipe and pipe.stages["schema"].max_tokens == 300  # type: ignore[attr-defined]
    assert "ex:livesIn" in pipe.run(question="Where does Ann live?")["text"]

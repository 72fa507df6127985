"""Query generation (SPARQL and Cypher): lazy candidates (greedy, then beams, then repair), execution
guidance, ranking, the prompt's ``Values:`` lines, the read-only guard, and the stage contract.

Everything runs on :mod:`ragkit.testing` fakes: the scripted LLM records every prompt it is given,
so ``len(llm.prompts)`` is the number of model calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ragkit import Pipeline
from ragkit.errors import ConfigError, InputError
from ragkit.models.base import ChatMessage, Generation
from ragkit.stages.linkers.entity import EntityMention, LinkedEntities
from ragkit.stages.querygen.base import GeneratedQuery, QueryCandidate, QueryGenOutput
from ragkit.stages.querygen.cypher import DEFAULT_CYPHER_INSTRUCTIONS, CypherQueryGenerator
from ragkit.stages.querygen.sparql import DEFAULT_SPARQL_INSTRUCTIONS, SparqlQueryGenerator
from ragkit.stages.schema.reader import GraphSchemaReader
from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty
from ragkit.stores.examples import QueryExample
from ragkit.testing import ScriptedLLM, TinyGraphStore

TINY = "http://example.org/tiny/"
GOOD = f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"  # TinyGraphStore answers: Rome
GOOD_BOB = f"SELECT ?c WHERE {{ <{TINY}bob> <{TINY}livesIn> ?c }}"
EMPTY = f"SELECT ?c WHERE {{ <{TINY}nobody> <{TINY}livesIn> ?c }}"  # valid, no rows
EMPTY2 = f"SELECT ?c WHERE {{ <{TINY}nobody2> <{TINY}livesIn> ?c }}"
UNBOUND = f"SELECT ?x WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"  # projects ?x, binds ?c
BROKEN = "SELECT ?c WHERE { ?c ?p }"  # does not parse
REPAIR = "That query is wrong"  # what only a repair prompt contains
QUESTION = "Where does Ann live?"


@pytest.fixture(scope="module")
def schema() -> Any:
    return GraphSchemaReader(store=TinyGraphStore()).run(question=QUESTION)


def generate(gen: SparqlQueryGenerator | CypherQueryGenerator, schema: Any, question: str = QUESTION, **kw: Any) -> QueryGenOutput:
    return gen.run(question=question, graph_schema=schema.graph_schema, schema_text=schema.text, **kw)


def spy_on(llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record ``num_return_sequences`` of every call to ``llm.generate``."""
    calls: list[int] = []
    real = llm.generate

    def spy(prompt: str | Sequence[ChatMessage], **kw: Any) -> Generation:
        calls.append(kw.get("num_return_sequences", 1))
        return real(prompt, **kw)

    monkeypatch.setattr(llm, "generate", spy)
    return calls


# ---- defaults and construction ------------------------------------------------------------------
def test_defaults() -> None:
    gen = SparqlQueryGenerator(llm=ScriptedLLM())
    assert (gen.store, gen.num_candidates, gen.max_new_tokens, gen.repair_rounds) == (None, 3, 160, 1)
    assert gen.instructions == DEFAULT_SPARQL_INSTRUCTIONS and gen.language == "sparql"
    assert SparqlQueryGenerator(llm=ScriptedLLM(), instructions="Be brief.").instructions == "Be brief."
    assert CypherQueryGenerator(llm=ScriptedLLM()).instructions == DEFAULT_CYPHER_INSTRUCTIONS


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"num_candidates": 0}, "num_candidates must be at least 1"),
        ({"repair_rounds": -1}, "repair_rounds must be 0 or more"),
        ({"max_new_tokens": 7}, "max_new_tokens must be at least 8"),
        ({"selection": "best"}, "selection must be one of first, vote, review, not 'best'"),
        ({"selection": "vote"}, "selection 'vote' compares the candidates' rows: give the generator a store"),
    ],
)
@pytest.mark.parametrize("cls", [SparqlQueryGenerator, CypherQueryGenerator])
def test_constructor_rejects_bad_values(cls: type, kw: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(llm=ScriptedLLM(), **kw)


def test_construction_does_not_load_the_model() -> None:
    llm = ScriptedLLM()
    SparqlQueryGenerator(llm=llm, store=TinyGraphStore())
    assert llm.setup_calls == 0 and llm.prompts == []


def test_warm_up_loads_the_llm_once(schema: Any) -> None:
    llm = ScriptedLLM(responses=[GOOD])
    gen = SparqlQueryGenerator(llm=llm)
    gen.warm_up()
    gen.warm_up()
    assert llm.setup_calls == 1
    generate(gen, schema)
    generate(gen, schema)
    assert llm.setup_calls == 1


@pytest.mark.parametrize("question", ["", "   \n"])
@pytest.mark.parametrize("cls", [SparqlQueryGenerator, CypherQueryGenerator])
def test_empty_question_is_an_input_error(schema: Any, cls: type, question: str) -> None:
    llm = ScriptedLLM(responses=[GOOD])
    with pytest.raises(InputError, match="the question is empty"):
        generate(cls(llm=llm), schema, question=question)
    assert llm.prompts == []


# ---- lazy candidates ----------------------------------------------------------------------------
def test_valid_greedy_reply_is_one_call(schema: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = ScriptedLLM(responses=[GOOD, EMPTY])
    calls = spy_on(llm, monkeypatch)
    out = generate(SparqlQueryGenerator(llm=llm, num_candidates=3), schema)
    assert len(llm.prompts) == 1 and calls == [1]
    assert out.query == GOOD and out.generated.query == GOOD and out.generated.valid
    assert [(c.origin, c.error, c.rows) for c in out.generated.candidates] == [("greedy", None, None)]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (UNBOUND, "?x is selected but never bound"),
        (BROKEN, "does not parse"),
        (f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesAt> ?c }}", "unknown property tiny:livesAt (did you mean tiny:livesIn"),
        (f"SELECT ?c WHERE {{ ?c a <{TINY}Town> }}", "unknown class tiny:Town"),
        (
            f"SELECT ?p WHERE {{ ?c a <{TINY}City> . ?c <{TINY}livesIn> ?p }}",
            "?c is a tiny:City, but tiny:livesIn is a property of tiny:Person (give each variable the class its properties belong to)",
        ),
    ],
)
def test_invalid_greedy_reply_brings_beams_then_a_repair_that_shows_the_error(
    schema: Any, monkeypatch: pytest.MonkeyPatch, bad: str, error: str
) -> None:
    llm = ScriptedLLM(responses=[bad], rules={REPAIR: GOOD})
    calls = spy_on(llm, monkeypatch)
    out = generate(SparqlQueryGenerator(llm=llm, num_candidates=3, repair_rounds=2), schema)
    assert calls == [1, 3, 1]  # greedy, beams, one repair (it succeeded, so no second)
    assert REPAIR not in llm.prompts[0] and REPAIR not in llm.prompts[1]
    repair_prompt = llm.prompts[2]
    assert error in repair_prompt and f"<|assistant|>\n{bad}\n" in repair_prompt
    assert "Write the corrected SPARQL query." in repair_prompt
    assert out.query == GOOD
    cands = out.generated.candidates
    assert [c.origin for c in cands] == ["repair", "greedy"]  # identical beams are not kept twice
    assert cands[0].error is None and error in (cands[1].error or "")


def test_no_beams_and_no_repair_when_switched_off(schema: Any) -> None:
    llm = ScriptedLLM(responses=[UNBOUND], rules={REPAIR: GOOD})
    out = generate(SparqlQueryGenerator(llm=llm, num_candidates=1, repair_rounds=0), schema)
    assert len(llm.prompts) == 1
    assert out.query == UNBOUND and not out.generated.valid


def test_repair_rounds_are_bounded(schema: Any) -> None:
    llm = ScriptedLLM(responses=[BROKEN])
    out = generate(SparqlQueryGenerator(llm=llm, num_candidates=2, repair_rounds=3), schema)
    assert len(llm.prompts) == 1 + 1 + 3
    assert not out.generated.valid and out.query == BROKEN


def test_a_reply_without_a_query_is_a_failed_candidate(schema: Any) -> None:
    llm = ScriptedLLM(responses=[""])
    out = generate(SparqlQueryGenerator(llm=llm, num_candidates=2, repair_rounds=1), schema)
    assert len(llm.prompts) == 3 and "(no query)" in llm.prompts[2]
    assert out.query == "" and out.generated.candidates[0].error == "the model wrote no query"


# ---- execution guidance -------------------------------------------------------------------------
def test_with_a_store_an_empty_result_is_a_failure(schema: Any) -> None:
    store = TinyGraphStore()
    llm = ScriptedLLM(responses=[EMPTY, EMPTY, GOOD])
    out = generate(SparqlQueryGenerator(llm=llm, store=store, num_candidates=2, repair_rounds=1), schema)
    assert len(llm.prompts) == 2  # greedy (empty), beams (one good): no repair
    assert store.executed == [EMPTY, GOOD]
    assert out.query == GOOD
    assert [(c.query, c.rows) for c in out.generated.candidates] == [(GOOD, 1), (EMPTY, 0)]


def test_with_a_store_a_result_with_rows_stops(schema: Any) -> None:
    store = TinyGraphStore()
    llm = ScriptedLLM(responses=[GOOD, EMPTY])
    out = generate(SparqlQueryGenerator(llm=llm, store=store), schema)
    assert len(llm.prompts) == 1 and store.executed == [GOOD]
    assert out.generated.candidates[0].rows == 1 and out.generated.candidates[0].good


def test_without_a_store_an_empty_query_is_not_run(schema: Any) -> None:
    llm = ScriptedLLM(responses=[EMPTY, GOOD])
    out = generate(SparqlQueryGenerator(llm=llm), schema)
    assert len(llm.prompts) == 1 and out.query == EMPTY and out.generated.candidates[0].rows is None


def test_empty_results_everywhere_reach_the_repair_with_a_hint(schema: Any) -> None:
    store = TinyGraphStore()
    llm = ScriptedLLM(responses=[EMPTY], rules={REPAIR: GOOD})
    out = generate(SparqlQueryGenerator(llm=llm, store=store, num_candidates=2), schema)
    assert len(llm.prompts) == 3 and "it returned no rows" in llm.prompts[2]
    assert out.query == GOOD


def test_a_store_error_is_the_candidates_error(schema: Any) -> None:
    # valid SPARQL that TinyGraphStore cannot answer: it raises QueryParseError
    odd = f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c . ?c ?p ?o }}"
    store = TinyGraphStore()
    llm = ScriptedLLM(responses=[odd], rules={REPAIR: GOOD})
    out = generate(SparqlQueryGenerator(llm=llm, store=store, num_candidates=1), schema)
    assert out.query == GOOD
    failed = out.generated.candidates[1]
    assert failed.query == odd and (failed.error or "").startswith("QueryParseError: ")
    assert failed.error in llm.prompts[1]


def test_candidates_are_ranked_good_then_valid_then_by_score(schema: Any) -> None:
    store = TinyGraphStore()
    # greedy: valid but empty (score -0.1); beams: broken (-0.1), valid but empty (-0.2), good (-0.3)
    llm = ScriptedLLM(responses=[EMPTY, BROKEN, EMPTY2, GOOD])
    out = generate(SparqlQueryGenerator(llm=llm, store=store, num_candidates=3, repair_rounds=0), schema)
    cands = out.generated.candidates
    assert [c.query for c in cands] == [GOOD, EMPTY, EMPTY2, BROKEN]
    assert [c.score for c in cands] == pytest.approx([-0.3, -0.1, -0.2, -0.1])
    assert [c.good for c in cands] == [True, False, False, False]
    assert out.query == GOOD


def test_without_a_good_candidate_a_valid_one_comes_before_a_likelier_broken_one(schema: Any) -> None:
    llm = ScriptedLLM(responses=[BROKEN, BROKEN, UNBOUND, EMPTY])
    out = generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), num_candidates=3, repair_rounds=0), schema)
    assert out.query == EMPTY
    assert [c.error is None for c in out.generated.candidates] == [True, False, False]


# ---- the prompt -----------------------------------------------------------------------------------
EXAMPLES = [
    QueryExample(question="Where does Bob live?", query=f'SELECT ?c WHERE {{ ?p <{TINY}label> "Bob" . ?p <{TINY}livesIn> ?c }}'),
    QueryExample(question="Who lives in Oslo or 'Rome'?", query=f"SELECT ?p WHERE {{ ?c <{TINY}label> 'Oslo' . ?p <{TINY}livesIn> ?c }}"),
    QueryExample(question="List every city.", query=f"SELECT ?c WHERE {{ ?c a <{TINY}City> }}"),
]
ANN = LinkedEntities(mentions=[EntityMention(span="ann", value="Ann", property=f"{TINY}label", cls=f"{TINY}Person")])


def test_values_lines_carry_linked_entities_and_each_examples_own_literals(schema: Any) -> None:
    llm = ScriptedLLM(responses=[GOOD])
    generate(SparqlQueryGenerator(llm=llm), schema, question="Where does ann live?", examples=EXAMPLES, entities=ANN)
    prompt = llm.prompts[0]
    assert prompt.startswith(f"<|system|>\n{DEFAULT_SPARQL_INSTRUCTIONS}\n\n{schema.text}\n")
    assert f'<|user|>\nWhere does Bob live?\nValues: "Bob"\n<|assistant|>\n{EXAMPLES[0].query}\n' in prompt
    assert f"<|user|>\nWho lives in Oslo or 'Rome'?\nValues: \"Oslo\"\n<|assistant|>\n{EXAMPLES[1].query}\n" in prompt
    assert f"<|user|>\nList every city.\n<|assistant|>\n{EXAMPLES[2].query}\n" in prompt  # no literals, no line
    assert prompt.endswith('<|user|>\nWhere does ann live?\nValues: "Ann"\n<|assistant|>\n')
    assert prompt.count('Values: "Ann"') == 1 and prompt.count('Values: "Bob"') == 1
    # the nearest example (first) sits last, next to the question
    assert prompt.index("List every city.") < prompt.index("Who lives in Oslo") < prompt.index("Where does Bob live?")


def test_no_values_line_without_entities(schema: Any) -> None:
    llm = ScriptedLLM(responses=[GOOD])
    generate(SparqlQueryGenerator(llm=llm), schema, entities=LinkedEntities())
    assert "Values:" not in llm.prompts[0] and llm.prompts[0].endswith(f"<|user|>\n{QUESTION}\n<|assistant|>\n")


def test_several_linked_values_are_listed_once_each() -> None:
    gen = SparqlQueryGenerator(llm=ScriptedLLM())
    ents = LinkedEntities(
        mentions=[
            EntityMention(span="Ann", value="Ann", property="p1"),
            EntityMention(span="Ann", value="Ann", property="p2"),
            EntityMention(span="Rome", value="Rome", property="p1"),
        ]
    )
    msgs = gen.messages("Does Ann live in Rome?", "schema", [], ents)
    assert [m.role for m in msgs] == ["system", "user"]
    assert msgs[-1].content == 'Does Ann live in Rome?\nValues: "Ann", "Rome"'


def test_missing_prefix_lines_are_added(schema: Any) -> None:
    llm = ScriptedLLM(responses=["```sparql\nSELECT ?c WHERE { tiny:ann tiny:livesIn ?c }\n```\nThis finds where Ann lives."])
    out = generate(SparqlQueryGenerator(llm=llm), schema)
    assert out.query == f"PREFIX tiny: <{TINY}>\nSELECT ?c WHERE {{ tiny:ann tiny:livesIn ?c }}"
    assert out.generated.valid and len(llm.prompts) == 1


# ---- the read-only guard ------------------------------------------------------------------------
def test_mutating_replies_are_never_executed(schema: Any) -> None:
    store = TinyGraphStore()
    llm = ScriptedLLM(responses=["DELETE WHERE { ?s ?p ?o }", "DROP ALL", "INSERT DATA { <a:b> <a:c> <a:d> }"], rules={REPAIR: "CLEAR ALL"})
    out = generate(SparqlQueryGenerator(llm=llm, store=store, num_candidates=3, repair_rounds=1), schema)
    assert store.executed == []
    assert len(llm.prompts) == 3
    assert not out.generated.valid
    errors = [c.error or "" for c in out.generated.candidates]
    assert len(errors) == 4 and all(e.startswith("refused: the query contains") and "modif" in e for e in errors)
    assert {c.query for c in out.generated.candidates} == {"DELETE WHERE { ?s ?p ?o }", "DROP ALL", "INSERT DATA { <a:b> <a:c> <a:d> }", "CLEAR ALL"}
    assert "refused: the query contains DELETE" in llm.prompts[2]


# ---- pipelines ------------------------------------------------------------------------------------
def sparql_spec(**querygen: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "name": "querygen_test",
        "resources": {
            "llm": {"type": "scripted_llm", "responses": [EMPTY, GOOD]},
            "graph": {"type": "tiny_graph_store"},
        },
        "stages": [
            {"name": "schema", "type": "graph_schema_reader", "store": "graph", "max_tokens": 200},
            {"name": "querygen", "type": "sparql_generator", "llm": "llm", "store": "graph", "num_candidates": 2, "max_new_tokens": 64, **querygen},
            {"name": "retrieve", "type": "graph_query_retriever", "store": "graph"},
        ],
        "connections": [
            "schema.graph_schema -> querygen.graph_schema",
            "schema.text -> querygen.schema_text",
            "querygen.generated -> retrieve.generated",
        ],
        "inputs": {"question": ["schema.question", "querygen.question"]},
        "outputs": {"query": "retrieve.query", "rows": "retrieve.rows", "candidates": "querygen.generated"},
    }


def test_yaml_round_trip_of_a_sparql_generator_pipeline(tmp_path: Path) -> None:
    pipe = Pipeline.from_dict(sparql_spec(repair_rounds=0, instructions="Write SPARQL."))
    path = tmp_path / "p.yaml"
    pipe.to_yaml(path)
    again = Pipeline.from_yaml(path)
    assert again == pipe and again.to_dict() == pipe.to_dict()
    gen = again.stages["querygen"]
    assert isinstance(gen, SparqlQueryGenerator)
    assert (gen.num_candidates, gen.max_new_tokens, gen.repair_rounds, gen.instructions) == (2, 64, 0, "Write SPARQL.")
    assert gen.store is again.resources["graph"] and gen.llm is again.resources["llm"]
    out = again.run(question=QUESTION)
    assert out["query"] == GOOD and out["rows"] == [[f"{TINY}rome"]]
    assert again.resources["llm"].setup_calls == 1  # type: ignore[attr-defined]


# ---- Cypher -----------------------------------------------------------------------------------------
class TinyCypherStore(TinyGraphStore):
    """The tiny fake, guarded as a Cypher store; it answers only the scripted queries."""

    language = "cypher"


CYPHER_SCHEMA = GraphSchema(
    language="cypher",
    classes=(SchemaClass(name="Person"), SchemaClass(name="City")),
    properties=(
        SchemaProperty(name="LIVES_IN", kind="relationship", domains=("Person",), ranges=("City",)),
        SchemaProperty(name="name", kind="node_property", domains=("Person", "City"), ranges=("STRING",)),
        SchemaProperty(name="population", kind="node_property", domains=("City",), ranges=("INTEGER",)),
    ),
)
C_GOOD = "MATCH (p:Person {name: 'Ann'})-[:LIVES_IN]->(c:City) RETURN c.name"
C_EMPTY = "MATCH (p:Person {name: 'Nobody'})-[:LIVES_IN]->(c:City) RETURN c.name"


def cypher(gen: CypherQueryGenerator, question: str = QUESTION, **kw: Any) -> QueryGenOutput:
    return gen.run(question=question, graph_schema=CYPHER_SCHEMA, schema_text="Node labels: :Person, :City", **kw)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("MATCH (p:Persn)-[:LIVES_IN]->(c:City) RETURN c.name", "unknown label :Persn (did you mean :Person?)"),
        ("MATCH (p:Person)-[:LIVES]->(c:City) RETURN c.name", "unknown relationship :LIVES (did you mean :LIVES_IN?)"),
        (
            "MATCH (c:City)-[:LIVES_IN]->(p:Person) RETURN c.name",
            "relationship pattern not in the schema: (:City)-[:LIVES_IN]->(:Person) (the schema has (:Person)-[:LIVES_IN]->(:City))",
        ),
        (
            "MATCH (p:Person {name: 'Ann'}) RETURN p.population",
            "property read from a label that does not have it: p.population (a :Person has name; population is on :City)",
        ),
        (
            "MATCH (p:Person)-[:LIVES_IN]->(c:City) WITH c, count(p) AS n ORDER BY n DESC LIMIT 1",
            "the query is unfinished: it ends in WITH; a read query ends with RETURN",
        ),
    ],
)
def test_cypher_unknown_terms_are_reported_and_repaired(reply: str, error: str) -> None:
    llm = ScriptedLLM(responses=[f"```cypher\n{reply};\n```"], rules={REPAIR: C_GOOD})
    out = cypher(CypherQueryGenerator(llm=llm, num_candidates=2))
    assert len(llm.prompts) == 3
    assert error in llm.prompts[2] and "Write the corrected CYPHER query." in llm.prompts[2]
    assert out.query == C_GOOD and out.generated.language == "cypher"
    assert out.generated.candidates[1].error.startswith(error)


def test_cypher_valid_greedy_is_one_call_and_values_are_shown() -> None:
    llm = ScriptedLLM(responses=[C_GOOD])
    ex = [QueryExample(question="Where does Bob live?", query="MATCH (p:Person {name: 'Bob'})-[:LIVES_IN]->(c) RETURN c.name")]
    out = cypher(CypherQueryGenerator(llm=llm), examples=ex, entities=ANN)
    assert len(llm.prompts) == 1 and out.query == C_GOOD
    assert "Where does Bob live?\nValues: \"Bob\"\n" in llm.prompts[0]
    assert llm.prompts[0].endswith('Where does Ann live?\nValues: "Ann"\n<|assistant|>\n')


def test_cypher_execution_guided() -> None:
    store = TinyCypherStore(answers={C_EMPTY: [], C_GOOD: [["Rome"]]})
    llm = ScriptedLLM(responses=[C_EMPTY, C_EMPTY, C_GOOD])
    out = cypher(CypherQueryGenerator(llm=llm, store=store, num_candidates=2))
    assert len(llm.prompts) == 2 and store.executed == [C_EMPTY, C_GOOD]
    assert [(c.query, c.rows) for c in out.generated.candidates] == [(C_GOOD, 1), (C_EMPTY, 0)]


def test_cypher_mutating_replies_are_never_executed() -> None:
    store = TinyCypherStore(answers={C_GOOD: [["Rome"]]})
    llm = ScriptedLLM(responses=["MATCH (n) DETACH DELETE n", "MERGE (n:Person {name: 'x'}) RETURN n"], rules={REPAIR: "CREATE (n:City)"})
    out = cypher(CypherQueryGenerator(llm=llm, store=store, num_candidates=2))
    assert store.executed == [] and not out.generated.valid
    assert all((c.error or "").startswith("refused:") for c in out.generated.candidates)
    assert len(out.generated.candidates) == 3


def test_cypher_generator_yaml_round_trip() -> None:
    spec = {
        "version": 1,
        "resources": {"llm": {"type": "scripted_llm", "responses": [C_GOOD]}},
        "stages": [{"name": "querygen", "type": "cypher_generator", "llm": "llm", "num_candidates": 2, "repair_rounds": 0}],
        "inputs": {"question": "querygen.question", "graph_schema": "querygen.graph_schema", "schema_text": "querygen.schema_text"},
        "outputs": {"query": "querygen.query"},
    }
    pipe = Pipeline.from_dict(spec)
    assert Pipeline.from_dict(pipe.to_dict()) == pipe
    gen = pipe.stages["querygen"]
    assert isinstance(gen, CypherQueryGenerator) and (gen.num_candidates, gen.repair_rounds) == (2, 0)
    assert pipe.run(question=QUESTION, graph_schema=CYPHER_SCHEMA, schema_text="")["query"] == C_GOOD


def test_generation_is_constrained_to_the_schema_by_default(schema: Any) -> None:
    llm = ScriptedLLM(responses=[EMPTY, EMPTY2, EMPTY, GOOD])
    generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), num_candidates=2), schema)
    assert len(llm.constraints) >= 2 and all(c is not None for c in llm.constraints)  # greedy, beams, repair alike
    c = llm.constraints[0]
    assert c.accepts("SELECT ?c WHERE { tiny:ann tiny:livesIn ?c }")
    assert not c.accepts("SELECT ?c WHERE { tiny:ann tiny:livesAt ?c }")


def test_string_literals_are_grounded_in_the_question_and_its_linked_values(schema: Any) -> None:
    llm = ScriptedLLM(responses=[GOOD])
    mentions = [EntityMention(span="the capital", value="Roma Capitale", property=f"{TINY}label")]
    generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore()), schema, question="Who lives in the capital?", entities=LinkedEntities(mentions=mentions))
    c = llm.constraints[0]
    assert c.sources == ("who lives in the capital?", "roma capitale")
    llm = ScriptedLLM(responses=[GOOD])
    generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), ground_literals=False), schema)
    assert llm.constraints[0] is not None and llm.constraints[0].sources == ()  # names still constrained; literals free


def test_constraint_can_be_turned_off(schema: Any) -> None:
    llm = ScriptedLLM(responses=[GOOD])
    generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), constrained=False), schema)
    assert llm.constraints == [None]


def test_beams_follow_a_greedy_query_the_constraint_had_to_force(schema: Any) -> None:
    # the greedy query is good, but the constraint overruled the model on it: beams are tried too,
    # and the likeliest good candidate wins (ScriptedLLM scores its replies -0.1, -0.2, ...)
    llm = ScriptedLLM(responses=[GOOD, GOOD_BOB, GOOD], forced_tokens=2)
    out = generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), num_candidates=2), schema)
    assert len(llm.prompts) == 2 and {c.origin for c in out.generated.candidates} == {"greedy", "beam"}
    # unforced, a good greedy query is enough
    llm = ScriptedLLM(responses=[GOOD, GOOD_BOB])
    generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), num_candidates=2), schema)
    assert len(llm.prompts) == 1


# ---- a generator that falls back from another -----------------------------------------------------
def previous_of(*candidates: QueryCandidate, language: str = "sparql") -> GeneratedQuery:
    return GeneratedQuery(language=language, query=candidates[0].query, candidates=list(candidates))


def test_a_good_previous_query_is_passed_on_without_generating(schema: Any) -> None:
    llm = ScriptedLLM(responses=[GOOD_BOB])
    prev = previous_of(QueryCandidate(query=GOOD, score=-0.5, rows=1), QueryCandidate(query=BROKEN, error="does not parse"))
    out = generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore()), schema, previous=prev)
    assert llm.prompts == []
    assert out.query == GOOD and out.generated.candidates == prev.candidates


@pytest.mark.parametrize(
    "failed",
    [QueryCandidate(query=BROKEN, score=-0.01, error="SPARQL syntax error"), QueryCandidate(query=EMPTY, score=-0.01, rows=0)],
    ids=["invalid", "empty"],
)
def test_a_failed_previous_query_brings_this_generators_candidates_ranked_with_it(schema: Any, failed: QueryCandidate) -> None:
    llm = ScriptedLLM(responses=[GOOD_BOB])
    out = generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore()), schema, previous=previous_of(failed))
    assert len(llm.prompts) == 1
    assert [c.query for c in out.generated.candidates] == [GOOD_BOB, failed.query]  # good first, though less likely
    assert out.query == GOOD_BOB


def test_when_the_fallback_fails_too_the_previous_query_can_still_win(schema: Any) -> None:
    # both valid and empty: the likelier one is kept, whichever generator wrote it
    llm = ScriptedLLM(responses=[EMPTY2])  # scored -0.1
    prev = previous_of(QueryCandidate(query=EMPTY, score=-0.05, rows=0))
    out = generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), num_candidates=1, repair_rounds=0), schema, previous=prev)
    assert out.query == EMPTY and [c.query for c in out.generated.candidates] == [EMPTY, EMPTY2]


def test_the_fallback_does_not_retry_a_query_the_previous_generator_wrote(schema: Any) -> None:
    store = TinyGraphStore()
    llm = ScriptedLLM(responses=[EMPTY])
    prev = previous_of(QueryCandidate(query=EMPTY, rows=0))
    out = generate(SparqlQueryGenerator(llm=llm, store=store, num_candidates=1, repair_rounds=0), schema, previous=prev)
    assert len(llm.prompts) == 1 and store.executed == [] and len(out.generated.candidates) == 1


@pytest.mark.parametrize(("query", "calls"), [(GOOD, 0), (EMPTY, 1)])
def test_a_previous_query_that_was_not_executed_is_executed_by_a_fallback_with_a_store(schema: Any, query: str, calls: int) -> None:
    store = TinyGraphStore()
    llm = ScriptedLLM(responses=[GOOD_BOB])
    out = generate(SparqlQueryGenerator(llm=llm, store=store), schema, previous=previous_of(QueryCandidate(query=query)))
    assert store.executed[0] == query and len(llm.prompts) == calls
    assert next(c for c in out.generated.candidates if c.query == query).rows == (1 if query == GOOD else 0)


def test_a_previous_query_of_another_language_is_a_wiring_error(schema: Any) -> None:
    prev = previous_of(QueryCandidate(query="MATCH (n) RETURN n"), language="cypher")
    with pytest.raises(ConfigError, match="connect a sparql generator"):
        generate(SparqlQueryGenerator(llm=ScriptedLLM()), schema, previous=prev)


# ---- selection by vote ----------------------------------------------------------------------------
OSLO_TOO = f'SELECT ?c WHERE {{ ?p <{TINY}label> "Bob" . ?p <{TINY}livesIn> ?c }}'  # Bob's city, as GOOD_BOB
OSLO = [[f"{TINY}oslo"]]


def test_a_vote_prefers_the_rows_distinct_queries_agree_on_over_the_likeliest_query(schema: Any) -> None:
    # greedy: GOOD, Rome (-0.1); beams: GOOD again (-0.1, a duplicate: no second vote), GOOD_BOB (-0.2) and
    # OSLO_TOO (-0.3), both Oslo
    replies = [GOOD, GOOD, GOOD_BOB, OSLO_TOO]
    store = TinyGraphStore(answers={OSLO_TOO: OSLO})
    llm = ScriptedLLM(responses=replies)
    out = generate(SparqlQueryGenerator(llm=llm, store=store, num_candidates=3, selection="vote"), schema)
    assert len(llm.prompts) == 2  # the greedy query was good, and the beams were still made
    assert [(c.query, c.votes) for c in out.generated.candidates] == [(GOOD_BOB, 2), (OSLO_TOO, 2), (GOOD, 1)]
    assert out.query == GOOD_BOB
    first = generate(SparqlQueryGenerator(llm=ScriptedLLM(responses=replies), store=TinyGraphStore(answers={OSLO_TOO: OSLO}), num_candidates=3), schema)
    assert first.query == GOOD and len(first.generated.candidates) == 1 and first.generated.candidates[0].votes is None


def test_a_vote_counts_only_candidates_with_rows(schema: Any) -> None:
    # two empty queries agree on "nothing"; the one with rows wins
    llm = ScriptedLLM(responses=[EMPTY, EMPTY2, GOOD])
    out = generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), num_candidates=2, repair_rounds=0, selection="vote"), schema)
    assert out.query == GOOD and [c.votes for c in out.generated.candidates] == [1, 0, 0]


def test_candidates_that_agree_share_an_answer_digest(schema: Any) -> None:
    store = TinyGraphStore(answers={OSLO_TOO: OSLO})
    out = generate(SparqlQueryGenerator(llm=ScriptedLLM(responses=[GOOD, GOOD_BOB, OSLO_TOO]), store=store, num_candidates=2, selection="vote"), schema)
    answers = {c.query: c.answer for c in out.generated.candidates}
    assert answers[GOOD_BOB] == answers[OSLO_TOO] != answers[GOOD] and answers[GOOD] is not None


def test_with_a_vote_a_previous_good_query_is_not_passed_on_but_votes(schema: Any) -> None:
    store = TinyGraphStore(answers={OSLO_TOO: OSLO})
    llm = ScriptedLLM(responses=[GOOD, OSLO_TOO])  # greedy Rome (-0.1), beam Oslo (-0.1)
    prev = previous_of(QueryCandidate(query=GOOD_BOB, score=-0.05, rows=1))  # Oslo; executed without its rows kept
    out = generate(SparqlQueryGenerator(llm=llm, store=store, num_candidates=2, selection="vote"), schema, previous=prev)
    assert len(llm.prompts) == 2 and store.executed[0] == GOOD_BOB  # re-read to compare its rows
    assert [(c.query, c.votes) for c in out.generated.candidates] == [(GOOD_BOB, 2), (OSLO_TOO, 2), (GOOD, 1)]


def test_a_vote_pipeline_round_trips_and_records_the_winners_votes() -> None:
    spec = sparql_spec(selection="vote")
    spec["resources"]["llm"]["responses"] = [GOOD, GOOD_BOB, OSLO_TOO]
    spec["resources"]["graph"]["answers"] = {OSLO_TOO: OSLO}
    pipe = Pipeline.from_dict(spec)
    assert Pipeline.from_dict(pipe.to_dict()) == pipe and pipe.to_dict()["stages"][1]["selection"] == "vote"
    result = pipe.run(question=QUESTION)
    assert result["query"] == GOOD_BOB and result["rows"] == OSLO
    assert result.trace.stage("querygen").extra["votes"] == 2


# ---- selection by review ----------------------------------------------------------------------------
# the reviewer's log-probability of the question given each query (found by a piece of its text)
REVIEWS = {f"<{TINY}ann>": -2.0, f"<{TINY}bob>": -1.0, '"Bob"': -1.5}


def test_a_review_ranks_good_candidates_by_likelihood_plus_the_reviewers_score(schema: Any) -> None:
    # greedy GOOD (-0.1); beams GOOD again, GOOD_BOB (-0.2), OSLO_TOO (-0.3): with the reviews
    # -2.1, -1.2 and -1.8
    llm = ScriptedLLM(responses=[GOOD, GOOD, GOOD_BOB, OSLO_TOO], scores=REVIEWS)
    out = generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(answers={OSLO_TOO: OSLO}), num_candidates=3, selection="review"), schema)
    assert len(llm.prompts) == 2  # the greedy query was good, and the beams were still made
    assert [(c.query, c.review) for c in out.generated.candidates] == [(GOOD_BOB, -1.0), (OSLO_TOO, -1.5), (GOOD, -2.0)]
    assert out.query == GOOD_BOB
    assert [question for _, question in llm.scored] == [QUESTION] * 3
    prompt = next(text for text, _ in llm.scored if GOOD_BOB in text)
    assert "Here is a SPARQL query:" in prompt and prompt.rstrip().endswith("What question does it answer?\n<|assistant|>")


def test_a_review_scores_only_good_candidates_and_needs_two(schema: Any) -> None:
    llm = ScriptedLLM(responses=[EMPTY, EMPTY2, GOOD], scores=REVIEWS)  # two empty queries, one with rows
    out = generate(SparqlQueryGenerator(llm=llm, store=TinyGraphStore(), num_candidates=2, repair_rounds=0, selection="review"), schema)
    assert out.query == GOOD and llm.scored == [] and all(c.review is None for c in out.generated.candidates)


def test_the_reviewer_can_be_another_model_and_must_be_able_to_score(schema: Any) -> None:
    class CannotScore(ScriptedLLM):
        def score(self, prompts: Any, continuation: str) -> list[float]:
            raise NotImplementedError

    replies = [GOOD, GOOD_BOB]  # greedy -0.1, beams GOOD_BOB -0.1 (GOOD again is a duplicate)
    writer = ScriptedLLM(responses=replies, scores={f"<{TINY}ann>": -5.0})
    reviewer = ScriptedLLM(scores=REVIEWS)
    gen = SparqlQueryGenerator(llm=writer, store=TinyGraphStore(), num_candidates=2, selection="review", reviewer=reviewer)
    assert generate(gen, schema).query == GOOD_BOB and writer.scored == [] and len(reviewer.scored) == 2
    gen = SparqlQueryGenerator(llm=ScriptedLLM(responses=replies), store=TinyGraphStore(), num_candidates=2, selection="review", reviewer=CannotScore())
    with pytest.raises(ConfigError, match="selection 'review' needs a reviewer model that can score"):
        generate(gen, schema)


def test_a_review_pipeline_round_trips_and_records_the_reviewed_candidates() -> None:
    spec = sparql_spec(selection="review", reviewer="reviewer")
    spec["resources"]["llm"]["responses"] = [GOOD, GOOD_BOB, OSLO_TOO]
    spec["resources"]["reviewer"] = {"type": "scripted_llm", "scores": REVIEWS}
    spec["resources"]["graph"]["answers"] = {OSLO_TOO: OSLO}
    pipe = Pipeline.from_dict(spec)
    assert Pipeline.from_dict(pipe.to_dict()) == pipe and pipe.to_dict()["stages"][1]["reviewer"] == "reviewer"
    result = pipe.run(question=QUESTION)
    assert result["query"] == GOOD_BOB and result["rows"] == OSLO
    assert result.trace.stage("querygen").extra["reviewed"] == 3


def fallback_spec(first: list[str], second: list[str]) -> dict[str, Any]:
    spec = sparql_spec(num_candidates=1, repair_rounds=0)
    spec["resources"]["tuned"] = {"type": "scripted_llm", "responses": first}
    spec["resources"]["llm"]["responses"] = second
    spec["stages"].insert(1, {"name": "first", "type": "sparql_generator", "llm": "tuned", "store": "graph", "num_candidates": 1, "repair_rounds": 0})
    spec["connections"] += ["schema.graph_schema -> first.graph_schema", "schema.text -> first.schema_text", "first.generated -> querygen.previous"]
    spec["inputs"]["question"].append("first.question")
    return spec


@pytest.mark.parametrize(("first", "second", "query", "fallback", "chosen"), [(GOOD, GOOD_BOB, GOOD, False, None), (BROKEN, GOOD_BOB, GOOD_BOB, True, True)])
def test_a_pipeline_falls_back_from_one_generator_to_another(first: str, second: str, query: str, fallback: bool, chosen: bool | None) -> None:
    pipe = Pipeline.from_dict(fallback_spec([first], [second]))
    result = pipe.run(question=QUESTION)
    assert result["query"] == query
    notes = result.trace.stage("querygen").extra
    assert notes["fallback"] is fallback and notes.get("fallback_chosen") is chosen
    assert len(pipe.resources["llm"].prompts) == int(fallback)  # type: ignore[attr-defined]
    assert Pipeline.from_dict(pipe.to_dict()) == pipe


def test_the_trace_counts_the_sequences_the_constraint_ended_over_every_call() -> None:
    spec = sparql_spec(repair_rounds=1)
    spec["resources"]["llm"] = {"type": "scripted_llm", "responses": [BROKEN], "ended_rows": 1}  # one per call
    pipe = Pipeline.from_dict(spec)
    notes = pipe.run(question=QUESTION).trace.stage("querygen").extra
    assert len(pipe.resources["llm"].prompts) == 3  # type: ignore[attr-defined]  # greedy, beams, repair
    assert notes["ended_early"] == 3 and notes["forced_tokens"] == 0

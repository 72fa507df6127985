"""Constrained decoding with the bundled model: the logits processor keeps a real model's queries to
the schema's names, in greedy and beam search, and the query generator applies it by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit.models.base import ChatMessage
from ragkit.models.llm import LocalLLM
from ragkit.query.constrain import TermConstraint
from ragkit.query.sparql import unknown_sparql_terms
from ragkit.stages.querygen.sparql import SparqlQueryGenerator
from ragkit.stages.schema.reader import GraphSchemaReader
from ragkit.stores.rdf import OxigraphStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRAPH = Path(__file__).resolve().parents[2] / "fixtures" / "library" / "graph.ttl"
# The prompt itself asks for a property the graph does not have: a model follows it unless stopped.
BAIT = [
    ChatMessage(role="system", content="You write SPARQL. Prefix: PREFIX lib: <http://example.org/library/>"),
    ChatMessage(role="user", content="Write a SPARQL query that selects ?b and ?w where ?b lib:writtenBy ?w and ?b lib:novelTitle ?t. Reply with the query only."),
]


@pytest.fixture(scope="module")
def schema():  # type: ignore[no-untyped-def]
    return GraphSchemaReader(store=OxigraphStore(path=str(GRAPH))).run(question="Who wrote which book?")


def test_model_follows_the_bait_without_the_constraint(float32_llm: LocalLLM, schema) -> None:  # type: ignore[no-untyped-def]
    text = float32_llm.generate(BAIT, max_new_tokens=48).text
    constraint = TermConstraint.for_schema(schema.graph_schema)
    assert constraint is not None
    assert not constraint.accepts(text), text  # the control: unconstrained, it writes a name the graph lacks


@pytest.mark.parametrize("beams", [1, 3])
def test_constrained_output_names_only_schema_terms(float32_llm: LocalLLM, schema, beams: int) -> None:  # type: ignore[no-untyped-def]
    constraint = TermConstraint.for_schema(schema.graph_schema)
    gen = float32_llm.generate(BAIT, max_new_tokens=48, num_return_sequences=beams, constraint=constraint)
    assert len(gen.texts) == beams
    for text in gen.texts:
        assert "lib:" in text  # it still names the schema
        assert constraint.accepts(text), text
    if beams == 1:
        assert gen.stats.forced_tokens > 0  # the model wanted lib:writtenBy: the constraint overruled it
    # scores are the model's own log-probabilities (forced tokens keep their low ones): finite, below 0
    assert all(-50 < s < 0 for s in gen.scores)


def test_query_generator_constrains_by_default(float32_llm: LocalLLM, schema) -> None:  # type: ignore[no-untyped-def]
    gen = SparqlQueryGenerator(llm=float32_llm, num_candidates=1, repair_rounds=0, max_new_tokens=64)
    out = gen.run(question="Which books did Ada Quill write? Use lib:writtenBy.", graph_schema=schema.graph_schema, schema_text=schema.text)
    assert unknown_sparql_terms(out.query, schema.graph_schema) == [], out.query


def test_a_cypher_query_that_goes_on_after_its_final_return_is_ended_and_counted(float32_llm: LocalLLM) -> None:
    """Examples that chain queries teach the model to write a MATCH after its RETURN; under the Cypher
    constraint the sequence ends there (what follows would be cut), and the call reports it."""
    from ragkit.stores.cypher import KgliteStore

    cypher_schema = GraphSchemaReader(store=KgliteStore(path=str(GRAPH))).run(question="Which publishers are there?").graph_schema
    constraint = TermConstraint.for_schema(cypher_schema)
    chained = "MATCH (b:Book) RETURN b.title MATCH (a:Author) RETURN a.name MATCH (p:Publisher) RETURN p.name"
    messages = [ChatMessage(role="system", content="You write Cypher. Reply with the query only.")]
    for q in ["List the books.", "List the authors."]:
        messages += [ChatMessage(role="user", content=q), ChatMessage(role="assistant", content=chained)]
    messages.append(ChatMessage(role="user", content="List the publishers."))
    free = float32_llm.generate(messages, max_new_tokens=60)
    assert free.text.count("RETURN") > 1 and free.stats.ended_rows == 0  # the control: it goes on
    ended = float32_llm.generate(messages, max_new_tokens=60, constraint=constraint)
    assert ended.stats.ended_rows == 1
    assert ended.text.count("RETURN") == 1 and ended.stats.tokens_out < free.stats.tokens_out


def test_grounded_literals_are_pieces_of_the_question_or_its_linked_values(float32_llm: LocalLLM, schema) -> None:  # type: ignore[no-untyped-def]
    """The prompt dictates a title the question never mentions: grounded, the model cannot spell it."""
    import re

    messages = [
        ChatMessage(role="system", content="You write SPARQL. Prefix: PREFIX lib: <http://example.org/library/>"),
        ChatMessage(role="user", content="Write a SPARQL query that selects ?b where ?b lib:title 'The Hollow Crown'. Reply with the query only."),
    ]
    sources = ["Which books did Ada Quill write?", "Ada Quill"]
    constraint = TermConstraint.for_schema(schema.graph_schema)
    assert constraint is not None
    literals = re.compile(r"'((?:[^'\\\n]|\\.)*)'")
    free = float32_llm.generate(messages, max_new_tokens=48, constraint=constraint).text
    assert any("Hollow Crown" in w for w in literals.findall(free)), free  # the control: it spells what the prompt says
    grounded = float32_llm.generate(messages, max_new_tokens=48, constraint=constraint.grounded_in(sources))
    # it writes a piece of the question, or no literal at all; the constraint had to overrule the model for that
    assert all(any(w.lower() in s.lower() for s in sources) for w in literals.findall(grounded.text)), grounded.text
    assert grounded.stats.forced_tokens > 0

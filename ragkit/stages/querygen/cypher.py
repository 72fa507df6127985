"""Text-to-Cypher with a local model, the schema, linked entities and retrieved few-shot examples.

Replies are cleaned (code fences and trailing prose removed) and checked by the read-only guard and
against the schema: its node labels, relationship types and property keys, and each relationship
pattern's direction and end labels. See :mod:`ragkit.stages.querygen.base`
for how candidates are made.

Example:
    >>> from ragkit.stages.querygen.cypher import CypherQueryGenerator
    >>> from ragkit.stores.base import GraphSchema, SchemaClass
    >>> from ragkit.testing import ScriptedLLM
    >>> schema = GraphSchema(language="cypher", classes=(SchemaClass(name="Person"),))
    >>> gen = CypherQueryGenerator(llm=ScriptedLLM(responses=["```cypher\\nMATCH (p:Persn) RETURN p.name\\n```"]))
    >>> gen.run(question="Who?", graph_schema=schema, schema_text="", examples=[]).generated.candidates[0].error
    'unknown label :Persn (did you mean :Person?); use only the terms of the schema'
"""

from __future__ import annotations

from ragkit.core.component import register_stage
from ragkit.errors import QueryError
from ragkit.query.cypher import ends_in_return, extract_cypher, final_clause, misdirected_relationships, misplaced_properties, unknown_cypher_terms
from ragkit.query.guard import check_read_only
from ragkit.stages.querygen.base import QueryGenerator, unknown_terms_message
from ragkit.stores.base import GraphSchema

__all__ = ["CypherQueryGenerator", "DEFAULT_CYPHER_INSTRUCTIONS"]

DEFAULT_CYPHER_INSTRUCTIONS = (
    "You write one Cypher query that answers the user's question over the property graph described below. "
    "Use only the node labels, relationship types and properties listed, in the directions shown. "
    "Match names exactly as written in the question. Reply with the Cypher query only."
)


@register_stage("cypher_generator")
class CypherQueryGenerator(QueryGenerator):
    """Writes Cypher for a question with a local LLM, from the schema, linked values and examples.

    Args:
        llm: the language model resource.
        store: optional graph store: candidates are executed (read-only, 50 rows) and one that
            returns nothing counts as a failure, so more candidates or a repair follow.
        num_candidates: beams tried when the greedy query fails (with ``selection: vote``, always).
        max_new_tokens: token limit for one query.
        repair_rounds: correction rounds when every candidate fails.
        instructions: the system instructions placed before the schema.
        constrained: decode under the schema's names (a logits processor over the model's
            tokenizer), so no candidate names a term the graph lacks; ``false`` for the ablation.
        selection: ``first`` (the default): the first good candidate, made lazily; ``vote``: always
            make the beams, and prefer the rows most good candidates agree on (needs a store);
            ``review``: always make the beams, and prefer the good candidate whose likelihood plus the
            reviewer's likelihood of the question given it is highest (a model that can score).
        ground_literals: with ``constrained``, a quoted string literal may only spell a piece of the
            question or of a graph value the entity linker found in it (letter case aside); ``false``
            leaves literals to the model.
        reviewer: with ``selection: review``, the model that scores the question given each candidate
            (by default ``llm``; a plain model when ``llm`` carries a query-writing adapter).
    """

    language = "cypher"
    default_instructions = DEFAULT_CYPHER_INSTRUCTIONS

    def postprocess(self, text: str, schema: GraphSchema) -> str:
        return extract_cypher(text)

    def check(self, query: str, schema: GraphSchema) -> str | None:
        try:
            check_read_only(query, "cypher")
        except QueryError as e:
            return str(e)
        if not ends_in_return(query):
            last = final_clause(query)
            ends = f"it ends in {last}" if last and last != "RETURN" else "it returns nothing"
            return f"the query is unfinished: {ends}; a read query ends with RETURN and what the question asks for"
        bad = unknown_cypher_terms(query, schema)
        if bad:
            return unknown_terms_message(
                bad,
                {
                    "label": [f":{c.name}" for c in schema.classes],
                    "relationship": [f":{p.name}" for p in schema.properties if p.kind == "relationship"],
                    "property": [f".{p.name}" for p in schema.properties if p.kind != "relationship"],
                },
            )
        wrong = misdirected_relationships(query, schema)
        if wrong:
            return "relationship pattern not in the schema: " + "; ".join(wrong) + "; follow the directions and end labels the schema shows"
        misplaced = misplaced_properties(query, schema)
        if misplaced:
            return "property read from a label that does not have it: " + "; ".join(misplaced) + "; read each key from a variable whose label has it"
        return None

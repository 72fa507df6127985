"""Text-to-SPARQL with a local model, the schema, linked entities and retrieved few-shot examples.

Replies are cleaned (code fences and trailing prose removed, braces balanced, hyphens in variable
names made underscores, a triple pattern
without its object completed, a dangling GROUP/ORDER BY dropped, missing PREFIX lines added from the
schema) and checked by the read-only guard, the SPARQL parser and a check that every
projected variable is bound. See :mod:`ragkit.stages.querygen.base` for how candidates are made.

Example:
    >>> from ragkit.stages.querygen.sparql import SparqlQueryGenerator
    >>> from ragkit.testing import ScriptedLLM, TinyGraphStore
    >>> from ragkit.stages.schema.reader import GraphSchemaReader
    >>> schema = GraphSchemaReader(store=TinyGraphStore()).run(question="Where does Ann live?")
    >>> llm = ScriptedLLM(responses=["SELECT ?c WHERE { tiny:ann tiny:livesIn ?c }"])
    >>> out = SparqlQueryGenerator(llm=llm).run(question="Where does Ann live?", graph_schema=schema.graph_schema, schema_text=schema.text, examples=[])
    >>> out.query.splitlines()[0]
    'PREFIX tiny: <http://example.org/tiny/>'
"""

from __future__ import annotations

from ragkit.core.component import register_stage
from ragkit.errors import QueryError
from ragkit.query.guard import check_read_only
from ragkit.query.sparql import (
    add_missing_prefixes,
    complete_triples,
    extract_query,
    fix_variable_names,
    mistyped_variables,
    parse_error,
    unbound_variables,
    unknown_sparql_terms,
)
from ragkit.stages.querygen.base import QueryGenerator, unknown_terms_message
from ragkit.stores.base import GraphSchema

__all__ = ["SparqlQueryGenerator", "DEFAULT_SPARQL_INSTRUCTIONS"]

DEFAULT_SPARQL_INSTRUCTIONS = (
    "You write one SPARQL query that answers the user's question over the RDF graph described below. "
    "Use only the prefixes, classes and properties listed. Match names with rdfs:label exactly as written "
    "in the question. Reply with the SPARQL query only."
)


@register_stage("sparql_generator")
class SparqlQueryGenerator(QueryGenerator):
    """Writes SPARQL for a question with a local LLM, from the schema, linked values and examples.

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

    language = "sparql"
    default_instructions = DEFAULT_SPARQL_INSTRUCTIONS

    def postprocess(self, text: str, schema: GraphSchema) -> str:
        return add_missing_prefixes(complete_triples(fix_variable_names(extract_query(text))), schema.prefixes)

    def check(self, query: str, schema: GraphSchema) -> str | None:
        """Refused by the guard, unparseable, naming terms the schema lacks, or projecting unbound
        variables: the reason (with "did you mean" hints a repair round can use); else None."""
        try:
            check_read_only(query, "sparql")
        except QueryError as e:
            return str(e)
        err = parse_error(query)
        if err is not None:
            return f"SPARQL syntax error: {err}"
        bad = unknown_sparql_terms(query, schema)
        if bad:
            return unknown_terms_message(
                bad,
                {
                    "class": [schema.compact(c.name) for c in schema.classes],
                    "property": [schema.compact(p.name) for p in schema.properties],
                },
            )
        unbound = unbound_variables(query)
        if unbound:
            names = ", ".join(f"?{v}" for v in unbound)
            return f"{names} is selected but never bound in the WHERE block (add a triple pattern that binds it)"
        mistyped = mistyped_variables(query, schema)
        if mistyped:
            return "; ".join(mistyped) + " (give each variable the class its properties belong to)"
        return None


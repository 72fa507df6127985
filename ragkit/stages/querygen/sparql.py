"""Text-to-SPARQL with a local model, the schema and retrieved few-shot examples.

The model sees the (pruned) schema, then each retrieved example as a question/query exchange, then
the user's question. Its replies are cleaned (code fences and trailing prose removed, braces
balanced, missing PREFIX lines added from the schema), checked by the read-only guard and the
SPARQL parser, and returned best first.

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

import logging

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Stage
from ragkit.errors import InputError, QueryError
from ragkit.models.base import LLM, ChatMessage
from ragkit.query.guard import check_read_only
from ragkit.query.sparql import add_missing_prefixes, extract_query, parse_error, unbound_variables
from ragkit.stages.linkers.entity import LinkedEntities, query_values
from ragkit.stages.querygen.base import GeneratedQuery, QueryCandidate, QueryGenOutput
from ragkit.stores.base import GraphSchema
from ragkit.stores.examples import QueryExample

logger = logging.getLogger(__name__)

__all__ = ["SparqlQueryGenerator", "DEFAULT_SPARQL_INSTRUCTIONS"]

DEFAULT_SPARQL_INSTRUCTIONS = (
    "You write one SPARQL query that answers the user's question over the RDF graph described below. "
    "Use only the prefixes, classes and properties listed. Match names with rdfs:label exactly as written "
    "in the question. Reply with the SPARQL query only."
)


@register_stage("sparql_generator")
class SparqlQueryGenerator(Stage):
    """Writes SPARQL for a question with a local LLM, from the schema and few-shot examples.

    Args:
        llm: the language model resource.
        num_candidates: candidate queries to produce (beam search when more than one); the graph
            retriever runs them in order and keeps the best result.
        max_new_tokens: token limit for one query.
        repair_rounds: when no candidate is valid, show the model its query with the error and ask
            again, at most this many times.
        instructions: the system instructions placed before the schema.
    """

    language = "sparql"

    def __init__(
        self,
        llm: LLM,
        num_candidates: int = 3,
        max_new_tokens: int = 160,
        repair_rounds: int = 1,
        instructions: str = DEFAULT_SPARQL_INSTRUCTIONS,
    ) -> None:
        if num_candidates < 1:
            raise ValueError("num_candidates must be at least 1")
        if repair_rounds < 0:
            raise ValueError("repair_rounds must be 0 or more")
        self.repair_rounds = repair_rounds
        self.llm = llm
        self.num_candidates = num_candidates
        self.max_new_tokens = max_new_tokens
        self.instructions = instructions

    @staticmethod
    def _ask(question: str, values: list[str]) -> str:
        if not values:
            return question
        return question + "\nValues: " + ", ".join(f'"{v}"' for v in values)

    def messages(self, question: str, schema_text: str, examples: list[QueryExample], entities: LinkedEntities | None = None) -> list[ChatMessage]:
        """The chat prompt: instructions and schema, each example as an exchange, then the question.

        Each question is followed by a ``Values:`` line: for an example, the string literals its
        query uses; for the user's question, the graph values the entity linker found in it.
        """
        msgs = [ChatMessage(role="system", content=f"{self.instructions}\n\n{schema_text}")]
        for ex in reversed(examples):  # nearest example last, closest to the question
            msgs.append(ChatMessage(role="user", content=self._ask(ex.question, query_values(ex.query))))
            msgs.append(ChatMessage(role="assistant", content=ex.query))
        msgs.append(ChatMessage(role="user", content=self._ask(question, entities.values if entities else [])))
        return msgs

    def run(
        self,
        question: str,
        graph_schema: GraphSchema,
        schema_text: str,
        examples: list[QueryExample],
        entities: LinkedEntities | None = None,
    ) -> QueryGenOutput:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something)")
        messages = self.messages(question, schema_text, examples, entities)
        candidates: list[QueryCandidate] = []
        seen: set[str] = set()
        self._collect(messages, self.num_candidates, graph_schema, candidates, seen)
        repairs = 0
        while repairs < self.repair_rounds and not any(c.error is None for c in candidates):
            # Show the model its own best attempt and the typed error; a bounded loop inside the stage.
            worst = candidates[0]
            messages = [
                *messages,
                ChatMessage(role="assistant", content=worst.query or "(no query)"),
                ChatMessage(role="user", content=f"That query is wrong: {worst.error}. Write the corrected SPARQL query."),
            ]
            self._collect(messages, 1, graph_schema, candidates, seen)
            repairs += 1
        if not candidates:
            candidates.append(QueryCandidate(query="", score=0.0, error="the model wrote no query"))
        # valid first, then by model likelihood; sorting is stable so beam order breaks ties
        candidates.sort(key=lambda c: (c.error is not None, -c.score))
        rec = current_recorder()
        if rec is not None:
            rec.note("candidates", len(candidates))
            rec.note("valid_candidates", sum(c.error is None for c in candidates))
            rec.note("repairs", repairs)
        generated = GeneratedQuery(language=self.language, query=candidates[0].query, candidates=candidates)
        return QueryGenOutput(generated=generated, query=generated.query)

    def _collect(self, messages: list[ChatMessage], n: int, schema: GraphSchema, out: list[QueryCandidate], seen: set[str]) -> None:
        gen = self.llm.generate(messages, max_new_tokens=self.max_new_tokens, num_return_sequences=n)
        scores = list(gen.scores) + [0.0] * (len(gen.texts) - len(gen.scores))
        for text, score in zip(gen.texts, scores):
            query = add_missing_prefixes(extract_query(text), schema.prefixes)
            key = " ".join(query.split())
            if not key or key in seen:
                continue
            seen.add(key)
            out.append(QueryCandidate(query=query, score=score, error=self._check(query)))

    @staticmethod
    def _check(query: str) -> str | None:
        """Why ``query`` cannot be used, or None: refused by the guard, unparseable, or projecting unbound variables."""
        try:
            check_read_only(query, "sparql")
        except QueryError as e:
            return str(e)
        err = parse_error(query)
        if err is not None:
            return f"SPARQL syntax error: {err}"
        unbound = unbound_variables(query)
        if unbound:
            names = ", ".join(f"?{v}" for v in unbound)
            return f"{names} is selected but never bound in the WHERE block (add a triple pattern that binds it)"
        return None

"""Query generation shared by SPARQL and Cypher: prompt, lazy execution-guided candidates, repair.

The model sees the (pruned) schema, each retrieved example as a question/query exchange, then the
user's question. Every question is followed by a ``Values:`` line: for an example, the string
literals its query uses; for the user's question, the graph values the entity linker found in it.
Small models otherwise copy the example's entity instead of the question's.

Candidates are made lazily, cheapest first:

1. one greedy query; if it is valid (guard, parser, schema checks) and, when a ``store`` is given,
   returns rows, and the decoding constraint did not have to overrule the model on it, it is used
   and nothing more is generated;
2. otherwise ``num_candidates`` beams, ranked with it by validity, rows and the model's likelihood;
3. otherwise up to ``repair_rounds`` rounds that show the model its best attempt with the typed
   error (or "returned no rows") and ask for a correction: a bounded loop inside the stage.

With ``selection="vote"`` (execution-guided self-consistency) the greedy query and the beams are
always made, and the good candidates are ranked by how many other candidates returned the same rows
(column and row order ignored), then by likelihood: an answer several distinct queries agree on is
preferred to a likelier query that stands alone. It needs a ``store``, and costs the beams on every
question.

With ``selection="review"`` (execution-guided selection with a reviewer) the greedy query and the
beams are always made too, and the good candidates are ranked by the model's likelihood of the query
plus a reviewer's likelihood of the question given the query: each candidate is shown to the
``reviewer`` model (by default the generator's own) with "What question does it answer?", and scored
by the mean log-probability per token of the user's question as its reply (Coder-Reviewer reranking,
Zhang et al. 2022). A query that returns rows but answers another question (other columns, a dropped
condition, another relationship) explains the question less well. It needs a model that can score
(:meth:`~ragkit.models.base.LLM.score`: a local one).

With ``constrained`` (the default) every one of them is decoded under a
:class:`~ragkit.query.constrain.TermConstraint`: where the query names a class, property, label,
relationship type or property key, the model can only spell one the graph's schema has. With
``ground_literals`` (the default, under ``constrained``) a quoted string literal can only spell a piece
of the question or of a graph value linked in it.

Given the ``previous`` input (another generator's output), a generator is a *fallback*: when one of
the previous candidates is good it is passed on and nothing is generated; otherwise this generator's
candidates are made as above and ranked together with the previous ones (with ``selection="vote"``,
this generator always generates, and the previous candidates vote with its own). Fine-tuned and few-shot
prompting get different questions right, so a pipeline can try the adapter's query first and fall
back to retrieved examples (``pipelines/kgqa_sparql_finetuned_fallback.yaml``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import ConfigError, InputError, QueryError, StoreError, StoreUnavailableError
from ragkit.models.base import LLM, ChatMessage
from ragkit.query.constrain import TermConstraint
from ragkit.stages.linkers.entity import LinkedEntities, query_values
from ragkit.stores.base import GraphSchema, GraphStore
from ragkit.stores.examples import QueryExample

logger = logging.getLogger(__name__)

__all__ = ["QueryCandidate", "GeneratedQuery", "QueryGenOutput", "QueryGenerator", "SELECTIONS", "rows_key", "unknown_terms_message"]

SELECTIONS = ("first", "vote", "review")
"""How a generator picks its query: the first good candidate (made lazily), the answer most candidates
agree on, or the candidate a reviewer finds explains the question best (with the query's likelihood)."""

REVIEW_PROMPT = "Here is a {language} query:\n{query}\nWhat question does it answer?"
"""What the reviewer is asked about each candidate; the user's question is scored as its reply."""
_LANGUAGE_NAMES = {"sparql": "SPARQL", "cypher": "Cypher"}

_EXECUTE_ROWS = 50
"""Rows a generator fetches when it executes a candidate: enough to compare two candidates' answers."""


def rows_key(rows: Any) -> tuple[tuple[str, ...], ...]:
    """The rows as a comparable value: row order and column order ignored, duplicates kept."""
    return tuple(sorted(tuple(sorted(str(x) for x in r)) for r in rows))


def _digest(rows: Any) -> str:
    return hashlib.sha256(repr(rows_key(rows)).encode()).hexdigest()[:16]


class QueryCandidate(BaseModel):
    """One candidate query. ``error`` says why it cannot run (parse error, refused, unknown terms)."""

    model_config = ConfigDict(frozen=True)
    query: str
    score: float = 0.0
    """The model's mean log-probability per token (higher is more confident)."""
    error: str | None = None
    rows: int | None = None
    """Rows it returned when the generator executed it (None when not executed; at most 50 are fetched)."""
    answer: str | None = None
    """A digest of those rows (row and column order ignored), to compare candidates' answers."""
    votes: int | None = None
    """With ``selection="vote"``: how many good candidates returned the same rows, itself included."""
    origin: str = "greedy"
    """How it was made: ``greedy``, ``beam`` or ``repair``."""
    review: float | None = None
    """With ``selection="review"``: the reviewer's mean log-probability per token of the question given
    this query (good candidates only)."""

    @property
    def good(self) -> bool:
        return self.error is None and (self.rows is None or self.rows > 0)


class GeneratedQuery(BaseModel):
    """Candidates best first; ``query`` is the first one (valid and non-empty ones come first)."""

    model_config = ConfigDict(frozen=True)
    language: str
    query: str
    candidates: list[QueryCandidate]

    @property
    def valid(self) -> bool:
        return any(c.error is None for c in self.candidates)


class QueryGenOutput(Output):
    """What a query generator stage returns: the candidates, and the best query as text."""

    generated: GeneratedQuery
    query: str


class QueryGenerator(Stage):
    """Base of the text-to-query stages; subclasses set the language, instructions and checks."""

    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals

    language: ClassVar[str] = ""
    default_instructions: ClassVar[str] = ""

    def __init__(
        self,
        llm: LLM,
        store: GraphStore | None = None,
        num_candidates: int = 3,
        max_new_tokens: int = 160,
        repair_rounds: int = 1,
        instructions: str | None = None,
        constrained: bool = True,
        selection: str = "first",
        ground_literals: bool = True,
        reviewer: LLM | None = None,
    ) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, not {selection!r}")
        if selection == "vote" and store is None:
            raise ValueError("selection 'vote' compares the candidates' rows: give the generator a store")
        if num_candidates < 1:
            raise ValueError("num_candidates must be at least 1")
        if repair_rounds < 0:
            raise ValueError("repair_rounds must be 0 or more")
        if max_new_tokens < 8:
            raise ValueError("max_new_tokens must be at least 8")
        self.llm = llm
        self.store = store
        self.num_candidates = num_candidates
        self.max_new_tokens = max_new_tokens
        self.repair_rounds = repair_rounds
        self.instructions = instructions or self.default_instructions
        self.constrained = constrained
        self.selection = selection
        self.ground_literals = ground_literals
        self.reviewer = reviewer

    # -- language-specific --------------------------------------------------------------------
    def postprocess(self, text: str, schema: GraphSchema) -> str:
        """Turn the model's reply into a query (extract it, complete it)."""
        raise NotImplementedError

    def check(self, query: str, schema: GraphSchema) -> str | None:
        """Why ``query`` cannot be used, or None."""
        raise NotImplementedError

    # -- prompt ---------------------------------------------------------------------------------
    @staticmethod
    def _ask(question: str, values: list[str]) -> str:
        if not values:
            return question
        return question + "\nValues: " + ", ".join(f'"{v}"' for v in values)

    def messages(self, question: str, schema_text: str, examples: list[QueryExample], entities: LinkedEntities | None = None) -> list[ChatMessage]:
        """The chat prompt: instructions and schema, each example as an exchange, then the question."""
        msgs = [ChatMessage(role="system", content=f"{self.instructions}\n\n{schema_text}")]
        for ex in reversed(examples):  # nearest example last, closest to the question
            msgs.append(ChatMessage(role="user", content=self._ask(ex.question, query_values(ex.query))))
            msgs.append(ChatMessage(role="assistant", content=ex.query))
        msgs.append(ChatMessage(role="user", content=self._ask(question, entities.values if entities else [])))
        return msgs

    # -- generation -----------------------------------------------------------------------------
    def run(
        self,
        question: str,
        graph_schema: GraphSchema,
        schema_text: str,
        examples: list[QueryExample] | None = None,
        entities: LinkedEntities | None = None,
        previous: GeneratedQuery | None = None,
    ) -> QueryGenOutput:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something)")
        candidates = self._previous_candidates(previous)
        inherited = {id(c) for c in candidates}
        rec = current_recorder()
        vote = self.selection == "vote"
        every = self.selection != "first"  # vote and review weigh every candidate: the beams are always made
        if previous is not None:
            passed_on = not every and bool(candidates) and candidates[0].good  # ranked: a good one comes first
            if rec is not None:
                rec.note("fallback", not passed_on)
            if passed_on:
                generated = GeneratedQuery(language=self.language, query=candidates[0].query, candidates=candidates)
                return QueryGenOutput(generated=generated, query=generated.query)
        messages = self.messages(question, schema_text, examples or [], entities)
        self._note_prompt(messages, schema_text)
        constraint = TermConstraint.for_schema(graph_schema) if self.constrained else None
        if constraint is not None and self.ground_literals:
            constraint = constraint.grounded_in([question, *(entities.values if entities else [])])
        seen = {" ".join(c.query.split()) for c in candidates}
        forced, ended = self._collect(messages, 1, graph_schema, candidates, seen, "greedy", constraint)
        # Beams when the greedy query fails, and also when the constraint had to overrule the
        # model on it: a query forced into the schema runs, but the model was unsure of it. A vote
        # and a review always need them.
        if (every or forced or not any(c.good for c in candidates)) and self.num_candidates > 1:
            ended += self._collect(messages, self.num_candidates, graph_schema, candidates, seen, "beam", constraint)[1]
        repairs = 0
        while repairs < self.repair_rounds and not any(c.good for c in candidates):
            best = self._rank(candidates)[0] if candidates else QueryCandidate(query="", error="no query")
            problem = best.error or "it returned no rows; check the property directions and the values"
            messages = [
                *messages,
                ChatMessage(role="assistant", content=best.query or "(no query)"),
                ChatMessage(role="user", content=f"That query is wrong: {problem}. Write the corrected {self.language.upper()} query."),
            ]
            ended += self._collect(messages, 1, graph_schema, candidates, seen, "repair", constraint)[1]
            repairs += 1
        if not candidates:
            candidates.append(QueryCandidate(query="", score=0.0, error="the model wrote no query"))
        if self.selection == "review":
            ranked = self._review(question, candidates)
        else:
            ranked = self._vote(candidates) if vote else self._rank(candidates)
        if rec is not None:
            if vote:
                rec.note("votes", ranked[0].votes or 0)
            if self.selection == "review":
                rec.note("reviewed", sum(c.review is not None for c in ranked))
            if previous is not None:
                rec.note("fallback_chosen", id(ranked[0]) not in inherited)
            rec.note("candidates", len(candidates))
            rec.note("valid", sum(c.error is None for c in candidates))
            rec.note("repairs", repairs)
            rec.note("constrained", constraint is not None and self.llm.constrains_decoding)
            rec.note("forced_tokens", forced)
            rec.note("ended_early", ended)
        generated = GeneratedQuery(language=self.language, query=ranked[0].query, candidates=ranked)
        return QueryGenOutput(generated=generated, query=generated.query)

    def _previous_candidates(self, previous: GeneratedQuery | None) -> list[QueryCandidate]:
        """The candidates of the generator this one falls back from, ranked; a valid one that
        generator did not execute is executed here when this generator has a store."""
        if previous is None:
            return []
        if previous.language != self.language:
            raise ConfigError(f"the {self.language} generator's 'previous' input is a {previous.language} query: connect a {self.language} generator to it")
        out = []
        for c in previous.candidates:
            unread = c.rows is None or (self.selection == "vote" and c.rows and c.answer is None)  # a vote needs its rows
            if c.error is None and unread and c.query and self.store is not None:
                rows, answer, error = self._execute(c.query)
                c = c.model_copy(update={"rows": rows, "answer": answer, "error": error})
            out.append(c)
        return self._rank(out)

    def _execute(self, query: str) -> tuple[int | None, str | None, str | None]:
        """Rows the query returns (at most 50) and their digest, or None, None and why it failed."""
        assert self.store is not None
        try:
            rows = self.store.query(query, limit=_EXECUTE_ROWS).rows
        except StoreUnavailableError:
            raise  # the store is down, not the query wrong: repairing it would not help
        except (QueryError, StoreError) as e:
            return None, None, f"{type(e).__name__}: {e}"
        return len(rows), (_digest(rows) if rows else None), None

    def _note_prompt(self, messages: list[ChatMessage], schema_text: str) -> None:
        """Record what the prompt is made of, so reports can show the tokens spent on schema and
        examples beside the question's (the hidden cost of a long application prompt)."""
        rec = current_recorder()
        if rec is None:
            return
        count = self.llm.count_tokens
        rec.note("prompt_tokens", count(self.llm.render(messages)))
        rec.note("prompt_instructions_tokens", count(self.instructions))
        rec.note("prompt_schema_tokens", count(schema_text))
        rec.note("prompt_examples_tokens", sum(count(m.content) for m in messages[1:-1]))
        rec.note("prompt_question_tokens", count(messages[-1].content))

    @staticmethod
    def _rank(candidates: list[QueryCandidate]) -> list[QueryCandidate]:
        # good (valid and non-empty) first, then valid, then by likelihood; stable for ties
        return sorted(candidates, key=lambda c: (not c.good, c.error is not None, -c.score))

    def _review(self, question: str, candidates: list[QueryCandidate]) -> list[QueryCandidate]:
        """Good candidates first, by the query's likelihood plus the reviewer's likelihood of the
        question given the query (both mean log-probabilities per token); each gets its ``review``."""
        good = [c for c in candidates if c.good]
        if len(good) < 2:  # nothing to choose between
            return self._rank(candidates)
        language = _LANGUAGE_NAMES.get(self.language, self.language)
        prompts = [[ChatMessage(role="user", content=REVIEW_PROMPT.format(language=language, query=c.query))] for c in good]
        reviewer = self.reviewer or self.llm
        try:
            reviews = dict(zip(map(id, good), reviewer.score(prompts, question)))
        except NotImplementedError:
            raise ConfigError(f"selection 'review' needs a reviewer model that can score text; {type(reviewer).__name__} cannot (use a local_llm)") from None
        scored = [c.model_copy(update={"review": reviews[id(c)]}) if id(c) in reviews else c for c in candidates]
        return sorted(scored, key=lambda c: (not c.good, c.error is not None, -(c.score + (c.review or 0.0))))

    @staticmethod
    def _vote(candidates: list[QueryCandidate]) -> list[QueryCandidate]:
        """Good candidates first, those whose rows most good candidates share before the others,
        then by likelihood; each good candidate gets its ``votes``."""
        counts = Counter(c.answer for c in candidates if c.good and c.answer is not None)
        voted = [c.model_copy(update={"votes": counts[c.answer] if c.good and c.answer is not None else 0}) for c in candidates]
        return sorted(voted, key=lambda c: (not c.good, c.error is not None, -(c.votes or 0), -c.score))

    def _collect(
        self,
        messages: list[ChatMessage],
        n: int,
        schema: GraphSchema,
        out: list[QueryCandidate],
        seen: set[str],
        origin: str,
        constraint: TermConstraint | None = None,
    ) -> tuple[int, int]:
        """Generate ``n`` candidates, check and (with a store) execute them into ``out``; returns
        the steps where the constraint overruled the model's first choice (greedy only: see
        ``forced_tokens``), and the sequences it ended because the query was over."""
        gen = self.llm.generate(messages, max_new_tokens=self.max_new_tokens, num_return_sequences=n, constraint=constraint)
        scores = list(gen.scores) + [0.0] * (len(gen.texts) - len(gen.scores))
        for text, score in zip(gen.texts, scores):
            query = self.postprocess(text, schema)
            key = " ".join(query.split())
            if not key or key in seen:
                continue
            seen.add(key)
            error = self.check(query, schema)
            rows = answer = None
            if error is None and self.store is not None:
                rows, answer, error = self._execute(query)
            out.append(QueryCandidate(query=query, score=score, error=error, rows=rows, answer=answer, origin=origin))
        return gen.stats.forced_tokens, gen.stats.ended_rows


def unknown_terms_message(bad: list[str], known: dict[str, list[str]]) -> str:
    """One line for a repair prompt: each unknown ``"<kind> <term>"`` with the closest known terms
    of that kind (``unknown property :x (did you mean :y?)``)."""
    import difflib

    parts = []
    for item in bad:
        kind, _, term = item.partition(" ")
        near = difflib.get_close_matches(term, known.get(kind, []), n=3, cutoff=0.5)
        parts.append(f"unknown {item}" + (f" (did you mean {' or '.join(near)}?)" if near else ""))
    return "; ".join(parts) + "; use only the terms of the schema"

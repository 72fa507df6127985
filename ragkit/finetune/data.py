"""Training data for query-writing adapters: pairs, schemas, inference-identical prompts, loss masks, folds.

A training sequence is the prompt :meth:`~ragkit.stages.querygen.base.QueryGenerator.messages`
builds at inference (instructions + rendered schema, retrieved examples as user/assistant turns,
the question with its ``Values:`` line), rendered with the model's chat template by
:meth:`LLM.render <ragkit.models.base.LLM.render>`, followed by the gold query as the assistant
turn. Only the assistant turn's tokens carry a loss.

Corpora without graph files (Spider4SPARQL's train split) get a schema built from the terms their
graph's training queries use; text2cypher rows get theirs from ``train_schemas.jsonl``.

Example:
    >>> from ragkit.finetune.data import TrainPair, sparql_schema_from_queries
    >>> q = 'PREFIX : <http://x/>\\nSELECT ?n WHERE { ?s a :singer . ?s :singer\\\\#name ?n }'
    >>> [c.name for c in sparql_schema_from_queries([q]).classes]
    ['http://x/singer']
"""

from __future__ import annotations

import ast
import json
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragkit.core.jsonl import json_lines
from ragkit.errors import InputError, QueryError
from ragkit.models.base import LLM, ChatMessage
from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty

logger = logging.getLogger(__name__)

__all__ = [
    "TrainPair",
    "Encoded",
    "Fold",
    "read_pairs",
    "sparql_schema_from_queries",
    "cypher_schema_from_queries",
    "cypher_schema_from_structured",
    "read_cypher_schemas",
    "SchemaBook",
    "PromptBuilder",
    "assistant_text",
    "encode",
    "equivalent",
    "make_folds",
    "build_sequences",
]

LANGUAGES = ("sparql", "cypher")
IGNORE = -100
"""Label of a token that carries no loss (the prompt, the padding)."""


@dataclass(frozen=True)
class TrainPair:
    """One question with its gold query; ``answers`` only when the file gives them (KGQA layout)."""

    id: str
    graph: str
    question: str
    query: str
    language: str
    answers: tuple[tuple[str, ...], ...] | None = None


def _fold(q: str) -> str:
    # the evaluation protocol's folding (ragkit.eval.kgqa._fold): whitespace and case
    return " ".join(q.lower().split())


def _answers_key(rows: Any) -> tuple[tuple[str, ...], ...]:
    from ragkit.eval.kgqa import _row_key

    return tuple(sorted(_row_key(r) for r in rows))


def read_pairs(path: str | Path, language: str) -> list[TrainPair]:
    """Read a JSON Lines file of question/query pairs.

    Accepted rows: ``{"question", "sparql"|"cypher"|"query"}`` with optional ``"id"``, ``"graph"``
    and ``"answers"`` (the KGQA layout of ``shared/data/README.md`` and example bank files).

    Raises:
        InputError: missing file, bad JSON, a row without a question or query, or rows of the other
            query language.
    """
    if language not in LANGUAGES:
        raise InputError(f"unknown query language {language!r} (use sparql or cypher)")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"training file {p} does not exist")
    other = "cypher" if language == "sparql" else "sparql"
    out: list[TrainPair] = []
    for n, row in json_lines(p):
        if not isinstance(row, dict):
            raise InputError(f"{p}:{n}: each line must be a JSON object with 'question' and '{language}'")
        query = row.get(language, row.get("query"))
        if query is None and other in row:
            raise InputError(f"{p}:{n}: the rows hold {other.upper()} queries but --language is {language} (pass --language {other})")
        if not isinstance(row.get("question"), str) or not isinstance(query, str) or not query.strip():
            raise InputError(f"{p}:{n}: each line needs a 'question' and a '{language}' (or 'query') string; see docs/finetuning.md")
        answers = row.get("answers")
        out.append(
            TrainPair(
                id=str(row.get("id", f"{p.name}:{n}")),
                graph=str(row.get("graph") or p.stem),
                question=row["question"],
                query=query,
                language=language,
                answers=_answers_key(answers) if isinstance(answers, list) else None,
            )
        )
    if not out:
        raise InputError(f"training file {p} has no pairs")
    return out


# ---- schemas --------------------------------------------------------------------------------
def _store_prefixes(classes: tuple[SchemaClass, ...], props: tuple[SchemaProperty, ...]) -> dict[str, str]:
    # The prefixes an RDF store would declare for these terms: the same code, so that a schema built
    # from queries is written in the prompt the way a store's schema of the same terms would be.
    from ragkit.stores.rdf import RdfStore

    return RdfStore._prefixes(None, classes, list(props))  # type: ignore[arg-type]


def sparql_schema_from_queries(queries: Sequence[str]) -> GraphSchema:
    """A SPARQL schema holding the classes (after ``a``) and properties the queries name.

    A property whose IRI extends a class IRI (``:singer\\#name`` after class ``:singer``) gets that
    class as its domain. Queries that do not parse are skipped.
    """
    from ragkit.query.sparql import typed_schema_terms

    classes: Counter[str] = Counter()
    props: Counter[str] = Counter()
    for q in queries:
        try:
            terms = typed_schema_terms(q)
        except QueryError:
            continue
        for kind, iri in terms:
            if iri.startswith(("http://www.w3.org/1999/02/22-rdf-syntax-ns#", "http://www.w3.org/2001/XMLSchema#")):
                continue
            (classes if kind == "class" else props)[iri] += 1
    cls = tuple(SchemaClass(name=c, count=n) for c, n in sorted(classes.items(), key=lambda x: (-x[1], x[0])))
    names = {c.name for c in cls}
    out_props = []
    for p, n in sorted(props.items(), key=lambda x: (-x[1], x[0])):
        cut = max(p.rfind("#"), p.rfind("/"))
        dom = p[:cut] if cut > 0 and p[:cut] in names else None
        out_props.append(SchemaProperty(name=p, kind="datatype", domains=(dom,) if dom else (), count=n))
    props_t = tuple(out_props)
    return GraphSchema(language="sparql", classes=cls, properties=props_t, prefixes=_store_prefixes(cls, props_t))


def cypher_schema_from_queries(queries: Sequence[str]) -> GraphSchema:
    """A Cypher schema holding the labels, relationship types and keys the queries name."""
    from ragkit.query.cypher import cypher_terms

    labels: Counter[str] = Counter()
    rels: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    for q in queries:
        for t in cypher_terms(q):
            kind, _, name = t.partition(" ")
            {"label": labels, "relationship": rels, "property": keys}[kind][name[1:]] += 1
    return GraphSchema(
        language="cypher",
        classes=tuple(SchemaClass(name=n, count=c) for n, c in labels.most_common()),
        properties=tuple(
            [SchemaProperty(name=n, kind="relationship", count=c) for n, c in rels.most_common()]
            + [SchemaProperty(name=n, kind="node_property", count=c) for n, c in keys.most_common()]
        ),
    )


def cypher_schema_from_structured(structured: dict[str, Any], samples: int = 3) -> GraphSchema:
    """The schema of a text2cypher ``structured_schema`` (node/relationship properties, relationships),
    in the shape a property-graph store's ``schema()`` returns."""
    node_props: dict[str, list[dict[str, Any]]] = structured.get("node_props") or {}
    rel_props: dict[str, list[dict[str, Any]]] = structured.get("rel_props") or {}
    rels: list[dict[str, Any]] = structured.get("relationships") or []
    labels = list(dict.fromkeys([*node_props, *(r["start"] for r in rels), *(r["end"] for r in rels)]))
    ends: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for r in rels:
        ends[r["type"]][0].add(r["start"])
        ends[r["type"]][1].add(r["end"])
    props = [SchemaProperty(name=t, kind="relationship", domains=tuple(sorted(s)), ranges=tuple(sorted(e))) for t, (s, e) in ends.items()]

    def keys(owner: str, rows: list[dict[str, Any]]) -> list[SchemaProperty]:
        return [
            SchemaProperty(
                name=str(r["property"]),
                kind="node_property",
                domains=(owner,),
                ranges=(str(r.get("type", "")),) if r.get("type") else (),
                samples=tuple(str(v) for v in (r.get("values") or [])[:samples]),
            )
            for r in rows
        ]

    for lab in labels:
        props += keys(lab, node_props.get(lab, []))
    for t, rows in rel_props.items():
        props += keys(t, rows)
    return GraphSchema(language="cypher", classes=tuple(SchemaClass(name=n) for n in labels), properties=tuple(props))


def read_cypher_schemas(path: str | Path) -> dict[str, GraphSchema]:
    """``{graph: schema}`` from a ``train_schemas.jsonl`` (``{"database", "structured_schema"}`` rows)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"schema file {p} does not exist")
    out = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            raw = row["structured_schema"]
            struct = raw if isinstance(raw, dict) else ast.literal_eval(raw)  # the file stores a Python repr
            out[str(row["database"])] = cypher_schema_from_structured(struct)
        except (json.JSONDecodeError, KeyError, ValueError, SyntaxError, TypeError) as e:
            raise InputError(f"{p}:{n}: not a schema row with 'database' and 'structured_schema' ({e})") from None
    return out


class SchemaBook:
    """The schema of each graph: given ones first, else built (once) from that graph's training queries."""

    def __init__(self, pairs: Sequence[TrainPair], language: str, given: dict[str, GraphSchema] | None = None) -> None:
        self.language = language
        self.given = dict(given or {})
        self._queries: dict[str, list[str]] = defaultdict(list)
        for p in pairs:
            self._queries[p.graph].append(p.query)
        self._built: dict[str, GraphSchema] = {}

    def __call__(self, graph: str) -> GraphSchema:
        if graph in self.given:
            return self.given[graph]
        if graph not in self._built:
            build = sparql_schema_from_queries if self.language == "sparql" else cypher_schema_from_queries
            self._built[graph] = build(self._queries.get(graph, []))
        return self._built[graph]


# ---- prompts --------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"the", "a", "an", "of", "in", "on", "by", "for", "and", "or", "to", "is", "are", "what", "which", "who", "how", "many", "all", "with", "that"}


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def forbidden_for(item: TrainPair) -> Callable[[TrainPair], bool]:
    """The protocol's rule for ``item``: an example is hidden when it is the item itself, has the same
    folded gold query, or (answers given) the same gold rows."""
    key = _fold(item.query)

    def hidden(ex: TrainPair) -> bool:
        return ex.id == item.id or _fold(ex.query) == key or (item.answers is not None and ex.answers == item.answers)

    return hidden


def nearest_examples(item: TrainPair, pool: Sequence[TrainPair], k: int) -> list[TrainPair]:
    """The ``k`` pairs of ``pool`` (same graph) whose questions share most words with ``item``'s,
    best first, without the ones the evaluation protocol would hide."""
    if k <= 0:
        return []
    hidden = forbidden_for(item)
    mine = _words(item.question)
    scored = []
    for ex in pool:
        if ex.graph != item.graph or hidden(ex):
            continue
        theirs = _words(ex.question)
        union = mine | theirs
        scored.append((len(mine & theirs) / len(union) if union else 0.0, ex.id, ex))
    scored.sort(key=lambda x: (-x[0], x[1]))
    out: list[TrainPair] = []
    seen: set[str] = set()
    for _s, _i, ex in scored:
        if _fold(ex.query) in seen:  # two copies of one query teach nothing more
            continue
        seen.add(_fold(ex.query))
        out.append(ex)
        if len(out) == k:
            break
    return out


class PromptBuilder:
    """Builds the inference prompt for a pair, with the query generator stage's own code.

    Args:
        llm: the model (its chat template renders the prompt; fakes render their own way).
        language: ``sparql`` or ``cypher``.
        schemas: the schema of a graph.
        schema_tokens: the schema reader's budget (the pipelines' ``max_tokens``), None for all.
        instructions: the generator's instructions, when the pipeline overrides them.
    """

    def __init__(
        self,
        llm: LLM,
        language: str,
        schemas: Callable[[str], GraphSchema],
        schema_tokens: int | None = 900,
        instructions: str | None = None,
    ) -> None:
        if language not in LANGUAGES:
            raise InputError(f"unknown query language {language!r} (use sparql or cypher)")
        from ragkit.stages.querygen.cypher import CypherQueryGenerator
        from ragkit.stages.querygen.sparql import SparqlQueryGenerator

        cls = SparqlQueryGenerator if language == "sparql" else CypherQueryGenerator
        self.generator = cls(llm=llm, instructions=instructions)
        self.llm = llm
        self.language = language
        self.schemas = schemas
        self.schema_tokens = schema_tokens
        self._checked: dict[tuple[str, str], str | None] = {}

    def check(self, pair: TrainPair) -> str | None:
        """What the query generator's own check says of ``pair``'s query on its graph's schema (None: it passes)."""
        key = (pair.graph, pair.query)
        if key not in self._checked:
            self._checked[key] = self.generator.check(pair.query, self.schemas(pair.graph))
        return self._checked[key]

    def schema_text(self, pair: TrainPair, examples: Sequence[TrainPair], budget: int | None) -> str:
        """What the schema reader stage writes: examples' prefixes adopted (SPARQL), pruned to the budget."""
        from ragkit.stages.schema.reader import adopt_prefixes, render_schema

        schema = self.schemas(pair.graph)
        if schema.language == "sparql" and examples:
            schema = schema.model_copy(update={"prefixes": adopt_prefixes(schema.prefixes, [e.query for e in examples])})
        return render_schema(schema, pair.question, max_tokens=budget)

    def messages(self, pair: TrainPair, examples: Sequence[TrainPair], budget: int | None = -1) -> list[ChatMessage]:
        """The generator's chat prompt for ``pair`` with these examples (best first)."""
        from ragkit.stages.linkers.entity import (
            EntityMention,
            LinkedEntities,
            query_values,
        )
        from ragkit.stores.examples import QueryExample

        budget = self.schema_tokens if budget == -1 else budget
        # The entity linker finds the graph values the question names; without a graph, the gold
        # query's string literals that the question spells out stand in for them.
        q = pair.question.lower()
        values = [v for v in query_values(pair.query) if v.lower() in q]
        entities = LinkedEntities(mentions=[EntityMention(span=v, value=v, property="") for v in values])
        exs = [QueryExample(question=e.question, query=e.query) for e in examples]
        return self.generator.messages(pair.question, self.schema_text(pair, examples, budget), exs, entities)


def target_query(query: str) -> str:
    """The gold query as the model should write it: spaces runs inside lines collapsed, ends stripped."""
    return "\n".join(" ".join(line.split()) for line in query.strip().splitlines() if line.strip())


def assistant_text(llm: LLM, messages: Sequence[ChatMessage], query: str) -> str:
    """The text that follows the rendered prompt when the assistant answers ``query``: with a chat
    template, the template's own assistant turn (``query<|im_end|>`` and what closes it); else the
    query and the tokenizer's end-of-sequence token."""
    tok = getattr(llm, "_tok", None)
    prompt = llm.render(messages)
    if tok is not None and getattr(tok, "chat_template", None):
        msgs = [{"role": m.role, "content": m.content} for m in messages] + [{"role": "assistant", "content": query}]
        full = tok.apply_chat_template(msgs, tokenize=False)
        if full.startswith(prompt) and query in full[len(prompt) :]:
            return full[len(prompt) :]
    eos = getattr(tok, "eos_token", None) or ""
    return query + eos


@dataclass
class Encoded:
    """One training sequence: token ids and labels (``IGNORE`` on the prompt)."""

    id: str
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    examples: int = 0


def encode(item_id: str, prompt: str, target: str, tokenize: Callable[[str], list[int]], examples: int = 0) -> Encoded:
    """Token ids of ``prompt + target`` with a loss on ``target`` only.

    The two are tokenized apart, as at inference: the prompt is tokenized whole and the model
    continues from its last token.
    """
    p = tokenize(prompt)
    t = tokenize(target)
    return Encoded(id=item_id, input_ids=p + t, labels=[IGNORE] * len(p) + list(t), prompt_tokens=len(p), examples=examples)


@dataclass
class BuildStats:
    pairs: int = 0
    kept: int = 0
    too_long: int = 0
    fewer_examples: int = 0
    smaller_schema: int = 0
    skipped_ids: list[str] = field(default_factory=list)
    failing_checks: int = 0
    """Pairs left out because their own query fails the checks inference applies to a generated one."""
    failing_ids: list[str] = field(default_factory=list)


def build_sequences(
    pairs: Sequence[TrainPair],
    pool: Sequence[TrainPair],
    builder: PromptBuilder,
    tokenize: Callable[[str], list[int]],
    *,
    examples: int = 2,
    max_length: int = 1024,
    drop_failing: bool = True,
) -> tuple[list[Encoded], BuildStats]:
    """Encode ``pairs`` with up to ``examples`` retrieved from ``pool``, each at most ``max_length`` tokens.

    With ``drop_failing``, a pair whose query fails the query generator's own checks against its
    graph's schema (the read-only guard, the parser, unbound selected variables, unknown terms, a
    relationship against its direction) is left out, and never shown as an example: a model trained
    on it learns to write what inference rejects.

    A sequence that is too long first loses its farthest examples, then gets a schema pruned to half,
    then a quarter of the budget (as the reader prunes it: the properties least related to the
    question go first); one that still does not fit is left out (counted in the stats).
    """
    stats = BuildStats(pairs=len(pairs))
    if drop_failing and examples > 0:
        pool = [q for q in pool if builder.check(q) is None]
    out = []
    for pair in pairs:
        if drop_failing and builder.check(pair) is not None:
            stats.failing_checks += 1
            stats.failing_ids.append(pair.id)
            continue
        exs = nearest_examples(pair, pool, examples)
        target = target_query(pair.query)
        full = builder.schema_tokens or 1200
        budgets = [builder.schema_tokens, full // 2, full // 4]
        enc = None
        for b_i, budget in enumerate(budgets):
            for k in range(len(exs), -1, -1):
                msgs = builder.messages(pair, exs[:k], budget)
                e = encode(pair.id, builder.llm.render(msgs), assistant_text(builder.llm, msgs, target), tokenize, examples=k)
                if len(e.input_ids) <= max_length:
                    enc = e
                    stats.fewer_examples += k < len(exs)
                    stats.smaller_schema += b_i > 0
                    break
            if enc is not None:
                break
        if enc is None:
            stats.too_long += 1
            stats.skipped_ids.append(pair.id)
            continue
        out.append(enc)
    stats.kept = len(out)
    return out, stats


# ---- k-fold under the evaluation protocol ---------------------------------------------------
def equivalent(a: TrainPair, b: TrainPair) -> bool:
    """The protocol's equivalence: the same folded gold query, or (same graph, answers given) the same rows."""
    if _fold(a.query) == _fold(b.query):
        return True
    return a.graph == b.graph and a.answers is not None and b.answers is not None and a.answers == b.answers


@dataclass
class Fold:
    """One fold: the items held out (its test items) and those its adapter trains on."""

    index: int
    held_out: list[TrainPair]
    train: list[TrainPair]
    dropped: list[str]
    """Ids left out of training because they are equivalent to a held-out item."""


def make_folds(items: Sequence[TrainPair], k: int, seed: int = 0) -> list[Fold]:
    """Split ``items`` into ``k`` folds; each fold's adapter never sees its items nor their equivalents.

    Equivalent items (same folded query, or same graph and same answer rows) are kept in the same
    fold, so few items are lost; any equivalent that still lands elsewhere is dropped from training.

    Raises:
        InputError: ``k`` below 2 or above the number of groups of equivalent items; duplicate ids.
    """
    ids = [it.id for it in items]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        raise InputError(f"the bank has duplicate ids ({', '.join(dup[:3])}): each item needs its own 'id' for the fold index")
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[Any, int] = {}
    for i, it in enumerate(items):
        keys: list[Any] = [("q", _fold(it.query))]
        if it.answers is not None:
            keys.append(("a", it.graph, it.answers))
        for key in keys:
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(items)):
        groups[find(i)].append(i)
    comps = list(groups.values())
    if k < 2 or k > len(comps):
        raise InputError(f"--folds must be between 2 and {len(comps)} (the bank's groups of equivalent items), got {k}")
    random.Random(seed).shuffle(comps)
    comps.sort(key=len, reverse=True)  # largest first, each to the smallest fold: balanced folds
    members: list[list[int]] = [[] for _ in range(k)]
    for comp in comps:
        min(members, key=len).extend(comp)
    folds = []
    for f, held in enumerate(members):
        held_items = [items[i] for i in sorted(held)]
        held_set = set(held)
        train, dropped = [], []
        for i, it in enumerate(items):
            if i in held_set:
                continue
            if any(equivalent(it, h) for h in held_items):
                dropped.append(it.id)
                continue
            train.append(it)
        folds.append(Fold(index=f, held_out=held_items, train=train, dropped=dropped))
    return folds

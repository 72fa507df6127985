"""Reading a graph's schema and writing the part a question needs into a prompt.

Example:
    >>> from ragkit.stages.schema.reader import GraphSchemaReader
    >>> from ragkit.testing import TinyGraphStore
    >>> out = GraphSchemaReader(store=TinyGraphStore()).run(question="Where does Ann live?")
    >>> "tiny:livesIn" in out.text
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import InputError
from ragkit.stores.base import GraphSchema, GraphStore, SchemaProperty
from ragkit.stores.examples import QueryExample

__all__ = ["GraphSchemaReader", "SchemaOutput", "render_schema", "adopt_prefixes"]

RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"


class SchemaOutput(Output):
    """The schema read from the store, and its rendering for the prompt (pruned to the question)."""

    graph_schema: GraphSchema
    text: str


def _words(text: str) -> set[str]:
    # split camelCase and snake_case so `publicationYear` meets "year" and "published"
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return {w[:5] for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def _relevance(p: SchemaProperty, schema: GraphSchema, q: set[str]) -> float:
    local = p.name.rsplit("/", 1)[-1].rsplit("#", 1)[-1]
    text = " ".join([local, p.label or "", *(d.rsplit("/", 1)[-1] for d in p.domains), *(r.rsplit("/", 1)[-1] for r in p.ranges)])
    overlap = len(_words(text) & q)
    sample_hit = any(_words(s) & q for s in p.samples)
    return overlap + 0.5 * sample_hit


def render_schema(
    schema: GraphSchema,
    question: str | None = None,
    *,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> str:
    """Write ``schema`` compactly for a query-writing prompt.

    Without a budget everything is listed. With ``max_tokens``, properties are ranked by how much
    they share with ``question`` (words of their name, label, domain, range and sample values) and
    the least relevant are left out until the text fits; classes and prefixes always stay.
    """
    count = count_tokens or (lambda t: len(t) // 4 + 1)
    if schema.language == "sparql":
        head = [f"PREFIX {p}: <{ns}>" for p, ns in schema.prefixes.items() if any(t.startswith(ns) for t in schema.terms()) or p in ("rdfs", "xsd")]
        cls = "Classes: " + ", ".join(schema.compact(c.name) for c in schema.classes)
        lines = []
        for p in schema.properties:
            if p.name == RDF_TYPE:  # the Classes line already says what `a` can point to
                continue
            dom = "|".join(schema.compact(d) for d in p.domains[:3]) or "?"
            rng = "|".join(schema.compact(r) for r in p.ranges[:3]) or "literal"
            sample = next((x for x in p.samples if not x.startswith(("http://", "https://", "urn:"))), None)
            ex = f'  e.g. "{sample}"' if sample else ""
            lines.append((p, f"{schema.compact(p.name)}: {dom} -> {rng}{ex}"))
    else:
        head = []
        cls = "Node labels: " + ", ".join(f":{c.name}" for c in schema.classes)
        lines = []
        for p in schema.properties:
            if p.kind == "relationship":
                lines.append((p, f"(:{'|'.join(p.domains) or '?'})-[:{p.name}]->(:{'|'.join(p.ranges) or '?'})"))
            else:
                ex = f'  e.g. "{p.samples[0]}"' if p.samples else ""
                lines.append((p, f"{'|'.join(p.domains) or '?'}.{p.name}: {'|'.join(p.ranges) or '?'}{ex}"))
    props_title = "Properties:" if schema.language == "sparql" else "Relationships and properties:"

    def text_of(chosen: list[tuple[SchemaProperty, str]]) -> str:
        return "\n".join([*head, cls, props_title, *(line for _, line in chosen)])

    if max_tokens is None or count(text_of(lines)) <= max_tokens:
        return text_of(lines)
    q = _words(question or "")
    ranked = sorted(lines, key=lambda pl: -_relevance(pl[0], schema, q))
    kept = list(ranked)
    while kept and count(text_of(kept)) > max_tokens:
        kept.pop()
    order = {id(pl[0]): i for i, pl in enumerate(lines)}
    kept.sort(key=lambda pl: order[id(pl[0])])
    rec = current_recorder()
    if rec is not None:
        rec.note("schema_properties_pruned", len(lines) - len(kept))
    return text_of(kept)


@register_stage("graph_schema_reader")
class GraphSchemaReader(Stage):
    """Reads the schema of a graph store and renders the part relevant to the question.

    Args:
        store: the graph store resource.
        max_tokens: budget for the rendered schema (approximate: 4 characters a token); None for no limit.

    Example:
        >>> from ragkit.testing import TinyGraphStore
        >>> GraphSchemaReader(store=TinyGraphStore()).run(question="Who lives in Rome?").graph_schema.language
        'sparql'
    """

    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals

    def __init__(self, store: GraphStore, max_tokens: int | None = 1500) -> None:
        if max_tokens is not None and max_tokens < 50:
            raise ValueError("max_tokens must be at least 50 (or null for no limit)")
        self.store = store
        self.max_tokens = max_tokens

    def run(self, question: str, examples: list[QueryExample] | None = None) -> SchemaOutput:
        """Read the schema; with ``examples``, write it in the prefixes their queries declare.

        A small model copies notation: the schema and the examples it sees should name terms alike.
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something, e.g. -q 'Who wrote ...?')")
        schema = self.store.schema()
        if schema.language == "sparql" and examples:
            schema = schema.model_copy(update={"prefixes": adopt_prefixes(schema.prefixes, [e.query for e in examples])})
        return SchemaOutput(graph_schema=schema, text=render_schema(schema, question, max_tokens=self.max_tokens))


def adopt_prefixes(prefixes: dict[str, str], queries: list[str]) -> dict[str, str]:
    """The prefixes the queries declare, plus those of ``prefixes`` they neither rename nor cover."""
    declared: dict[str, str] = {}
    for q in queries:
        for m in re.finditer(r"(?i)PREFIX\s+([A-Za-z][\w-]*)?:\s*<([^>]*)>", q):
            declared.setdefault(m.group(1) or "", m.group(2))
    out = dict(declared)
    for p, ns in prefixes.items():
        if p in out or any(ns.startswith(d) for d in declared.values()):
            continue
        out[p] = ns
    return out

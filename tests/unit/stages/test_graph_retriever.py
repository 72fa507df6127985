"""The graph query retriever: execution-guided selection among candidates, and its confidence."""

from __future__ import annotations

from typing import Any

import pytest

from ragkit import Pipeline
from ragkit.stages.querygen.base import GeneratedQuery, QueryCandidate
from ragkit.stages.retrievers.graph import GraphContext, GraphQueryRetriever
from ragkit.testing import TinyGraphStore

A, B, C, D = (f"SELECT ?x WHERE {{ ?s <http://x/{k}> ?x }}" for k in "abcd")


def gen(*queries: str, errors: dict[str, str] | None = None) -> GeneratedQuery:
    errors = errors or {}
    cands = [QueryCandidate(query=q, error=errors.get(q)) for q in queries]
    return GeneratedQuery(language="sparql", query=queries[0], candidates=cands)


def retrieve(answers: dict[str, list[list[Any]]], *queries: str, **kw: Any) -> tuple[GraphContext, TinyGraphStore]:
    store = TinyGraphStore(answers=answers)
    out = GraphQueryRetriever(store=store, **kw).run(generated=gen(*queries))
    assert out.query == out.context.query and out.rows == out.context.rows and out.confidence == out.context.confidence
    return out.context, store


def test_defaults_and_validation() -> None:
    store = TinyGraphStore()
    r = GraphQueryRetriever(store=store)
    assert (r.max_candidates, r.row_limit, r.timeout) == (3, 50, None) and store.setup_calls == 0
    with pytest.raises(ValueError, match="max_candidates must be at least 1"):
        GraphQueryRetriever(store=store, max_candidates=0)
    with pytest.raises(ValueError, match="row_limit must be at least 1"):
        GraphQueryRetriever(store=store, row_limit=0)


def test_first_non_empty_candidate_wins() -> None:
    ctx, store = retrieve({A: [], B: [["b"]], C: [["c"]]}, A, B, C)
    assert ctx.query == B and ctx.rows == [["b"]] and ctx.error is None
    assert store.executed == [A, B, C] and ctx.tried == 3


def test_rows_of_only_nulls_count_as_empty() -> None:
    ctx, _ = retrieve({A: [[None], [None]], B: [["b"]]}, A, B)
    assert ctx.query == B and ctx.rows == [["b"]]
    ctx, _ = retrieve({A: [[None, "a"]], B: [["b"]]}, A, B)  # one bound value is an answer
    assert ctx.query == A


def test_when_all_are_empty_the_first_that_ran_is_kept_with_low_confidence() -> None:
    ctx, _ = retrieve({A: [[None]], B: []}, A, B)
    assert ctx.query == A and ctx.error is None
    assert 0 < ctx.confidence < 0.3


def test_agreement_raises_confidence() -> None:
    agree, _ = retrieve({A: [["x"], ["y"]], B: [["y"], ["x"]], C: [["x"], ["y"]]}, A, B, C)
    split, _ = retrieve({A: [["x"], ["y"]], B: [["z"]], C: [["x"], ["y"]]}, A, B, C)
    alone, _ = retrieve({A: [["x"], ["y"]], B: [["z"]], C: [["w"]]}, A, B, C)
    single, _ = retrieve({A: [["x"]]}, A)
    assert agree.rows == split.rows == alone.rows == [["x"], ["y"]]
    assert 1.0 >= agree.confidence > split.confidence > alone.confidence > 0.5
    assert 0.5 < single.confidence < agree.confidence


def test_non_empty_beats_empty_in_confidence() -> None:
    full, _ = retrieve({A: [["x"]]}, A)
    empty, _ = retrieve({A: []}, A)
    assert full.confidence > 0.5 > empty.confidence > 0


def test_all_candidates_failing_is_an_error_with_zero_confidence() -> None:
    # TinyGraphStore cannot parse these: each raises QueryParseError
    bad1, bad2 = "SELECT ?x WHERE { ?a ?b ?c . ?c ?d ?x }", "ASK { ?a ?b ?c }"
    ctx, store = retrieve({}, bad1, bad2)
    assert ctx.confidence == 0.0 and ctx.rows == [] and ctx.columns == []
    assert (ctx.error or "").startswith("QueryParseError: ") and ctx.tried == 2
    assert ctx.query == bad1 and store.executed == [bad1, bad2]


def test_candidates_with_errors_are_not_run() -> None:
    store = TinyGraphStore(answers={A: [["a"]], B: [["b"]]})
    g = gen(A, B, errors={A: "?y is selected but never bound"})
    ctx = GraphQueryRetriever(store=store).run(generated=g).context
    assert store.executed == [B] and ctx.query == B and ctx.tried == 2
    only_bad = gen(A, errors={A: "SPARQL syntax error: boom"})
    out = GraphQueryRetriever(store=store).run(generated=only_bad)
    assert out.error == "SPARQL syntax error: boom" and out.confidence == 0.0 and store.executed == [B]


def test_refused_queries_never_reach_the_store() -> None:
    store = TinyGraphStore(answers={"DROP ALL": [["gone"]]})
    # a candidate that claims to be fine: the store's own guard still refuses it
    ctx = GraphQueryRetriever(store=store).run(generated=gen("DROP ALL", "DELETE WHERE { ?s ?p ?o }")).context
    assert store.executed == []
    assert ctx.confidence == 0.0 and (ctx.error or "").startswith("ReadOnlyViolationError: refused")


def test_no_candidates() -> None:
    g = GeneratedQuery(language="sparql", query="", candidates=[])
    ctx = GraphQueryRetriever(store=TinyGraphStore()).run(generated=g).context
    assert ctx.error == "no candidate query" and ctx.confidence == 0.0 and ctx.tried == 0


def test_max_candidates_and_row_limit() -> None:
    store = TinyGraphStore(answers={A: [], B: [], C: [["c"]], D: [[str(i)] for i in range(10)]})
    ctx = GraphQueryRetriever(store=store, max_candidates=2).run(generated=gen(A, B, C)).context
    assert store.executed == [A, B] and ctx.rows == []
    ctx = GraphQueryRetriever(store=store, row_limit=3).run(generated=gen(D)).context
    assert ctx.rows == [["0"], ["1"], ["2"]] and ctx.truncated


def test_as_text() -> None:
    ctx = GraphContext(query=A, columns=["a", "b"], rows=[["x", 1], ["y" * 300, None]])
    lines = ctx.as_text()
    assert lines[0] == "a=x; b=1" and lines[1].endswith("...; b=None") and len(lines[1]) < 220
    assert ctx.as_text(max_rows=1) == ["a=x; b=1"]


def test_yaml_round_trip() -> None:
    spec = {
        "version": 1,
        "resources": {"graph": {"type": "tiny_graph_store"}},
        "stages": [{"name": "retrieve", "type": "graph_query_retriever", "store": "graph", "max_candidates": 2, "row_limit": 7, "timeout": 2.5}],
        "inputs": {"generated": "retrieve.generated"},
        "outputs": {"rows": "retrieve.rows", "confidence": "retrieve.confidence"},
    }
    pipe = Pipeline.from_dict(spec)
    assert Pipeline.from_dict(pipe.to_dict()) == pipe
    r = pipe.stages["retrieve"]
    assert isinstance(r, GraphQueryRetriever) and (r.max_candidates, r.row_limit, r.timeout) == (2, 7, 2.5)
    q = "SELECT ?c WHERE { <http://example.org/tiny/ann> <http://example.org/tiny/livesIn> ?c }"
    out = pipe.run(generated=gen(q))
    assert out["rows"] == [["http://example.org/tiny/rome"]] and out["confidence"] > 0.5

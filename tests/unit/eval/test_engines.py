"""Evaluation engines: the local engine runs a graph job's items in order, ignores a pipeline's
response cache, and unknown engines are clear errors. (Ray itself: tests/integration/test_ray_engine.py.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ragkit.errors import MissingDependencyError, UserError
from ragkit.eval.engines import GraphJob, LocalEngine, RayEngine, get_engine
from ragkit.eval.kgqa import KgqaItem

PFX = "PREFIX ex: <http://example.org/t/>\nPREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"
GRAPH = '@prefix ex: <http://example.org/t/> .\n@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\nex:a rdfs:label "Ann" ; ex:age 30 .\n'
AGE = PFX + 'SELECT ?x WHERE { ?p rdfs:label "Ann" ; ex:age ?x }'


def job(tmp_path: Path, **extra: Any) -> GraphJob:
    graph = tmp_path / "g.ttl"
    graph.write_text(GRAPH)
    spec: dict[str, Any] = {
        "version": 1,
        "resources": {
            "llm": {"type": "scripted_llm", "responses": [AGE]},
            "embedder": {"type": "hashing_embedder", "dimension": 32},
            "graph": {"type": "oxigraph_store", "path": "x.ttl"},
            "examples": {"type": "example_bank", "path": "x.jsonl", "embedder": "embedder"},
            "qa_cache": {"type": "semantic_cache", "embedder": "embedder", "path": str(tmp_path / "cache.sqlite")},
        },
        "stages": [
            {"name": "examples", "type": "few_shot_retriever", "bank": "examples", "top_k": 1},
            {"name": "schema", "type": "graph_schema_reader", "store": "graph"},
            {"name": "querygen", "type": "sparql_generator", "llm": "llm", "num_candidates": 1},
            {"name": "retrieve", "type": "graph_query_retriever", "store": "graph"},
        ],
        "connections": ["schema.graph_schema -> querygen.graph_schema", "schema.text -> querygen.schema_text", "examples.examples -> querygen.examples", "querygen.generated -> retrieve.generated"],
        "inputs": {"question": ["schema.question", "examples.question", "querygen.question"]},
        "outputs": {"query": "retrieve.query", "rows": "retrieve.rows", "error": "retrieve.error"},
        "cache": {"resource": "qa_cache"},
        **extra,
    }
    items = [KgqaItem(f"q{i}", "g", "How old is Ann?", AGE, "sparql", [[30]]) for i in range(3)]
    bank = '{"question": "How old is Ann?", "query": "SELECT ?x WHERE { ?s ?p ?x }"}\n'
    return GraphJob(spec, "p.yaml", str(graph), bank, items, {("How old is Ann?", AGE): Counter()}, cwd=str(tmp_path))


def test_local_engine_runs_every_item_in_order_without_the_cache(tmp_path: Path) -> None:
    here = Path.cwd()
    rows = list(LocalEngine().run(job(tmp_path)))
    assert Path.cwd() == here  # in this process: the job's folder is for worker processes only
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert all(r["correct"] and r["error"] is None for r in rows)
    assert all("cache:" not in " ".join(r["timings"]["stages"]) for r in rows)
    assert not (tmp_path / "cache.sqlite").exists()


def test_engine_names() -> None:
    assert isinstance(get_engine("local"), LocalEngine) and isinstance(get_engine("ray"), RayEngine)
    engine = LocalEngine()
    assert get_engine(engine) is engine
    with pytest.raises(UserError, match="unknown engine 'spark'"):
        get_engine("spark")
    with pytest.raises(ValueError, match="chunk_size"):
        RayEngine(chunk_size=0)


def test_missing_ray_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"ragkit\[ray\]"):
        RayEngine()._ray()

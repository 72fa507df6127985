"""One pipeline file, several backends: only the `graph` resource changes (real models, real servers).

* kgqa_sparql.yaml on embedded Oxigraph and on a real `oxigraph serve` SPARQL endpoint;
* kgqa_cypher.yaml on the embedded Cypher engine and on a real ArcadeDB Bolt server (Neo4j protocol).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragkit import Pipeline
from ragkit.eval.kgqa import execution_match
from ragkit.stores.cypher import Neo4jStore
from ragkit.stores.loaders import load_cypher_script

# The server harnesses live with the store tests; these tests reuse them as they are.
from test_bolt_store import ArcadeServer  # noqa: E402
from test_sparql_endpoint import OxigraphServer  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "fixtures/library/graph.ttl"


def _easy(name: str, n: int = 2) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (ROOT / "fixtures/library" / name).read_text().splitlines() if x.strip()]
    return [q for q in rows if q.get("difficulty") == "easy"][:n]


def _with_graph(pipeline_file: str, graph: dict[str, Any]) -> Pipeline:
    spec = Pipeline.from_yaml(ROOT / pipeline_file).to_dict()
    assert set(spec["resources"]) >= {"graph", "llm", "embedder", "examples"}
    spec["resources"]["graph"] = graph
    return Pipeline.from_dict(spec, source=pipeline_file)


def _answers(pipe: Pipeline, questions: list[dict[str, Any]], check: Any) -> list[bool]:
    """Whether each question is answered; every generated query also gives the same rows on ``check``."""
    out = []
    with pipe:
        for q in questions:
            result = pipe.run(question=q["question"])
            if result["error"] is None:  # the model may fail a question; a query that ran must agree
                assert execution_match(check.query(result["query"]).rows, result["rows"]), result["query"]
            out.append(execution_match(result["rows"], q["answers"]))
    return out


@pytest.fixture(scope="module")
def sparql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OxigraphServer]:
    binary = shutil.which("oxigraph") or str(Path(sys.executable).with_name("oxigraph"))
    if not Path(binary).is_file():
        pytest.skip("the oxigraph CLI is not installed (pip install oxigraph)")
    base = tmp_path_factory.mktemp("oxigraph-pipeline")
    subprocess.run([binary, "load", "--location", str(base / "db"), "--file", str(GRAPH)], check=True, capture_output=True, timeout=120)
    srv = OxigraphServer(binary, base / "db", base / "server.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def bolt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcadeServer]:
    pytest.importorskip("arcadedb_embedded")
    server = ArcadeServer(tmp_path_factory.mktemp("arcadedb-pipeline"))
    try:
        server.start()
        loader = Neo4jStore(server.uri, "root", server.password, "library")
        load_cypher_script(loader, GRAPH)
        loader.close()
        yield server
    finally:
        server.stop()


def test_sparql_pipeline_on_embedded_oxigraph_and_a_sparql_endpoint(sparql_server: OxigraphServer) -> None:
    from ragkit.stores.rdf import OxigraphStore
    from ragkit.stores.sparql_http import SparqlEndpointStore

    questions = _easy("questions.jsonl")
    local, endpoint = OxigraphStore(path=str(GRAPH)), SparqlEndpointStore(url=sparql_server.url)
    try:
        embedded = _answers(_with_graph("pipelines/kgqa_sparql.yaml", {"type": "oxigraph_store", "path": str(GRAPH)}), questions, endpoint)
        remote = _answers(_with_graph("pipelines/kgqa_sparql.yaml", {"type": "sparql_endpoint", "url": sparql_server.url}), questions, local)
    finally:
        endpoint.close()
        local.close()
    assert any(embedded), "the embedded pipeline answered none of the easy questions"
    assert any(remote), "the pipeline on the SPARQL endpoint answered none of the easy questions"


def test_cypher_pipeline_on_the_embedded_engine_and_a_bolt_server(bolt_server: ArcadeServer) -> None:
    from ragkit.stores.cypher import KgliteStore

    questions = _easy("questions_cypher.jsonl")
    local = KgliteStore(path=str(GRAPH))
    bolt = {"type": "neo4j_store", "uri": bolt_server.uri, "username": "root", "password": bolt_server.password, "database": "library"}
    remote_store = Neo4jStore(bolt_server.uri, "root", bolt_server.password, "library")
    try:
        embedded = _answers(_with_graph("pipelines/kgqa_cypher.yaml", {"type": "embedded_cypher_store", "path": str(GRAPH)}), questions, remote_store)
        remote = _answers(_with_graph("pipelines/kgqa_cypher.yaml", bolt), questions, local)
    finally:
        remote_store.close()
        local.close()
    assert any(embedded), "the embedded pipeline answered none of the easy questions"
    assert any(remote), "the pipeline on the Bolt server answered none of the easy questions"

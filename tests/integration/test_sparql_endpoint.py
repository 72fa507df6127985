"""The SPARQL endpoint store against a real ``oxigraph serve`` holding the library fixture graph.

The server is started once for the module on a free port of 127.0.0.1 and always stopped at the
end. Its answers are compared with the embedded :class:`~ragkit.stores.rdf.OxigraphStore`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragkit.errors import QueryTimeoutError, ReadOnlyViolationError, StoreUnavailableError
from ragkit.stores.base import QueryResult
from ragkit.stores.rdf import OxigraphStore
from ragkit.stores.sparql_http import SparqlEndpointStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "fixtures" / "library" / "graph.ttl"
EXAMPLES = [json.loads(line) for line in (ROOT / "fixtures" / "library" / "examples.jsonl").read_text().splitlines() if line.strip()]
LIB = "http://example.org/library/"
TRIPLES = 594
# About 43 million solutions to count: seconds of work for the server, none of it streamable.
SLOW_QUERY = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g a ?t }"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OxigraphServer:
    """An ``oxigraph serve`` process over an on-disk database; can be stopped and started again."""

    def __init__(self, binary: str, location: Path, log: Path) -> None:
        self.binary = binary
        self.location = location
        self.log = log
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/query"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                # The server-side time-out bounds the work of queries the client abandoned.
                [self.binary, "serve", "--location", str(self.location), "--bind", f"127.0.0.1:{self.port}", "--timeout-s", "30"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oxigraph serve exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            if self.answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"oxigraph serve did not answer within {wait} s: {self.log.read_text()[-2000:]}")

    def answers(self) -> bool:
        body = urllib.parse.urlencode({"query": "ASK {}"}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Accept": "application/sparql-results+json"})
        try:
            with urllib.request.urlopen(request, timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OxigraphServer]:
    binary = shutil.which("oxigraph") or str(Path(sys.executable).with_name("oxigraph"))
    if not Path(binary).is_file():
        pytest.skip("the oxigraph CLI is not installed (pip install oxigraph)")
    base = tmp_path_factory.mktemp("oxigraph")
    location = base / "db"
    subprocess.run(
        [binary, "load", "--location", str(location), "--file", str(GRAPH)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    srv = OxigraphServer(binary, location, base / "server.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def remote(server: OxigraphServer) -> Iterator[SparqlEndpointStore]:
    store = SparqlEndpointStore(url=server.url, timeout=30)
    yield store
    store.close()


@pytest.fixture(scope="module")
def embedded() -> Iterator[OxigraphStore]:
    store = OxigraphStore(path=str(GRAPH))
    yield store
    store.close()


def rows_of(result: QueryResult) -> list[tuple[Any, ...]]:
    return sorted(result.rows, key=repr)


def test_schema_over_http_matches_embedded(remote: SparqlEndpointStore, embedded: OxigraphStore) -> None:
    ours, theirs = remote.schema(), embedded.schema()
    assert {c.name for c in ours.classes} == {c.name for c in theirs.classes}
    assert len(ours.classes) == 7
    assert {p.name for p in ours.properties} == {p.name for p in theirs.properties}
    assert [(c.name, c.label, c.comment, c.count) for c in ours.classes] == [(c.name, c.label, c.comment, c.count) for c in theirs.classes]
    assert [(p.name, p.kind, p.domains, p.ranges, p.count) for p in ours.properties] == [
        (p.name, p.kind, p.domains, p.ranges, p.count) for p in theirs.properties
    ]
    assert ours.compact(LIB + "Book").endswith(":Book")


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"ex{i:02d}" for i in range(len(EXAMPLES))])
def test_example_rows_equal_embedded(example: dict[str, str], remote: SparqlEndpointStore, embedded: OxigraphStore) -> None:
    ours, theirs = remote.query(example["sparql"]), embedded.query(example["sparql"])
    assert ours.columns == theirs.columns
    assert rows_of(ours) == rows_of(theirs)
    assert ours.boolean == theirs.boolean
    assert not ours.truncated


@pytest.mark.parametrize(
    "query",
    [
        "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }",
        f"SELECT ?b ?r WHERE {{ ?b a <{LIB}Book> OPTIONAL {{ ?b <{LIB}rating> ?r }} }}",
        f"CONSTRUCT {{ ?a <{LIB}wrote> ?b }} WHERE {{ ?b <{LIB}author> ?a }}",
        f"DESCRIBE <{LIB}Book>",
        "SELECT ?l (LANG(?l) AS ?lang) (DATATYPE(?l) AS ?dt) WHERE { ?s <http://www.w3.org/2000/01/rdf-schema#label> ?l }",
    ],
)
def test_other_query_forms_equal_embedded(query: str, remote: SparqlEndpointStore, embedded: OxigraphStore) -> None:
    ours, theirs = remote.query(query), embedded.query(query)
    assert ours.columns == theirs.columns
    assert rows_of(ours) == rows_of(theirs)


def test_row_limit_over_http(server: OxigraphServer) -> None:
    store = SparqlEndpointStore(url=server.url, row_limit=10)
    res = store.query("SELECT ?s ?p ?o WHERE { ?s ?p ?o }")
    assert len(res.rows) == 10 and res.truncated
    res = store.query("SELECT ?s ?p ?o WHERE { ?s ?p ?o } LIMIT 10")
    assert len(res.rows) == 10 and not res.truncated


def test_fingerprint_counts_the_remote_triples(remote: SparqlEndpointStore) -> None:
    assert remote.fingerprint().endswith(f"-{TRIPLES}")
    assert remote.fingerprint() == remote.fingerprint()


def test_mutating_query_is_refused_before_the_server(remote: SparqlEndpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    remote.warm_up()
    sent: list[str] = []
    original = remote._open

    def spy(query: str, deadline: float, budget: float) -> Any:
        sent.append(query)
        return original(query, deadline, budget)

    monkeypatch.setattr(remote, "_open", spy)
    inserted = f"<{LIB}book_x> <{LIB}author> <{LIB}author_x>"
    for query in (
        f"INSERT DATA {{ {inserted} }}",
        "DELETE WHERE { ?s ?p ?o }",
        "DROP ALL",
        f"PREFIX lib: <{LIB}>\nDELETE {{ ?b lib:rating ?r }} INSERT {{ ?b lib:rating 0 }} WHERE {{ ?b lib:rating ?r }}",
    ):
        with pytest.raises(ReadOnlyViolationError):
            remote.query(query)
    assert sent == []
    assert remote.query("SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }").rows == ((str(TRIPLES),),)
    assert remote.query(f"ASK {{ {inserted} }}").boolean is False


def test_time_out(server: OxigraphServer) -> None:
    patient = SparqlEndpointStore(url=server.url, timeout=60)
    start = time.monotonic()
    ((count,),) = patient.query(SLOW_QUERY).rows
    took = time.monotonic() - start
    assert int(count) > 1_000_000
    assert took > 1.0, f"the slow query took only {took:.2f} s on this machine; it no longer tests the time-out"

    hasty = SparqlEndpointStore(url=server.url, timeout=0.5)
    hasty.warm_up()
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="0.5 s"):
        hasty.query(SLOW_QUERY)
    # cut short: well under the full run (1.5 s on a quiet machine; a loaded one slows both)
    assert time.monotonic() - start < max(1.5, took / 2)
    with pytest.raises(QueryTimeoutError):
        patient.query(SLOW_QUERY, timeout=0.3)
    assert hasty.query("ASK { ?s ?p ?o }").boolean is True  # the store is still usable


def test_server_down_then_restarted(server: OxigraphServer) -> None:
    store = SparqlEndpointStore(url=server.url, timeout=5)
    assert store.query("ASK { ?s ?p ?o }").boolean is True
    try:
        server.stop()
        with pytest.raises(StoreUnavailableError) as info:
            store.query("ASK { ?s ?p ?o }")
        message = str(info.value)
        assert server.url in message
        assert "check that the server is running" in message
        fresh = SparqlEndpointStore(url=server.url, timeout=5)
        with pytest.raises(StoreUnavailableError, match="cannot reach"):
            fresh.warm_up()
    finally:
        server.start()
    assert store.query("SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }").rows == ((str(TRIPLES),),)
    assert fresh.query("ASK { ?s ?p ?o }").boolean is True

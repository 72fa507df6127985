"""The Neo4j store against real Bolt servers.

* **ArcadeDB**: a module-scoped fixture starts a real ArcadeDB server (``arcadedb-embedded``, which
  bundles its own JRE and the Bolt plugin) in a child process, listening on 127.0.0.1 on free ports,
  and loads ``movies.cypher`` into it through the store's own driver. The server is always stopped
  at the end.
* **Neo4j**: the same checks run against a real Neo4j when ``NEO4J_URI`` (and ``NEO4J_USERNAME``,
  ``NEO4J_PASSWORD``, optionally ``NEO4J_DATABASE``) are set; skipped otherwise. An empty database
  gets the movies graph loaded (and removed again afterwards); a database that already holds the
  movies graph is used as it is; any other database is left alone and the tests are skipped.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ragkit.errors import QueryParseError, QueryTimeoutError, ReadOnlyViolationError, StoreUnavailableError
from ragkit.stores.cypher import Neo4jStore
from ragkit.stores.loaders import load_cypher_script

pytestmark = pytest.mark.integration
pytest.importorskip("neo4j")

ROOT = Path(__file__).resolve().parents[2]
MOVIES = ROOT.parent / "shared" / "data" / "movies"
SCRIPT = MOVIES / "graphs" / "movies.cypher"
QUESTIONS = MOVIES / "questions.jsonl"
LIBRARY = ROOT / "fixtures" / "library" / "graph.ttl"
SLOW_QUERY = "UNWIND range(1, 2000) AS a UNWIND range(1, 2000) AS b WITH a, b WHERE (a * b) % 7 = 3 RETURN count(*) AS n"
"""About 3 s on ArcadeDB (which has no server-side time-out): long enough to time out, short enough to let finish."""

# Run in the child process: start ArcadeDB with the Bolt plugin, say READY, stop on "stop" or EOF.
_SERVER = r"""
import os, sys
from arcadedb_embedded.server import ArcadeDBServer
root, password, bolt, http, https = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
server = ArcadeDBServer(os.path.abspath(root), password, config={
    "host": "127.0.0.1",
    "http_port": http,
    "server_httpsIncomingPort": https,
    "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
    "bolt_port": bolt,
}, jvm_kwargs={"heap_size": "1g"})
server.start()
try:
    server.create_database("movies")
    server.create_database("library")
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
finally:
    server.stop()
    print("STOPPED", flush=True)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ArcadeServer:
    """An ArcadeDB server in a child process that this test module started (and only that one)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.password = secrets.token_hex(12)
        self.bolt_port = _free_port()
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.bolt_port}"

    def start(self, timeout: float = 180.0) -> None:
        ports = [str(self.bolt_port), str(_free_port()), str(_free_port())]
        log = open(self.workdir / "server.err", "a")  # noqa: SIM115 - the child process writes it
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(self.workdir / "root"), self.password, *ports],
            cwd=self.workdir,  # ArcadeDB writes ./log relative to its working directory
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        self._reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if lines.get(timeout=1.0).strip() == "READY":
                    return
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        err = (self.workdir / "server.err").read_text(errors="replace")[-3000:]
        code = self.proc.poll()
        self.stop()
        raise RuntimeError(f"ArcadeDB did not start (exit code {code}):\n{err}")

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the server: ask it to shut down, or (``graceful=False``) kill it as a crash would."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if not graceful:
                proc.kill()
                proc.wait(timeout=30)
            elif proc.poll() is None:
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.flush()
                proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=30)
        finally:
            if self._reader is not None:
                self._reader.join(timeout=10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass


@dataclass
class Target:
    name: str
    uri: str
    username: str
    password: str | None
    database: str | None
    server: ArcadeServer | None = None

    def store(self, **kw: Any) -> Neo4jStore:
        return Neo4jStore(self.uri, self.username, self.password, self.database, **kw)


def _counts(store: Neo4jStore) -> tuple[int, int, int]:
    rows = store.query(
        "MATCH (n) RETURN count(n) AS n, count(CASE WHEN n:Movie THEN 1 END) AS m, count(CASE WHEN n:Person THEN 1 END) AS p"
    ).rows
    return tuple(int(x) for x in rows[0])  # type: ignore[return-value]


@pytest.fixture(scope="module", params=["arcadedb", "neo4j"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    if not SCRIPT.is_file():
        pytest.skip(f"movies data not found under {MOVIES}")
    if request.param == "arcadedb":
        pytest.importorskip("arcadedb_embedded")
        server = ArcadeServer(tmp_path_factory.mktemp("arcadedb"))
        try:
            server.start()
            t = Target("arcadedb", server.uri, "root", server.password, "movies", server)
            loader = t.store()
            load_cypher_script(loader, SCRIPT)
            loader.close()
            yield t
        finally:
            server.stop()
        return
    uri = os.environ.get("NEO4J_URI")
    if not uri:
        pytest.skip("set NEO4J_URI (and NEO4J_USERNAME, NEO4J_PASSWORD) to test against a real Neo4j")
    t = Target(
        "neo4j", uri, os.environ.get("NEO4J_USERNAME", "neo4j"), os.environ.get("NEO4J_PASSWORD"), os.environ.get("NEO4J_DATABASE") or None
    )
    probe = t.store()
    total, movies, people = _counts(probe)
    loaded = False
    if total == 0:
        load_cypher_script(probe, SCRIPT)
        loaded = True
    elif (movies, people) != (38, 133):
        probe.close()
        pytest.skip("the Neo4j database holds other data; point NEO4J_URI/NEO4J_DATABASE at an empty database or at the movies graph")
    try:
        yield t
    finally:
        if loaded:
            with probe.write_session() as session:
                session.run("MATCH (n) DETACH DELETE n").consume()
        probe.close()


@pytest.fixture
def store(target: Target) -> Iterator[Neo4jStore]:
    s = target.store(timeout=20)
    yield s
    s.close()


def _canon(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        f = float(v)
        return str(int(f)) if f.is_integer() else repr(float(f"{f:.12g}"))
    if isinstance(v, list):
        return json.dumps(sorted(_canon(x) for x in v))
    return str(v)


def _rows(rows: Any) -> Counter[tuple[str, ...]]:
    return Counter(tuple(sorted(_canon(v) for v in r)) for r in rows)


# ---- the checks -------------------------------------------------------------------------------


def test_schema(store: Neo4jStore) -> None:
    schema = store.schema()
    assert schema.language == "cypher"
    counts = {c.name: c.count for c in schema.classes}
    assert counts == {"Person": 133, "Movie": 38}
    rels = {p.name: p for p in schema.properties if p.kind == "relationship"}
    assert set(rels) == {"ACTED_IN", "DIRECTED", "PRODUCED", "WROTE", "REVIEWED", "FOLLOWS"}
    assert (rels["ACTED_IN"].domains, rels["ACTED_IN"].ranges, rels["ACTED_IN"].count) == (("Person",), ("Movie",), 172)
    assert (rels["FOLLOWS"].domains, rels["FOLLOWS"].ranges) == (("Person",), ("Person",))
    props = {(p.domains[0], p.name): p for p in schema.properties if p.kind == "node_property"}
    assert props[("Movie", "title")].ranges == ("STRING",)
    assert props[("Movie", "released")].ranges == ("INTEGER",)
    assert props[("Person", "born")].ranges == ("INTEGER",)
    assert props[("ACTED_IN", "roles")].ranges == ("LIST",)
    assert props[("REVIEWED", "rating")].ranges == ("INTEGER",)
    assert props[("Person", "name")].samples
    fp = store.fingerprint()
    assert fp.endswith("171n-253r") and fp == store.fingerprint()


def test_gold_queries_return_the_stored_answers(store: Neo4jStore) -> None:
    # the gold queries whose answers do not depend on how ties are ordered (no LIMIT)
    gold = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = [g for g in gold if not re.search(r"\bLIMIT\b", g["cypher"], re.IGNORECASE)]
    assert len(items) >= 50
    passed, failures = 0, []
    for item in items:
        try:
            got = store.query(item["cypher"]).rows
        except Exception as e:
            failures.append(f"{item['id']}: {type(e).__name__}: {e}")
            continue
        if _rows(got) == _rows(item["answers"]):
            passed += 1
        else:
            failures.append(f"{item['id']}: got {list(got)[:4]} want {item['answers'][:4]}")
    print(f"\n{store.uri}: {passed}/{len(items)} gold queries without LIMIT return the stored answers")
    for f in failures:
        print("FAIL", f)
    assert passed / len(items) >= 0.9, "\n".join(failures)


def test_values_are_plain_json(store: Neo4jStore) -> None:
    res = store.query(
        "MATCH p = (a:Person {name: 'Keanu Reeves'})-[r:ACTED_IN]->(m:Movie {title: 'The Matrix'}) RETURN a, r, m, p, [a.name, m.title] AS names"
    )
    a, r, m, p, names = res.rows[0]
    assert a == {"name": "Keanu Reeves", "born": 1964}
    assert r == {"roles": ["Neo"]}
    assert m == {"title": "The Matrix", "released": 1999, "tagline": "Welcome to the Real World"}
    assert p == [a, r, m]
    assert names == ["Keanu Reeves", "The Matrix"]
    json.dumps(res.rows)


def test_row_limit(target: Target) -> None:
    s = target.store(row_limit=5)
    try:
        res = s.query("MATCH (p:Person) RETURN p.name")
        assert len(res.rows) == 5 and res.truncated
        res = s.query("MATCH (m:Movie) RETURN m.title ORDER BY m.title LIMIT 3")
        assert len(res.rows) == 3 and not res.truncated
    finally:
        s.close()


@pytest.mark.parametrize(
    "query", ["CREATE (:Person {name: 'Intruder'})", "MATCH (p:Person) DETACH DELETE p", "MATCH (m:Movie) SET m.title = 'x'"]
)
def test_writes_are_refused(store: Neo4jStore, query: str) -> None:
    before = _counts(store)
    with pytest.raises(ReadOnlyViolationError):
        store.query(query)
    assert _counts(store) == before
    assert store.query("MATCH (m:Movie {title: 'x'}) RETURN count(m) AS n").rows == ((0,),)


def test_syntax_error(store: Neo4jStore) -> None:
    with pytest.raises(QueryParseError) as info:
        store.query("MATCH (n:Person RETURN n")
    assert info.value.query == "MATCH (n:Person RETURN n"


def test_timeout(target: Target) -> None:
    s = target.store(timeout=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(QueryTimeoutError):
            s.query(SLOW_QUERY)
        assert time.monotonic() - start < 5
        assert s.query("MATCH (m:Movie) RETURN count(m) AS n", timeout=30).rows == ((38,),)
    finally:
        s.close()


def test_wrong_password_is_unavailable_without_leaking_it(target: Target) -> None:
    wrong = "not-the-password-" + secrets.token_hex(4)
    s = Neo4jStore(target.uri, target.username, wrong, target.database)
    with pytest.raises(StoreUnavailableError) as info:
        s.warm_up()
    assert wrong not in str(info.value)
    assert "password" in str(info.value)


def test_nothing_listening_is_unavailable() -> None:
    s = Neo4jStore(f"bolt://127.0.0.1:{_free_port()}", password="secret-pw-123", timeout=5)
    with pytest.raises(StoreUnavailableError) as info:
        s.warm_up()
    assert "secret-pw-123" not in str(info.value)
    assert "check that the server is running" in str(info.value)


def test_library_fixture_mapped_from_rdf_loads_over_bolt(target: Target) -> None:
    # the RDF -> Cypher mapping is portable: loaded into ArcadeDB, it answers as the embedded store does
    if target.server is None:
        pytest.skip("needs a second, empty database: only on the ArcadeDB server started by these tests")
    pytest.importorskip("kglite")
    from ragkit.stores.cypher import KgliteStore

    remote = Neo4jStore(target.uri, target.username, target.password, "library")
    embedded = KgliteStore(path=LIBRARY)
    try:
        load_cypher_script(remote, LIBRARY)
        assert {c.name: c.count for c in remote.schema().classes} == {c.name: c.count for c in embedded.schema().classes}
        for q in (
            "MATCH (b:Book)-[:author]->(a:Author) RETURN b.name, a.name",
            "MATCH (a:Author)-[:bornIn]->(:City)-[:locatedIn]->(c:Country) RETURN c.name, count(a) AS n",
            "MATCH (b:Book) WHERE b.rating IS NULL RETURN b.name, b.pageCount",
        ):
            assert _rows(remote.query(q).rows) == _rows(embedded.query(q).rows), q
    finally:
        remote.close()
        embedded.close()


def test_stopped_server_is_unavailable(target: Target) -> None:
    if target.server is None:
        pytest.skip("only the ArcadeDB server started by these tests may be stopped")
    warm = target.store(timeout=10)
    assert warm.query("MATCH (m:Movie) RETURN count(m) AS n").rows == ((38,),)
    target.server.stop(graceful=False)  # a crash: a graceful stop would wait for the open connection
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError) as info:
            warm.query("MATCH (m:Movie) RETURN count(m) AS n")
        assert target.password not in str(info.value)
        cold = target.store(timeout=10)
        with pytest.raises(StoreUnavailableError):
            cold.warm_up()
        assert time.monotonic() - start < 10
    finally:
        warm.close()
        target.server.start()
    again = target.store()
    assert again.query("MATCH (m:Movie) RETURN count(m) AS n").rows == ((38,),)
    again.close()

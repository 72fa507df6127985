"""Unit tests of the rdflib store and the SPARQL-over-HTTP store.

No network: the HTTP store talks to a tiny in-process ``http.server`` on 127.0.0.1 that serves canned
SPARQL results, a fake of the SPARQL 1.1 Protocol.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ragkit.errors import (
    InputError,
    MissingDependencyError,
    QueryParseError,
    QueryTimeoutError,
    ReadOnlyViolationError,
    StoreError,
    StoreUnavailableError,
)
from ragkit.stores.base import DEFAULT_ROW_LIMIT, DEFAULT_TIMEOUT, QueryResult
from ragkit.stores.rdf import OxigraphStore
from ragkit.stores.rdflib_store import RdflibStore
from ragkit.stores.sparql_http import SparqlEndpointStore, _JsonStream, _read_json_results

ROOT = Path(__file__).resolve().parents[3]
GRAPH = str(ROOT / "fixtures" / "library" / "graph.ttl")
EXAMPLES = [json.loads(line) for line in (ROOT / "fixtures" / "library" / "examples.jsonl").read_text().splitlines() if line.strip()]
LIB = "http://example.org/library/"
XSD = "http://www.w3.org/2001/XMLSchema#"
PREFIXES = f"PREFIX lib: <{LIB}>\nPREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"


def rows_of(result: QueryResult) -> list[tuple[Any, ...]]:
    return sorted(result.rows, key=repr)


# ---- rdflib store ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rdflib_store() -> Iterator[RdflibStore]:
    store = RdflibStore(path=GRAPH)
    yield store
    store.close()


@pytest.fixture(scope="module")
def oxigraph_store() -> Iterator[OxigraphStore]:
    store = OxigraphStore(path=GRAPH)
    yield store
    store.close()


def test_rdflib_defaults_and_no_io_in_init() -> None:
    store = RdflibStore(path="no/such/file.ttl")  # nothing is read until warm_up
    assert store.timeout == DEFAULT_TIMEOUT
    assert store.row_limit == DEFAULT_ROW_LIMIT
    assert store.language == "sparql"
    assert store.type_name == "rdflib_store"
    assert store.paths == ["no/such/file.ttl"]
    assert not store.is_warm
    assert store.init_params == {"path": "no/such/file.ttl", "timeout": DEFAULT_TIMEOUT, "row_limit": DEFAULT_ROW_LIMIT}
    assert RdflibStore(path=[GRAPH, GRAPH], timeout=2.5, row_limit=7).paths == [GRAPH, GRAPH]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give 'path'"),
        ({"path": "graph.csv"}, "cannot tell the RDF format"),
        ({"path": "graph.nq"}, "triples only"),
        ({"path": GRAPH, "timeout": 0}, "timeout"),
        ({"path": GRAPH, "row_limit": 0}, "row_limit"),
    ],
)
def test_rdflib_rejects_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RdflibStore(**kwargs)


def test_rdflib_warm_up_loads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import rdflib

    calls: list[Any] = []
    original = rdflib.Graph.parse

    def counting_parse(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rdflib.Graph, "parse", counting_parse)
    store = RdflibStore(path=GRAPH)
    assert calls == []
    store.warm_up()
    store.warm_up()
    store.query("ASK { ?s ?p ?o }")
    store.schema()
    assert store.fingerprint() == store.fingerprint()
    assert len(calls) == 1
    store.close()
    assert not store.is_warm
    store.warm_up()  # close() releases; warming up again reloads
    assert len(calls) == 2
    store.close()


def test_rdflib_fingerprint_hashes_bytes_and_counts_triples(rdflib_store: RdflibStore, tmp_path: Path) -> None:
    fp = rdflib_store.fingerprint()
    assert fp.endswith("-594")
    copy = tmp_path / "copy.ttl"
    copy.write_bytes(Path(GRAPH).read_bytes() + b"\n<http://x/a> <http://x/b> <http://x/c> .\n")
    other = RdflibStore(path=str(copy))
    assert other.fingerprint().endswith("-595")
    assert other.fingerprint().split("-")[0] != fp.split("-")[0]
    other.close()


def test_rdflib_missing_file_is_an_input_error(tmp_path: Path) -> None:
    store = RdflibStore(path=str(tmp_path / "missing.ttl"))
    with pytest.raises(InputError, match="does not exist"):
        store.warm_up()
    assert not store.is_warm


def test_rdflib_unparseable_file_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ttl"
    bad.write_text("this is @not turtle <<<")
    with pytest.raises(InputError, match="cannot parse"):
        RdflibStore(path=str(bad)).warm_up()


def test_rdflib_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdflib", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ragkit\[rdf\]'") as info:
        RdflibStore(path=GRAPH).warm_up()
    assert info.value.package == "rdflib"
    assert "the rdflib store" in str(info.value)


def test_rdflib_schema(rdflib_store: RdflibStore) -> None:
    schema = rdflib_store.schema()
    assert schema.language == "sparql"
    names = {c.name for c in schema.classes}
    assert names == {LIB + n for n in ("Author", "Book", "Publisher", "Genre", "City", "Country", "Award")}
    book = next(c for c in schema.classes if c.name == LIB + "Book")
    assert book.label == "Book"
    assert book.comment == "A published book written by an author."
    assert book.count == 38
    props = {p.name: p for p in schema.properties}
    born = props[LIB + "bornIn"]
    assert (born.kind, born.domains, born.ranges) == ("object", (LIB + "Author",), (LIB + "City",))
    year = props[LIB + "publicationYear"]
    assert (year.kind, year.domains, year.ranges) == ("datatype", (LIB + "Book",), (XSD + "integer",))
    assert props[LIB + "rating"].ranges == (XSD + "decimal",)
    assert props[LIB + "locatedIn"].ranges == (LIB + "Country",)
    assert len(year.samples) == 3
    assert schema.prefixes["lib"] == LIB
    assert schema.compact(LIB + "Book") == "lib:Book"
    assert rdflib_store.schema() is schema  # cached while the fingerprint holds


def test_rdflib_schema_matches_oxigraph(rdflib_store: RdflibStore, oxigraph_store: OxigraphStore) -> None:
    ours, theirs = rdflib_store.schema(), oxigraph_store.schema()
    assert ours.classes == theirs.classes
    assert ours.prefixes == theirs.prefixes
    # Samples are the first few values each engine meets, in its own order.
    assert [p.model_copy(update={"samples": ()}) for p in ours.properties] == [
        p.model_copy(update={"samples": ()}) for p in theirs.properties
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"ex{i:02d}" for i in range(len(EXAMPLES))])
def test_rdflib_rows_equal_oxigraph(example: dict[str, str], rdflib_store: RdflibStore, oxigraph_store: OxigraphStore) -> None:
    ours = rdflib_store.query(example["sparql"])
    theirs = oxigraph_store.query(example["sparql"])
    assert ours.columns == theirs.columns
    assert rows_of(ours) == rows_of(theirs)
    assert ours.boolean == theirs.boolean
    assert ours.truncated is theirs.truncated is False


@pytest.mark.parametrize(
    "query",
    [
        "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }",
        "SELECT ?p (COUNT(*) AS ?n) WHERE { ?s ?p ?o } GROUP BY ?p",
        "SELECT (AVG(?r) AS ?a) (SUM(?r) AS ?s) (MIN(?r) AS ?lo) WHERE { ?b <http://example.org/library/rating> ?r }",
        "SELECT (1.0/3 AS ?x) (2.5*2 AS ?y) (1e0+1 AS ?z) (10/4 AS ?t) WHERE {}",
        "SELECT ?s ?o WHERE { ?s <http://www.w3.org/2000/01/rdf-schema#label> ?o } LIMIT 1000",
        "SELECT ?b ?r WHERE { ?b a <http://example.org/library/Book> OPTIONAL { ?b <http://example.org/library/rating> ?r } }",
        "ASK { ?s a <http://example.org/library/Dragon> }",
        "CONSTRUCT { ?b <http://x/p> ?y } WHERE { ?b <http://example.org/library/publicationYear> ?y }",
    ],
)
def test_rdflib_values_match_oxigraph(query: str, rdflib_store: RdflibStore, oxigraph_store: OxigraphStore) -> None:
    ours, theirs = rdflib_store.query(query), oxigraph_store.query(query)
    assert ours.columns == theirs.columns
    assert rows_of(ours) == rows_of(theirs)
    assert ours.boolean == theirs.boolean


def test_rdflib_values_are_plain_strings(rdflib_store: RdflibStore) -> None:
    assert rdflib_store.query("SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }").rows == (("594",),)
    res = rdflib_store.query(PREFIXES + 'SELECT ?b ?y WHERE { ?b rdfs:label "The Salt Cartographer" ; lib:publicationYear ?y }')
    ((book, year),) = res.rows
    assert book.startswith(LIB) and isinstance(year, str) and year.isdigit()
    ask = rdflib_store.query("ASK { ?s ?p ?o }")
    assert (ask.columns, ask.rows, ask.boolean) == (("answer",), ((True,),), True)


def test_rdflib_row_limit_and_truncated() -> None:
    store = RdflibStore(path=GRAPH, row_limit=5)
    books = PREFIXES + "SELECT ?b WHERE { ?b a lib:Book }"
    res = store.query(books)
    assert len(res.rows) == 5 and res.truncated
    res = store.query(books, limit=3)
    assert len(res.rows) == 3 and res.truncated
    res = store.query(books + " LIMIT 5")
    assert len(res.rows) == 5 and not res.truncated
    res = store.query(books, limit=50)  # the store's row_limit caps the caller's
    assert len(res.rows) == 5 and res.truncated
    res = store.query("CONSTRUCT { ?s ?p ?o } WHERE { ?s ?p ?o }")
    assert res.columns == ("subject", "predicate", "object") and len(res.rows) == 5 and res.truncated
    store.close()


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("SELECT ?x WHERE { ?x ?p }", "syntax error"),
        ("SELECT ?x WHERE { ?x nope:p ?o }", "nope"),
    ],
)
def test_rdflib_bad_query_is_a_parse_error(query: str, match: str, rdflib_store: RdflibStore) -> None:
    rdflib_store.warm_up()
    # Straight to the store: the guard in query() already refuses text that does not parse.
    with pytest.raises(QueryParseError, match=match) as info:
        rdflib_store._execute(query, 10)
    assert info.value.query == query
    assert info.value.details


def test_rdflib_unknown_prefix_through_query(rdflib_store: RdflibStore) -> None:
    with pytest.raises(QueryParseError, match="nope"):
        rdflib_store.query("SELECT ?x WHERE { ?x nope:p ?o }")


def test_rdflib_undeclared_graph_prefix_fails_like_oxigraph(rdflib_store: RdflibStore, oxigraph_store: OxigraphStore) -> None:
    query = "SELECT ?b WHERE { ?b a lib:Book }"
    with pytest.raises(QueryParseError):
        oxigraph_store.query(query)
    with pytest.raises(QueryParseError):
        rdflib_store.query(query)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * WHERE { SERVICE <http://127.0.0.1:9/sparql> { ?s ?p ?o } }",
        "SELECT * FROM <http://127.0.0.1:9/data.ttl> WHERE { ?s ?p ?o }",
        "SELECT * FROM NAMED <file:///etc/passwd> WHERE { GRAPH ?g { ?s ?p ?o } }",
    ],
)
def test_rdflib_refuses_remote_access(query: str, rdflib_store: RdflibStore) -> None:
    rdflib_store.warm_up()
    with pytest.raises(ReadOnlyViolationError, match="rdflib store"):
        rdflib_store._execute(query, 10)


def test_mutating_query_is_refused_before_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    store = RdflibStore(path=GRAPH)
    monkeypatch.setattr(store, "_execute", lambda q, n: pytest.fail("the store was reached"))
    for query in (
        f"INSERT DATA {{ <{LIB}x> <{LIB}p> <{LIB}y> }}",
        "DELETE WHERE { ?s ?p ?o }",
        "CLEAR ALL",
        "LOAD <http://example.org/x.ttl>",
    ):
        with pytest.raises(ReadOnlyViolationError):
            store.query(query)
    assert not store.is_warm  # refused before even loading


def test_rdflib_time_out(rdflib_store: RdflibStore) -> None:
    # About half a second in rdflib: long enough to overrun 0.05 s, short enough to end soon after.
    slow = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?p ?x . ?b a ?y }"
    with pytest.raises(QueryTimeoutError, match="0.05 s"):
        rdflib_store.query(slow, timeout=0.05)


def test_empty_query_is_an_input_error(rdflib_store: RdflibStore) -> None:
    with pytest.raises(InputError):
        rdflib_store.query("   ")


# ---- fake SPARQL endpoint --------------------------------------------------------------------

Responder = Callable[["_Handler", str], None]


class _Handler(BaseHTTPRequestHandler):
    server: _FakeServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode("utf-8")
        form = urllib.parse.parse_qs(body)
        query = form.get("query", [""])[0]
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "query": query, "body": body})
        self.server.responder(self, query)

    def send(self, status: int, body: str | bytes, ctype: str = "application/sparql-results+json", headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict[str, Any]]
    responder: Responder
    release: threading.Event


def default_responder(handler: _Handler, query: str) -> None:
    if query.strip().startswith("ASK"):
        handler.send(200, json.dumps({"head": {}, "boolean": True}))
    elif "COUNT(*)" in query:
        handler.send(200, select_json(["n"], [{"n": lit("42", XSD + "integer")}]))
    else:
        handler.send(200, select_json(["s"], [{"s": uri(f"{LIB}b{i}")} for i in range(10)]))


def uri(v: str) -> dict[str, str]:
    return {"type": "uri", "value": v}


def lit(v: str, datatype: str | None = None, lang: str | None = None) -> dict[str, str]:
    out = {"type": "literal", "value": v}
    if datatype:
        out["datatype"] = datatype
    if lang:
        out["xml:lang"] = lang
    return out


def select_json(variables: list[str], bindings: list[dict[str, Any]]) -> str:
    return json.dumps({"head": {"vars": variables}, "results": {"bindings": bindings}})


@pytest.fixture(scope="module")
def fake_server() -> Iterator[_FakeServer]:
    server = _FakeServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    server.responder = default_responder
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture()
def endpoint(fake_server: _FakeServer) -> Iterator[_FakeServer]:
    fake_server.requests = []
    fake_server.responder = default_responder
    fake_server.release.clear()
    yield fake_server
    fake_server.release.set()
    fake_server.responder = default_responder


def url_of(server: _FakeServer, path: str = "/query") -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}{path}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- HTTP store ------------------------------------------------------------------------------


def test_http_defaults_and_no_io_in_init() -> None:
    store = SparqlEndpointStore(url="http://127.0.0.1:9/query")  # nothing listens there; no I/O yet
    assert store.timeout == DEFAULT_TIMEOUT
    assert store.row_limit == DEFAULT_ROW_LIMIT
    assert store.type_name == "sparql_endpoint"
    assert store.language == "sparql"
    assert store.url == "http://127.0.0.1:9/query"
    assert store.username is None and store.headers == {}
    assert not store.is_warm


@pytest.mark.parametrize("url", ["", "ftp://example.org/sparql", "localhost:7878/query", "http:///query"])
def test_http_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        SparqlEndpointStore(url=url)


def test_http_request_follows_the_protocol(endpoint: _FakeServer) -> None:
    store = SparqlEndpointStore(url=url_of(endpoint), headers={"X-Trace": "abc"})
    res = store.query("SELECT ?s WHERE { ?s ?p ?o }")
    assert res.columns == ("s",) and len(res.rows) == 10
    ask, select = endpoint.requests
    assert ask["query"] == "ASK {}"  # warm_up checked the endpoint answers
    assert select["path"] == "/query"
    assert select["query"] == "SELECT ?s WHERE { ?s ?p ?o }"
    headers = {k.lower(): v for k, v in select["headers"].items()}
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["accept"].startswith("application/sparql-results+json")
    assert headers["x-trace"] == "abc"
    assert "authorization" not in headers
    store.close()


def test_http_basic_auth(endpoint: _FakeServer) -> None:
    store = SparqlEndpointStore(url=url_of(endpoint), username="alice", password="pa:ss wörd")
    store.query("SELECT ?s WHERE { ?s ?p ?o }")
    auth = {k.lower(): v for k, v in endpoint.requests[-1]["headers"].items()}["authorization"]
    assert auth.startswith("Basic ")
    assert base64.b64decode(auth[6:]).decode() == "alice:pa:ss wörd"


def test_http_credentials_in_url_are_used_and_hidden(endpoint: _FakeServer) -> None:
    host, port = endpoint.server_address[:2]
    store = SparqlEndpointStore(url=f"http://bob:s3cr%40t@{host}:{port}/query")
    assert store.url == url_of(endpoint)
    assert "s3cr" not in repr(store) and "bob" not in repr(store)
    store.warm_up()
    auth = {k.lower(): v for k, v in endpoint.requests[-1]["headers"].items()}["authorization"]
    assert base64.b64decode(auth[6:]).decode() == "bob:s3cr@t"


def test_http_warm_up_checks_once(endpoint: _FakeServer) -> None:
    store = SparqlEndpointStore(url=url_of(endpoint))
    assert endpoint.requests == []
    store.warm_up()
    store.warm_up()
    store.query("SELECT ?s WHERE { ?s ?p ?o }")
    store.query("SELECT ?s WHERE { ?s ?p ?o }")
    assert [r["query"] for r in endpoint.requests].count("ASK {}") == 1


def test_http_select_values(endpoint: _FakeServer) -> None:
    bindings = [
        {"s": uri(LIB + "b1"), "label": lit("Dust", lang="en"), "n": lit("412", XSD + "integer"), "x": {"type": "bnode", "value": "b0"}},
        {"s": uri(LIB + "b2"), "n": {"type": "typed-literal", "value": "4.5", "datatype": XSD + "decimal"}},
    ]
    endpoint.responder = lambda h, q: h.send(200, select_json(["s", "label", "n", "x"], bindings)) if "ASK" not in q else default_responder(h, q)
    res = SparqlEndpointStore(url=url_of(endpoint)).query("SELECT * WHERE { ?s ?p ?o }")
    assert res.columns == ("s", "label", "n", "x")
    assert res.rows == ((LIB + "b1", "Dust", "412", "b0"), (LIB + "b2", None, "4.5", None))
    assert res.boolean is None and not res.truncated


def test_http_ask(endpoint: _FakeServer) -> None:
    endpoint.responder = lambda h, q: h.send(200, json.dumps({"head": {}, "boolean": "nope" not in q}))
    store = SparqlEndpointStore(url=url_of(endpoint))
    yes, no = store.query("ASK { ?s ?p ?o }"), store.query("ASK { ?s ?p 'nope' }")
    assert (yes.columns, yes.rows, yes.boolean) == (("answer",), ((True,),), True)
    assert (no.rows, no.boolean) == (((False,),), False)


def test_http_row_limit_and_truncated(endpoint: _FakeServer) -> None:
    store = SparqlEndpointStore(url=url_of(endpoint), row_limit=3)
    res = store.query("SELECT ?s WHERE { ?s ?p ?o }")
    assert res.rows == tuple((f"{LIB}b{i}",) for i in range(3)) and res.truncated
    res = store.query("SELECT ?s WHERE { ?s ?p ?o }", limit=10)
    assert len(res.rows) == 3 and res.truncated
    exact = SparqlEndpointStore(url=url_of(endpoint), row_limit=10).query("SELECT ?s WHERE { ?s ?p ?o }")
    assert len(exact.rows) == 10 and not exact.truncated


def test_http_stops_reading_after_the_limit(endpoint: _FakeServer) -> None:
    def endless(h: _Handler, q: str) -> None:
        if "ASK" in q:
            return default_responder(h, q)
        h.send_response(200)
        h.send_header("Content-Type", "application/sparql-results+json")
        h.end_headers()
        h.wfile.write(b'{"head":{"vars":["s"]},"results":{"bindings":[')
        h.wfile.write(b",".join(json.dumps({"s": uri(f"{LIB}b{i}")}).encode() for i in range(5)))
        h.wfile.flush()
        endpoint.release.wait(60)  # the rest never comes while the client waits

    endpoint.responder = endless
    store = SparqlEndpointStore(url=url_of(endpoint), row_limit=3, timeout=30)
    start = time.monotonic()
    res = store.query("SELECT ?s WHERE { ?s ?p ?o }")
    assert time.monotonic() - start < 10  # it stopped reading at the limit, long before the 30 s time-out
    assert len(res.rows) == 3 and res.truncated


def test_http_head_after_results(endpoint: _FakeServer) -> None:
    doc = '{"results":{"bindings":[{"a":{"type":"literal","value":"1"},"b":{"type":"literal","value":"2"}}]},"head":{"vars":["b","a"]}}'
    endpoint.responder = lambda h, q: h.send(200, doc) if "ASK" not in q else default_responder(h, q)
    res = SparqlEndpointStore(url=url_of(endpoint)).query("SELECT ?b ?a WHERE {}")
    assert res.columns == ("b", "a") and res.rows == (("2", "1"),)


def test_json_stream_reads_any_chunking() -> None:
    doc = {
        "head": {"vars": ["s", "n", "l"], "link": []},
        "results": {
            "distinct": False,
            "bindings": [
                {"s": uri(f"{LIB}b{i}"), "n": lit(str(12345 * i), XSD + "integer"), "l": lit('quote " and \\ é ✓', lang="en")} for i in range(20)
            ],
        },
    }
    text = json.dumps(doc, indent=1)
    for size in (1, 2, 7, 64, 10_000):
        pieces = iter([text[i : i + size] for i in range(0, len(text), size)])
        res = _read_json_results(lambda n: next(pieces, ""), 100, "q", str)
        assert res.columns == ("s", "n", "l")
        assert res.rows == tuple((f"{LIB}b{i}", str(12345 * i), 'quote " and \\ é ✓') for i in range(20))
    pieces = iter(["12", "34", "5 "])
    assert _JsonStream(lambda n: next(pieces, "")).value() == 12345  # a number cut across chunks


def test_http_construct_reads_ntriples(endpoint: _FakeServer) -> None:
    nt = (
        f"<{LIB}b1> <{LIB}title> \"The \\\"Salt\\\" Map\\u00e9\"@en .\n"
        f"# a comment\n"
        f"_:x1 <{LIB}year> \"1991\"^^<{XSD}integer> .\n"
        f"<{LIB}b2> <{LIB}author> <{LIB}a1> .\n"
    )
    endpoint.responder = lambda h, q: h.send(200, nt, "application/n-triples") if "CONSTRUCT" in q else default_responder(h, q)
    store = SparqlEndpointStore(url=url_of(endpoint))
    res = store.query("CONSTRUCT { ?s ?p ?o } WHERE { ?s ?p ?o }")
    assert res.columns == ("subject", "predicate", "object")
    assert res.rows == (
        (LIB + "b1", LIB + "title", 'The "Salt" Mapé'),
        ("x1", LIB + "year", "1991"),
        (LIB + "b2", LIB + "author", LIB + "a1"),
    )
    res = store.query("CONSTRUCT { ?s ?p ?o } WHERE { ?s ?p ?o }", limit=2)
    assert len(res.rows) == 2 and res.truncated


def _fail_with(status: int, body: str, ctype: str = "text/plain", headers: dict[str, str] | None = None) -> Responder:
    def responder(h: _Handler, q: str) -> None:
        if q == "ASK {}":
            return default_responder(h, q)
        h.send(status, body, ctype, headers)

    return responder


@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (400, "Parse error at 1:8: expected WHERE", QueryParseError, "expected WHERE"),
        (401, "Unauthorized", StoreUnavailableError, "username and password"),
        (403, "Forbidden", StoreUnavailableError, "HTTP 403"),
        (404, "Not Found", StoreUnavailableError, "check the URL's path"),
        (500, "RocksDB exploded", StoreUnavailableError, "HTTP 500: RocksDB exploded"),
        (503, "Service Unavailable", StoreUnavailableError, "HTTP 503"),
        (504, "Gateway Timeout", QueryTimeoutError, "HTTP 504"),
        (405, "Method Not Allowed", StoreError, "HTTP 405"),
    ],
)
def test_http_errors_map_to_ragkit_errors(endpoint: _FakeServer, status: int, body: str, error: type[Exception], match: str) -> None:
    endpoint.responder = _fail_with(status, body)
    store = SparqlEndpointStore(url=url_of(endpoint))
    with pytest.raises(error, match=match) as info:
        store.query("SELECT ?s WHERE { ?s ?p ?o }")
    if status >= 401 and status != 504 and status != 405:
        assert url_of(endpoint) in str(info.value)
    if isinstance(info.value, QueryParseError):
        assert info.value.details == [body]
        assert info.value.query == "SELECT ?s WHERE { ?s ?p ?o }"


def test_http_redirect_is_not_followed(endpoint: _FakeServer) -> None:
    endpoint.responder = _fail_with(302, "", headers={"Location": url_of(endpoint, "/elsewhere?key=abc")})
    store = SparqlEndpointStore(url=url_of(endpoint), username="alice", password="wonderland")
    with pytest.raises(StoreUnavailableError, match="redirects to .*/elsewhere") as info:
        store.query("SELECT ?s WHERE { ?s ?p ?o }")
    assert "key=abc" not in str(info.value)
    assert [r["path"] for r in endpoint.requests] == ["/query", "/query"]


def test_http_non_sparql_answers(endpoint: _FakeServer) -> None:
    store = SparqlEndpointStore(url=url_of(endpoint))
    store.warm_up()
    endpoint.responder = _fail_with(200, "<html>login</html>", "text/html")
    with pytest.raises(StoreError, match="text/html"):
        store.query("SELECT ?s WHERE { ?s ?p ?o }")
    endpoint.responder = _fail_with(200, '{"head": {"vars": ["s"]}, "results": {"bindings": [ oops', "application/sparql-results+json")
    with pytest.raises(StoreError, match="malformed"):
        store.query("SELECT ?s WHERE { ?s ?p ?o }")
    # Oxigraph's way to report its own time-out once the 200 header has gone out.
    endpoint.responder = _fail_with(200, '{"head":{"vars":["n"]},"results":{"bindings":[The SPARQL operation has been cancelled', "application/sparql-results+json")
    with pytest.raises(QueryTimeoutError, match="cancelled"):
        store.query("SELECT ?s WHERE { ?s ?p ?o }")


def test_http_time_out_waiting_for_an_answer(endpoint: _FakeServer) -> None:
    def slow(h: _Handler, q: str) -> None:
        if q == "ASK {}":
            return default_responder(h, q)
        endpoint.release.wait(30)

    endpoint.responder = slow
    store = SparqlEndpointStore(url=url_of(endpoint), timeout=0.3)
    store.warm_up()
    # The server would hold each answer for 30 s: returning well before that shows the time-out cut
    # the wait (the bound is loose on purpose, so a loaded test machine does not fail it).
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="0.3 s"):
        store.query("SELECT ?s WHERE { ?s ?p ?o }")
    assert time.monotonic() - start < 10
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="0.1 s"):
        store.query("SELECT ?s WHERE { ?s ?p ?o }", timeout=0.1)
    assert time.monotonic() - start < 10


def test_http_time_out_while_rows_trickle_in(endpoint: _FakeServer) -> None:
    def trickle(h: _Handler, q: str) -> None:
        if q == "ASK {}":
            return default_responder(h, q)
        h.send_response(200)
        h.send_header("Content-Type", "application/sparql-results+json")
        h.end_headers()
        h.wfile.write(b'{"head":{"vars":["s"]},"results":{"bindings":[')
        for i in range(300):
            h.wfile.write(b'{"s":{"type":"literal","value":"x"}},')
            h.wfile.flush()
            if endpoint.release.wait(0.1):
                return

    endpoint.responder = trickle
    store = SparqlEndpointStore(url=url_of(endpoint), timeout=0.5)
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        store.query("SELECT ?s WHERE { ?s ?p ?o }")
    assert time.monotonic() - start < 10  # the rows would trickle for 30 s


def test_http_server_down() -> None:
    url = f"http://127.0.0.1:{free_port()}/query"
    store = SparqlEndpointStore(url=url)
    with pytest.raises(StoreUnavailableError, match="check that the server is running") as info:
        store.warm_up()
    assert url in str(info.value)
    assert not store.is_warm
    with pytest.raises(StoreUnavailableError):
        store.query("ASK { ?s ?p ?o }")


def test_http_setup_needs_a_sparql_answer(endpoint: _FakeServer) -> None:
    endpoint.responder = lambda h, q: h.send(200, json.dumps({"head": {"vars": []}, "results": {"bindings": []}}))
    with pytest.raises(StoreUnavailableError, match="does not look like a SPARQL query endpoint"):
        SparqlEndpointStore(url=url_of(endpoint)).warm_up()
    endpoint.responder = lambda h, q: h.send(400, "unknown query form")
    with pytest.raises(StoreUnavailableError, match="did not answer 'ASK {}'"):
        SparqlEndpointStore(url=url_of(endpoint)).warm_up()


def test_http_fingerprint_follows_the_data(endpoint: _FakeServer) -> None:
    count = {"n": "42"}

    def counting(h: _Handler, q: str) -> None:
        if "COUNT(*)" in q:
            return h.send(200, select_json(["n"], [{"n": lit(count["n"], XSD + "integer")}]))
        return default_responder(h, q)

    endpoint.responder = counting
    store = SparqlEndpointStore(url=url_of(endpoint))
    first = store.fingerprint()
    assert first == store.fingerprint() and first.endswith("-42")
    assert "127.0.0.1" not in first
    count["n"] = "43"
    assert store.fingerprint() != first
    other = SparqlEndpointStore(url=url_of(endpoint, "/other"))
    assert other.fingerprint().split("-")[0] != first.split("-")[0]


def test_mutating_query_never_reaches_the_endpoint(endpoint: _FakeServer) -> None:
    store = SparqlEndpointStore(url=url_of(endpoint))
    for query in (f"INSERT DATA {{ <{LIB}x> <{LIB}p> <{LIB}y> }}", "DROP ALL", "DELETE WHERE { ?s ?p ?o }"):
        with pytest.raises(ReadOnlyViolationError):
            store.query(query)
    assert endpoint.requests == []


SECRETS = ("alice-the-user", "hunter2-password", "tok-0123456789")


def test_http_credentials_never_appear(endpoint: _FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    def echo(h: _Handler, q: str) -> None:
        if q == "ASK {}":
            return default_responder(h, q)
        auth = h.headers.get("Authorization", "")
        decoded = base64.b64decode(auth[6:]).decode() if auth else ""
        body = f"request had {auth} = {decoded} and key {h.headers.get('X-Api-Key')}"
        h.send(int(q.split()[-1]), body)

    endpoint.responder = echo
    user, password, token = SECRETS
    store = SparqlEndpointStore(url=url_of(endpoint), username=user, password=password, headers={"X-Api-Key": token})
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    messages = [repr(store), str(store.init_params.keys())]
    caplog.set_level(logging.DEBUG)
    for status in (400, 401, 404, 500, 418):
        with pytest.raises(Exception) as info:
            store.query(f"SELECT * WHERE {{ ?s ?p ?o }} # {status}")
        messages.append(str(info.value))
        messages.extend(getattr(info.value, "details", []))
    messages.append(caplog.text)
    text = "\n".join(messages)
    assert "request had" in text  # the server's message does come through ...
    for secret in (*SECRETS, basic):
        assert secret not in text  # ... with the secrets masked
    down = SparqlEndpointStore(url=f"http://{user}:{password}@127.0.0.1:{free_port()}/query")
    with pytest.raises(StoreUnavailableError) as info:
        down.warm_up()
    assert user not in str(info.value) and password not in str(info.value)
    assert user not in repr(down) and password not in repr(down)

"""``ragkit serve`` for real: the openai client streaming from a served SmolLM2 pipeline, the
``openai_llm`` resource generating through it, and a graph store that goes down and comes back.

* The served pipeline runs in a ``ragkit serve`` subprocess on a free port of 127.0.0.1 (the real
  CLI, uvicorn and the bundled SmolLM2-135M), always stopped at the end.
* The store test serves a real SPARQL pipeline (SmolLM2 writes the query) in this process, against
  a real ``oxigraph serve`` that the test stops and starts again on the same port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragkit import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "fixtures" / "library" / "graph.ttl"
KEY = "integration-key"
MODEL = "serve_chat"
QUESTION = "What is the capital of France? Answer in one word."

CHAT_PIPELINE = """\
version: 1
name: serve_chat
resources:
  llm: {type: local_llm, device: cpu, dtype: float32}   # float32: a batch decodes as each request alone would
stages:
  - {name: prompt, type: prompt_builder, llm: llm, max_prompt_tokens: 256, system: "Answer the question briefly."}
  - {name: generate, type: answer_generator, llm: llm, max_new_tokens: 24}
connections: [prompt.prompt -> generate.prompt]
inputs: {question: [prompt.question]}
outputs: {answer: generate.text}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``ragkit serve`` on the chat pipeline with the real SmolLM2; yields the base URL."""
    base = tmp_path_factory.mktemp("serve")
    pipeline = base / "serve_chat.yaml"
    pipeline.write_text(CHAT_PIPELINE)
    port = _free_port()
    log = base / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGKIT_NUM_THREADS": os.environ.get("RAGKIT_NUM_THREADS", "1")}
    env.pop("RAGKIT_API_KEYS", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragkit.cli", "serve", str(pipeline), "--port", str(port), "--api-key", KEY, "--max-queue", "8"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a cold model load on a busy 2-core machine
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ragkit serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if _get(f"{url}/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ragkit serve did not answer /health: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        _stop(proc)


def test_openai_client_streams_a_chat_completion(served: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{served}/v1", api_key=KEY, max_retries=0, timeout=300)
    assert [m.id for m in client.models.list().data] == [MODEL]
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage = [], [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert len(pieces) > 1  # streamed token by token, not in one piece
    assert finish == ["stop"]
    assert usage is not None and 0 < usage.completion_tokens <= 25 and usage.prompt_tokens > 0
    # greedy decoding: the same question, not streamed, gives the same answer
    full = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    assert full.choices[0].message.content == "".join(pieces).strip()
    assert full.usage is not None and full.usage.completion_tokens == usage.completion_tokens


def test_concurrent_requests_run_together_and_each_gets_its_own_answer(served: str) -> None:
    import json
    from concurrent.futures import ThreadPoolExecutor

    openai = pytest.importorskip("openai")
    assert json.loads(_get(f"{served}/health")[1])["concurrency"] == 4  # every component declares thread_safe
    client = openai.OpenAI(base_url=f"{served}/v1", api_key=KEY, max_retries=0, timeout=300)
    questions = [QUESTION, "Name one colour of the sky.", "How many legs does a cat have?"]

    def ask(question: str, stream: bool) -> str:
        messages = [{"role": "user", "content": question}]
        if not stream:
            return client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content or ""
        chunks = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

    alone = {q: ask(q, stream=False) for q in questions}
    assert len(set(alone.values())) == len(questions)  # distinct answers, so a mix-up would show
    jobs = [(q, stream) for q in questions for stream in (False, True)]
    with ThreadPoolExecutor(len(jobs)) as pool:  # 4 run at once, the other 2 wait in the queue
        together = list(pool.map(lambda job: ask(*job), jobs))
    assert together == [alone[q] for q, _ in jobs]


def test_openai_client_without_the_key_gets_401(served: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    assert "invalid API key" in str(info.value)


def test_openai_llm_resource_generates_through_the_server(served: str, tmp_path: Path) -> None:
    pipeline = tmp_path / "remote.yaml"
    pipeline.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            name: remote_chat
            resources:
              llm: {{type: openai_llm, base_url: "{served}/v1", model: {MODEL}, api_key: "${{env:SERVE_TEST_KEY}}", timeout: 300}}
            stages:
              - {{name: prompt, type: prompt_builder, llm: llm, max_prompt_tokens: 512}}
              - {{name: generate, type: answer_generator, llm: llm, max_new_tokens: 24}}
            connections: [prompt.prompt -> generate.prompt]
            inputs: {{question: [prompt.question]}}
            outputs: {{answer: generate.text}}
            """
        )
    )
    os.environ["SERVE_TEST_KEY"] = KEY
    try:
        pipe = Pipeline.from_yaml(pipeline)
    finally:
        del os.environ["SERVE_TEST_KEY"]
    tokens: list[str] = []
    with pipe:
        result = pipe.run(question=QUESTION, on_token=tokens.append)
    assert result["answer"] and "".join(tokens).strip() == result["answer"]
    st = result.trace.stage("generate")
    assert st.model_calls == 1 and st.ttft is not None and st.tpot is not None
    assert 0 < st.tokens_out <= 25 and st.tokens_in > 0  # the server's usage
    assert result.trace.ttft is not None
    status, metrics = _get(f"{served}/metrics")
    assert status == 200
    line = next(x for x in metrics.splitlines() if x.startswith('ragkit_requests_total{endpoint="/v1/chat/completions",status="200"}'))
    assert float(line.split()[-1]) >= 1


# ---- a graph store that goes down -------------------------------------------------------------


class Oxigraph:
    """An ``oxigraph serve`` over an on-disk database, on a fixed port so it can come back there."""

    def __init__(self, binary: str, location: Path, log: Path) -> None:
        self.binary, self.location, self.log = binary, location, log
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/query"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "serve", "--location", str(self.location), "--bind", f"127.0.0.1:{self.port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"oxigraph serve did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def answers(self) -> bool:
        body = urllib.parse.urlencode({"query": "ASK {}"}).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Accept": "application/sparql-results+json"})
        try:
            with urllib.request.urlopen(req, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@pytest.fixture(scope="module")
def oxigraph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oxigraph]:
    binary = shutil.which("oxigraph") or str(Path(sys.executable).with_name("oxigraph"))
    if not Path(binary).is_file():
        pytest.skip("the oxigraph CLI is not installed (pip install oxigraph)")
    base = tmp_path_factory.mktemp("oxigraph-serve")
    subprocess.run([binary, "load", "--location", str(base / "db"), "--file", str(GRAPH)], check=True, capture_output=True, timeout=120)
    server = Oxigraph(binary, base / "db", base / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_store_down_is_503_and_the_server_recovers_when_it_is_back(oxigraph: Oxigraph, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from ragkit.serve.app import ServeConfig, create_app

    pipeline = tmp_path / "kg.yaml"
    pipeline.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            name: kg_remote
            resources:
              llm: {{type: local_llm, device: cpu}}
              graph: {{type: sparql_endpoint, url: "{oxigraph.url}", timeout: 10}}
            stages:
              - {{name: schema, type: graph_schema_reader, store: graph, max_tokens: 400}}
              - {{name: querygen, type: sparql_generator, llm: llm, num_candidates: 1, repair_rounds: 0, max_new_tokens: 48}}
              - {{name: retrieve, type: graph_query_retriever, store: graph}}
              - {{name: prompt, type: prompt_builder, llm: llm, max_prompt_tokens: 768}}
              - {{name: generate, type: answer_generator, llm: llm, max_new_tokens: 12}}
            connections:
              - schema.graph_schema -> querygen.graph_schema
              - schema.text -> querygen.schema_text
              - querygen.generated -> retrieve.generated
              - retrieve.context -> prompt.graph
              - prompt.prompt -> generate.prompt
            inputs: {{question: [schema.question, querygen.question, prompt.question]}}
            outputs: {{answer: generate.text, query: retrieve.query}}
            """
        )
    )
    app = create_app(Pipeline.from_yaml(pipeline), ServeConfig(max_queue=4))
    state = app.state.ragkit
    state.warm_up()
    assert state.unavailable is None
    ask = {"question": "Who wrote Cold Water Gospel?"}
    try:
        with TestClient(app) as client:
            oxigraph.stop()
            r = client.post("/query", json=ask)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"]
            err = r.json()["error"]
            assert err["code"] == "store_unavailable"
            assert "graph store 'graph' (sparql_endpoint) is unavailable" in err["message"]
            assert f"127.0.0.1:{oxigraph.port}" in err["message"]
            r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": ask["question"]}], "stream": True})
            assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
            assert client.get("/health").status_code == 503

            oxigraph.start()
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            r = client.post("/query", json=ask)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["query"] and body["query"] == body["outputs"]["query"]
            assert [s["name"] for s in body["trace"]["stages"]] == ["schema", "querygen", "retrieve", "prompt", "generate"]
            assert all(s["error"] is None for s in body["trace"]["stages"])
            assert [c["kind"] for c in body["context"]] == ["graph"] and 0 <= body["context"][0]["confidence"] <= 1
            metrics = client.get("/metrics").text
            assert 'ragkit_requests_total{endpoint="/query",status="503"} 1.0' in metrics
            assert 'ragkit_requests_total{endpoint="/query",status="200"} 1.0' in metrics
    finally:
        state.close()

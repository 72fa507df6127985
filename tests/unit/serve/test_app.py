"""The server on fakes, through FastAPI's TestClient and httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragkit.errors import ConfigError, ModelUnavailableError
from ragkit.serve.app import ServeConfig, create_app
from ragkit.serve.runner import PipelineRunner
from ragkit.testing import ScriptedLLM

from serve_helpers import ANSWER, QUERY, SwitchableStore, chat_pipeline, gated_pipeline, kgqa_pipeline

CHAT = {"messages": [{"role": "user", "content": "Where does Ann live?"}]}


def client(pipe: Any = None, **config: Any) -> TestClient:
    return TestClient(create_app(pipe or chat_pipeline(), ServeConfig(**config)))


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of an event stream, JSON-decoded except ``[DONE]``."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ---- OpenAI API -------------------------------------------------------------------------------


def test_chat_completion_answers_in_openai_shape() -> None:
    r = client().post("/v1/chat/completions", json={**CHAT, "model": "fake_chat", "temperature": 0.2, "user": "x"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "fake_chat" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"]["completion_tokens"] == 4  # the scripted LLM streams word by word
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4


def test_chat_question_is_the_last_user_message_and_text_parts_are_joined() -> None:
    llm = ScriptedLLM(responses=[ANSWER])
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "Where does "}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "Ann live?"}]},
    ]
    assert client(chat_pipeline(llm=llm)).post("/v1/chat/completions", json={"messages": messages}).status_code == 200
    assert "Question: Where does Ann live?" in llm.prompts[-1]
    assert "first question" not in llm.prompts[-1]


def test_streamed_chat_is_openai_sse_ending_with_done() -> None:
    r = client().post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(content) == ANSWER
    assert sum(1 for piece in content if piece) == 4  # one chunk per streamed piece
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop" and finish[0]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_failure_after_the_first_token_ends_the_stream_with_an_error_event() -> None:
    from ragkit.core.metrics import emit_token

    class Breaks(ScriptedLLM):
        def generate(self, *args: Any, **kwargs: Any) -> Any:
            emit_token("Ann")
            raise ZeroDivisionError("boom")

    r = client(chat_pipeline(llm=Breaks())).post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200  # the stream had begun
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[1]["choices"][0]["delta"] == {"content": "Ann"}
    assert events[-2]["error"]["message"] == "the pipeline failed: stage 'generate' failed: boom"
    assert all(not e.get("choices") or e["choices"][0]["finish_reason"] is None for e in events[:-2])


def test_stream_without_include_usage_sends_no_usage_chunk() -> None:
    events = sse_events(client().post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert all("usage" not in e for e in events[:-1])


def test_models_lists_the_pipeline() -> None:
    data = client().get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["fake_chat"] and data[0]["object"] == "model"
    assert client(model_name="my-rag").get("/v1/models").json()["data"][0]["id"] == "my-rag"


def test_unknown_model_is_404_naming_the_served_one() -> None:
    r = client().post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found" and "'fake_chat'" in r.json()["error"]["message"]


# ---- /query -----------------------------------------------------------------------------------


def test_query_returns_answer_query_context_and_trace() -> None:
    r = client(kgqa_pipeline()).post("/query", json={"question": "Where does Ann live?"})
    assert r.status_code == 200
    body = r.json()
    assert body["answer"] == ANSWER
    assert body["query"] == QUERY
    [item] = body["context"]
    assert item["kind"] == "graph" and item["rows"] == [[TINY_ROME]]
    assert 0 < item["confidence"] <= 1 and item["error"] is None
    assert [s["name"] for s in body["trace"]["stages"]] == ["schema", "querygen", "retrieve", "prompt", "generate"]
    gen = body["trace"]["stages"][-1]
    assert gen["tokens_out"] == 4 and gen["model_calls"] == 1
    assert body["trace"]["ttft"] is not None
    assert body["outputs"]["query"] == QUERY


TINY_ROME = "http://example.org/tiny/rome"


def test_query_rejects_unknown_fields_and_inputs() -> None:
    c = client()
    r = c.post("/query", json={"question": "q", "top_k": 3})
    assert r.status_code == 422 and "top_k" in r.json()["error"]["message"]
    r = c.post("/query", json={"question": "q", "inputs": {"colour": "red"}})
    assert r.status_code == 400 and "unknown pipeline input" in r.json()["error"]["message"]


def test_empty_question_is_400_with_the_pipeline_message() -> None:
    r = client().post("/query", json={"question": "  "})
    assert r.status_code == 400 and "question is empty" in r.json()["error"]["message"]


# ---- bad requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "ctype", "status", "needle"),
    [
        (b'{"messages": [', "application/json", 400, "not valid JSON"),
        (b"hello", "text/plain", 400, "must be a JSON object"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object"),
        (b"{}", "application/json", 422, "messages: Field required"),
        (b'{"messages": []}', "application/json", 422, "messages"),
        (b'{"messages": [{"content": "hi"}]}', "application/json", 422, "messages.0.role: Field required"),
    ],
)
def test_bad_bodies_get_a_clear_error(content: bytes, ctype: str, status: int, needle: str) -> None:
    r = client().post("/v1/chat/completions", content=content, headers={"content-type": ctype})
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_no_user_message_and_n_above_one_are_400() -> None:
    c = client()
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_question"
    r = c.post("/v1/chat/completions", json={**CHAT, "n": 2})
    assert r.status_code == 400 and "n must be 1" in r.json()["error"]["message"]


def test_unknown_path_lists_the_endpoints() -> None:
    r = client().get("/v2/whatever")
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]


# ---- limits and auth --------------------------------------------------------------------------


def test_body_over_the_limit_is_413() -> None:
    c = client(max_body_bytes=2048)
    big = {"messages": [{"role": "user", "content": "x" * 4000}]}
    r = c.post("/v1/chat/completions", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large" and "--max-body-bytes" in r.json()["error"]["message"]
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_chunked_body_over_the_limit_is_413_without_content_length() -> None:
    c = client(max_body_bytes=2048)

    def chunks() -> Any:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    r = c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_api_keys_are_required_when_configured() -> None:
    c = client(api_keys=("k1", "k2"))
    r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["error"]["message"] and r.json()["error"]["code"] == "missing_api_key"
    r = c.post("/query", json={"question": "q"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert c.get("/v1/models").status_code == 401
    assert c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer k2"}).status_code == 200
    assert c.post("/v1/chat/completions", json=CHAT, headers={"X-API-Key": "k1"}).status_code == 200
    assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200


def test_full_queue_is_429_with_retry_after() -> None:
    import httpx

    gate = threading.Event()
    pipe, stage = gated_pipeline(gate)
    app = create_app(pipe, ServeConfig(max_queue=2))
    runner = app.state.ragkit.runner

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            held = [asyncio.create_task(c.post("/query", json={"question": f"q{i}"})) for i in range(2)]
            while runner.running + runner.waiting < 2:
                await asyncio.sleep(0.01)
            assert runner.running == 1 and runner.waiting == 1  # one run at a time, one waiting
            refused = await c.post("/v1/chat/completions", json=CHAT)
            metrics = (await c.get("/metrics")).text
            gate.set()
            done = await asyncio.gather(*held)
            after = await c.post("/query", json={"question": "again"})
            return [refused, *done, after, httpx.Response(200, text=metrics)]

    refused, a, b, after, metrics = asyncio.run(scenario())
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full" and "2 requests" in refused.json()["error"]["message"]
    assert 'ragkit_queue_depth{pipeline="gated"} 1.0' in metrics.text
    assert 'ragkit_requests_running{pipeline="gated"} 1.0' in metrics.text
    assert a.status_code == b.status_code == after.status_code == 200
    assert {a.json()["answer"], b.json()["answer"]} == {"done: q0", "done: q1"}
    assert runner.running == runner.waiting == 0


def test_metrics_count_requests_tokens_and_ttft() -> None:
    c = client()
    c.post("/v1/chat/completions", json=CHAT)
    c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    c.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    text = c.get("/metrics").text
    assert 'ragkit_requests_total{endpoint="/v1/chat/completions",status="200"} 2.0' in text
    assert 'ragkit_requests_total{endpoint="/v1/chat/completions",status="400"} 1.0' in text
    assert 'ragkit_tokens_out_total{pipeline="fake_chat"} 8.0' in text
    assert 'ragkit_ttft_seconds_count{pipeline="fake_chat"} 2.0' in text
    assert 'ragkit_request_seconds_count{endpoint="/v1/chat/completions"} 3.0' in text
    assert 'ragkit_stage_seconds_count{pipeline="fake_chat",stage="generate"} 2.0' in text
    assert 'ragkit_pipeline_runs_total{outcome="ok",pipeline="fake_chat"} 2.0' in text
    assert 'ragkit_queue_depth{pipeline="fake_chat"} 0.0' in text


# ---- stores and models that are down ----------------------------------------------------------


def test_store_down_is_503_naming_the_store_and_recovers() -> None:
    store = SwitchableStore()
    c = client(kgqa_pipeline(store))
    assert c.post("/query", json={"question": "Where does Ann live?"}).status_code == 200
    store.down = True
    r = c.post("/query", json={"question": "Where does Ann live?"})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    err = r.json()["error"]
    assert err["code"] == "store_unavailable"
    assert "graph store 'graph' (tiny_graph_store) is unavailable" in err["message"] and "cannot reach the tiny store" in err["message"]
    # a streamed request fails before its first token: it gets the status, not a 200 stream
    r = c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    health = c.get("/health")
    assert health.status_code == 503 and "tiny_graph_store" in health.json()["error"]
    store.down = False
    assert c.get("/health").json()["status"] == "ok"
    assert c.post("/query", json={"question": "Where does Ann live?"}).json()["answer"] == ANSWER
    assert 'ragkit_pipeline_runs_total{outcome="StoreUnavailableError",pipeline="fake_kgqa"} 2.0' in c.get("/metrics").text


def test_store_down_in_the_retriever_is_503_not_an_empty_context() -> None:
    store = SwitchableStore()
    executed = store._execute

    def down(query: str, limit: int) -> Any:  # the schema still reads; only running queries fails
        store.down = True
        try:
            return executed(query, limit)
        finally:
            store.down = False

    store._execute = down  # type: ignore[method-assign]
    r = client(kgqa_pipeline(store)).post("/query", json={"question": "Where does Ann live?"})
    assert r.status_code == 503 and "'graph'" in r.json()["error"]["message"]


def test_remote_model_down_is_503_model_unavailable() -> None:
    class DownLLM(ScriptedLLM):
        def generate(self, *args: Any, **kwargs: Any) -> Any:
            raise ModelUnavailableError("cannot reach the model server at http://127.0.0.1:9/v1")

    r = client(chat_pipeline(llm=DownLLM())).post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    assert "cannot reach the model server" in r.json()["error"]["message"]


def test_a_failing_stage_is_500_with_its_name_and_no_traceback() -> None:
    class Broken(ScriptedLLM):
        def generate(self, *args: Any, **kwargs: Any) -> Any:
            raise ZeroDivisionError("boom")

    r = client(chat_pipeline(llm=Broken())).post("/query", json={"question": "q"})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "the pipeline failed: stage 'generate' failed: boom"
    assert "Traceback" not in r.text


# ---- configuration ----------------------------------------------------------------------------


def test_pipeline_without_question_input_or_answer_output_is_refused() -> None:
    from ragkit import Pipeline
    from ragkit.testing import EchoStage

    pipe = Pipeline(name="p").add_stage("echo", EchoStage()).add_input("text", "echo.text")
    with pytest.raises(ConfigError, match="needs a pipeline with a 'question' input"):
        create_app(pipe)
    pipe = Pipeline(name="p").add_stage("echo", EchoStage()).add_stage("echo2", EchoStage()).add_input("question", "echo.text", "echo2.text")
    pipe.add_output("a", "echo.text").add_output("b", "echo2.text")
    with pytest.raises(ConfigError, match="name one output 'answer'"):
        create_app(pipe)


def test_runs_are_one_at_a_time_unless_every_component_is_thread_safe() -> None:
    assert create_app(kgqa_pipeline()).state.ragkit.runner.concurrency == 1  # the tiny store does not declare it
    assert create_app(chat_pipeline()).state.ragkit.runner.concurrency == 4  # prompt builder, generator and LLM do
    with pytest.raises(ConfigError, match=r"resource 'graph' \(tiny_graph_store\).*not declared thread-safe") as err:
        PipelineRunner(kgqa_pipeline(), concurrency=2)
    assert "prompt" not in str(err.value)
    with pytest.raises(ConfigError, match="at least the concurrency"):
        PipelineRunner(chat_pipeline(), concurrency=1, max_queue=0)

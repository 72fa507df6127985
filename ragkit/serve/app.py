"""The HTTP server behind ``ragkit serve``: an OpenAI-compatible API, ``/query``, ``/metrics``, ``/health``.

Every error is answered as JSON in OpenAI's shape, ``{"error": {"message", "type", "code"}}``, with a
status that says whose problem it is: 400/401/404/413/422 for the caller, 429 when the queue is
full, 503 when a graph store or a remote model is down (with ``Retry-After``), 500 otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragkit.core.component import Component, Resource
from ragkit.core.pipeline import Pipeline, PipelineResult
from ragkit.errors import (
    ConfigError,
    ModelUnavailableError,
    StageFailedError,
    StoreError,
    StoreUnavailableError,
    UserError,
)
from ragkit.serve.metrics import ServerMetrics
from ragkit.serve.runner import PipelineRunner, QueueFullError, unsafe_components

logger = logging.getLogger(__name__)

__all__ = ["ServeConfig", "ServeState", "create_app", "DEFAULT_PORT", "DEFAULT_HOST"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
UNAVAILABLE_RETRY_AFTER = 5
_ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/query", "/metrics", "/health")
_BODY_METHODS = ("POST", "PUT", "PATCH")


@dataclass(frozen=True)
class ServeConfig:
    """How the server admits requests.

    Attributes:
        max_queue: requests admitted at once (running plus waiting); more get 429 with Retry-After.
        max_body_bytes: largest request body accepted; larger ones get 413.
        api_keys: accepted keys (``Authorization: Bearer KEY``); empty means no authentication.
        concurrency: pipeline runs at once; None picks 1, or 4 when every component is thread-safe.
        model_name: the model id of the OpenAI API (default: the pipeline's name).
    """

    max_queue: int = 16
    max_body_bytes: int = 1_000_000
    api_keys: tuple[str, ...] = ()
    concurrency: int | None = None
    model_name: str | None = None


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": None}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# ---- request bodies ---------------------------------------------------------------------------


class _ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The part of OpenAI's chat request ragkit reads; sampling fields are the pipeline's to decide."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[_ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: int = 1


class QueryRequest(BaseModel):
    """``/query``: the question, and values for any other pipeline inputs."""

    model_config = ConfigDict(extra="forbid")
    question: str
    inputs: dict[str, Any] = Field(default_factory=dict)


# ---- state ------------------------------------------------------------------------------------


class ServeState:
    """The loaded pipeline, its runner and metrics, and what the server knows about its stores."""

    def __init__(self, pipeline: Pipeline, config: ServeConfig) -> None:
        if "question" not in pipeline.inputs:
            raise ConfigError(
                f"ragkit serve needs a pipeline with a 'question' input (this one takes: {', '.join(pipeline.inputs) or 'none'}); "
                "add 'question: [stage.input, ...]' under inputs:"
            )
        self.answer_key = _answer_output(pipeline)
        if config.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        concurrency = config.concurrency
        if concurrency is None:
            concurrency = 4 if not unsafe_components(pipeline) else 1
            concurrency = min(concurrency, config.max_queue)
        self.pipeline = pipeline
        self.config = config
        self.model = config.model_name or pipeline.name or "ragkit"
        self.created = int(time.time())
        self.runner = PipelineRunner(pipeline, concurrency=concurrency, max_queue=config.max_queue)
        self.metrics = ServerMetrics(self.runner, self.model)
        self.stream_stage = pipeline._default_stream_stage()
        self.unavailable: str | None = None
        self._check_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load models and connect to stores now. A store or model server that is down does not stop
        the server: it answers 503 until the store is back."""
        try:
            self.pipeline.warm_up()
        except (StoreUnavailableError, ModelUnavailableError) as e:
            self.unavailable = self._unavailable_message(e)
            logger.warning("starting without %s", self.unavailable)

    def close(self) -> None:
        self.runner.shutdown()

    # -- running --------------------------------------------------------------------------------
    async def run(self, inputs: dict[str, Any], started: float, on_token: Callable[[str], None] | None = None) -> PipelineResult:
        """Run the pipeline off the event loop; errors come back as :class:`ApiError`."""
        fut = self.submit(inputs, started, on_token)
        try:
            result = await asyncio.wrap_future(fut)
        except Exception as e:
            raise self.failed(e) from None
        self.succeeded(result)
        return result

    def submit(self, inputs: dict[str, Any], started: float, on_token: Callable[[str], None] | None = None) -> Any:
        first = [True]

        def token(piece: str) -> None:
            if first[0]:
                first[0] = False
                self.metrics.ttft.observe(time.perf_counter() - started)
            if on_token is not None:
                on_token(piece)

        try:
            # A token callback is always given, so TTFT is measured for non-streamed answers too.
            return self.runner.submit(inputs, token)
        except QueueFullError as e:
            raise ApiError(429, str(e), "server_overloaded", "queue_full", {"Retry-After": str(e.retry_after)}) from None

    def succeeded(self, result: PipelineResult) -> None:
        self.unavailable = None
        self.metrics.observe_run(result.trace, "ok")

    def failed(self, e: BaseException) -> ApiError:
        """Record a failed run and turn its error into the answer the client gets."""
        self.metrics.observe_run(getattr(e, "trace", None), type(_root(e)).__name__)
        err = self.api_error(e)
        if err.status == 503:
            self.unavailable = err.message
        return err

    def api_error(self, e: BaseException) -> ApiError:
        root = _root(e)
        if isinstance(root, StoreUnavailableError | ModelUnavailableError):
            return ApiError(
                503,
                self._unavailable_message(e),
                "service_unavailable",
                "store_unavailable" if isinstance(root, StoreUnavailableError) else "model_unavailable",
                {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
            )
        if isinstance(root, UserError):
            return ApiError(400, str(root), "invalid_request_error", type(root).__name__)
        if isinstance(root, StoreError):
            return ApiError(502, f"{e}", "store_error", type(root).__name__)
        logger.error("pipeline run failed: %s", e, exc_info=(type(e), e, e.__traceback__))
        return ApiError(500, f"the pipeline failed: {e}", "internal_error", type(root).__name__)

    def _unavailable_message(self, e: BaseException) -> str:
        root = _root(e)
        if isinstance(root, ModelUnavailableError):
            return f"the model is unavailable: {root}; retry when it is back"
        from ragkit.stores.base import GraphStore

        stage = self.pipeline.stages.get(e.stage) if isinstance(e, StageFailedError) else None
        names = {id(r): n for n, r in self.pipeline.resources.items()}
        stores = [r for r in (_reachable(stage) if stage is not None else self.pipeline.resources.values()) if isinstance(r, GraphStore)]
        if stage is None:  # failed while warming up: the stores that are not warm are the suspects
            stores = [r for r in stores if not r.is_warm] or stores
        which = ", ".join(f"'{names.get(id(r), type(r).__name__)}' ({type(r).type_name})" for r in stores) or "of this pipeline"
        return f"the graph store {which} is unavailable: {root}; answers resume as soon as it is back"

    def check_unavailable(self) -> None:
        """While a store or model is known to be down, look again, so health recovers without traffic.

        One look at a time: probes arriving meanwhile report the last known state.
        """
        if self.unavailable is None or not self._check_lock.acquire(blocking=False):
            return
        from ragkit.stores.base import GraphStore

        try:
            self.pipeline.warm_up()
            for res in self.pipeline.resources.values():
                if isinstance(res, GraphStore):
                    res.fingerprint()
        except (StoreUnavailableError, ModelUnavailableError) as e:
            self.unavailable = self._unavailable_message(e)
            return
        except Exception as e:  # noqa: BLE001  (health reports; the next request shows the real error)
            logger.info("health check: %s", e)
            return
        finally:
            self._check_lock.release()
        self.unavailable = None

    # -- answers --------------------------------------------------------------------------------
    def answer(self, result: PipelineResult) -> str:
        value = result.outputs.get(self.answer_key)
        return value if isinstance(value, str) else "" if value is None else str(value)

    def usage(self, result: PipelineResult) -> dict[str, int]:
        """Tokens of the answering stage: the completion the client receives and the prompt it read."""
        st = next((s for s in result.trace.stages if s.name == self.stream_stage), None)
        p, c = (st.tokens_in, st.tokens_out) if st is not None else (result.trace.tokens_in, result.trace.tokens_out)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _answer_output(pipeline: Pipeline) -> str:
    if "answer" in pipeline.outputs:
        return "answer"
    if len(pipeline.outputs) == 1:
        return next(iter(pipeline.outputs))
    raise ConfigError(
        f"ragkit serve needs to know which output is the answer: name one output 'answer' (outputs: {', '.join(pipeline.outputs) or 'none'})"
    )


def _root(e: BaseException) -> BaseException:
    """The error behind a stage failure (``StageFailedError`` wraps what the stage raised)."""
    seen = 0
    while isinstance(e, StageFailedError) and e.__cause__ is not None and seen < 10:
        e, seen = e.__cause__, seen + 1
    return e


def _reachable(comp: Component) -> list[Resource]:
    out: list[Resource] = []
    todo = list(comp.resources().values())
    while todo:
        r = todo.pop()
        if any(r is x for x in out):
            continue
        out.append(r)
        todo.extend(r.resources().values())
    return out


# ---- responses --------------------------------------------------------------------------------


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    obj = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _jsonable(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


def context_items(result: PipelineResult) -> list[dict[str, Any]]:
    """The context the answer was built on, each item with a confidence in [0, 1] where known.

    A confidence reranker's fused ranking when the pipeline has one; otherwise each graph result
    (confidence from the retriever) and the last retrieved passages (their retrieval score).
    """
    from ragkit.stages.rerankers.confidence import RankedContext
    from ragkit.stages.retrievers.graph import GraphRetrieval
    from ragkit.stores.vector import Passage

    outs = list(result.stage_outputs.items())
    ranked = [o for _, o in outs if isinstance(o, RankedContext)]
    if ranked:
        return [{"kind": i.kind, "id": i.id, "text": i.text, "confidence": i.probability} for i in ranked[-1].items]
    items: list[dict[str, Any]] = []
    for name, out in outs:
        if isinstance(out, GraphRetrieval):
            ctx = out.context
            items.append(
                {
                    "kind": "graph",
                    "id": name,
                    "text": "\n".join(ctx.as_text()),
                    "confidence": ctx.confidence,
                    "columns": ctx.columns,
                    "rows": _jsonable(ctx.rows),
                    "error": ctx.error,
                }
            )
    passages = [o for _, o in outs if isinstance(getattr(o, "passages", None), list) and all(isinstance(p, Passage) for p in o.passages)]
    if passages:
        for p in passages[-1].passages:  # type: ignore[attr-defined]
            items.append({"kind": "passage", "id": p.id, "text": p.text, "confidence": p.score, "title": p.title})
    return items


def generated_query(result: PipelineResult) -> str | None:
    """The graph query the pipeline ran: the 'query' output, else the last generated one."""
    q = result.outputs.get("query")
    if isinstance(q, str):
        return q
    for out in reversed(list(result.stage_outputs.values())):
        gen = getattr(out, "generated", None)
        if gen is not None and isinstance(getattr(gen, "query", None), str):
            return gen.query
    return None


# ---- the app ----------------------------------------------------------------------------------


def create_app(pipeline: Pipeline, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``pipeline``. Call ``app.state.ragkit.warm_up()`` to load it before serving.

    Example:
        >>> from fastapi.testclient import TestClient                     # doctest: +SKIP
        >>> app = create_app(Pipeline.from_yaml("pipelines/kgqa_sparql.yaml"))  # doctest: +SKIP
        >>> TestClient(app).post("/query", json={"question": "Who wrote Cold Water Gospel?"}).json()["answer"]  # doctest: +SKIP
    """
    state = ServeState(pipeline, config or ServeConfig())
    app = FastAPI(title=f"ragkit serve: {state.model}", version="1", docs_url="/docs", redoc_url=None)
    app.state.ragkit = state
    keys = tuple(k for k in state.config.api_keys if k)

    def authorize(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "").strip()
        if not given:
            raise ApiError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>' (the server was started with --api-key or RAGKIT_API_KEYS)",
                "authentication_error",
                "missing_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            raise ApiError(401, "invalid API key: check the key you send as 'Authorization: Bearer <key>'", "authentication_error", "invalid_api_key", {"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorize)]

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            where = bad_json.get("ctx", {}).get("error", "")
            return ApiError(
                400, f"the request body is not valid JSON ({where}); send a JSON object with Content-Type: application/json", "invalid_request_error", "invalid_json"
            ).response()
        if any(tuple(e.get("loc", ())) == ("body",) for e in errors):
            return ApiError(
                400, "the request body must be a JSON object; send one with Content-Type: application/json", "invalid_request_error", "invalid_json"
            ).response()
        parts = []
        for e in errors:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        return ApiError(422, "invalid request: " + "; ".join(parts), "invalid_request_error", "invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path} (endpoints: {', '.join(_ENDPOINTS)})"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return ApiError(exc.status_code, message, "invalid_request_error", None, dict(exc.headers or {})).response()

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.unavailable is not None:
            await asyncio.to_thread(state.check_unavailable)
        ok = state.unavailable is None
        body = {
            "status": "ok" if ok else "unavailable",
            "model": state.model,
            "warm": all(s.is_warm for s in pipeline.stages.values()),
            "running": state.runner.running,
            "waiting": state.runner.waiting,
            "max_queue": state.runner.max_queue,
            "concurrency": state.runner.concurrency,
            "error": state.unavailable,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        data, ctype = state.metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state.model, "object": "model", "created": state.created, "owned_by": "ragkit"}]}

    @app.post("/query", dependencies=auth)
    async def query(req: QueryRequest, request: Request) -> dict[str, Any]:
        inputs = {**req.inputs, "question": req.question}
        result = await state.run(inputs, _started(request))
        return {
            "model": state.model,
            "answer": state.answer(result),
            "query": generated_query(result),
            "context": context_items(result),
            "outputs": _jsonable(result.outputs),
            "trace": result.trace.to_dict(),
        }

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(req: ChatCompletionRequest, request: Request) -> Any:
        if req.model not in (None, "", state.model):
            raise ApiError(404, f"no model {req.model!r} here: this server serves {state.model!r} (see GET /v1/models)", "invalid_request_error", "model_not_found")
        if req.n != 1:
            raise ApiError(400, "n must be 1: a pipeline gives one answer per request", "invalid_request_error", "unsupported_n")
        users = [m for m in req.messages if m.role == "user"]
        question = users[-1].text().strip() if users else ""
        if not question:
            raise ApiError(
                400,
                "no question: the last message with role 'user' must have text content, e.g. messages=[{'role': 'user', 'content': 'Who wrote ...?'}]",
                "invalid_request_error",
                "no_question",
            )
        started = _started(request)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _stream_chat(state, {"question": question}, started, cid, include_usage)
        result = await state.run({"question": question}, started)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": state.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": state.answer(result)}, "logprobs": None, "finish_reason": "stop"}],
            "usage": state.usage(result),
        }

    app.add_middleware(_Limits, state=state)
    return app


async def _stream_chat(state: ServeState, inputs: dict[str, Any], started: float, cid: str, include_usage: bool) -> Any:
    """Start the run; answer an error status if it fails before its first token, else stream SSE."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_token(piece: str) -> None:  # called in the worker thread
        loop.call_soon_threadsafe(events.put_nowait, ("token", piece))

    fut = asyncio.wrap_future(state.submit(inputs, started, on_token))
    fut.add_done_callback(lambda f: events.put_nowait(("end", f)))
    kind, value = await events.get()
    if kind == "end" and value.exception() is not None:
        # Nothing sent yet: the client gets a real status (503 when the store is down), not a 200 stream.
        raise state.failed(value.exception())
    created = int(time.time())

    async def body() -> AsyncIterator[str]:
        nonlocal kind, value
        yield _chunk(cid, created, state.model, {"role": "assistant", "content": ""})
        sent = False
        while True:
            if kind == "token":
                sent = True
                yield _chunk(cid, created, state.model, {"content": value})
            else:
                exc = value.exception()
                if exc is not None:
                    err = state.failed(exc)
                    yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"
                else:
                    result = value.result()
                    state.succeeded(result)
                    if not sent:  # a pipeline whose answer stage does not stream
                        yield _chunk(cid, created, state.model, {"content": state.answer(result)})
                    yield _chunk(cid, created, state.model, {}, "stop")
                    if include_usage:
                        usage = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": state.model, "choices": [], "usage": state.usage(result)}
                        yield f"data: {json.dumps(usage)}\n\n"
                yield "data: [DONE]\n\n"
                return
            kind, value = await events.get()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _started(request: Request) -> float:
    return float(request.scope.get("ragkit_started") or time.perf_counter())


class _Limits:
    """ASGI middleware outside the app: the body size limit, and request counts and latency.

    It wraps the routes and their error handlers, so refused requests (413, 401, 429) are counted
    too, and a streamed answer's latency runs to its last byte.
    """

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope["ragkit_started"] = start
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        status = {"code": 500, "done": False}
        metrics = self.state.metrics

        def observe() -> None:
            if not status["done"]:
                status["done"] = True
                metrics.requests.labels(endpoint, str(status["code"])).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

        async def counted_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()

        try:
            limit = self.state.config.max_body_bytes
            if scope.get("method") in _BODY_METHODS:
                declared = _content_length(scope)
                if declared is not None and declared > limit:
                    await _too_large(counted_send, limit)
                    return
                body = bytearray()
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    if len(body) > limit:
                        await _too_large(counted_send, limit)
                        return
                    if not message.get("more_body", False):
                        break
                replay: list[dict[str, Any]] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

                async def replayed() -> dict[str, Any]:
                    return replay.pop() if replay else await receive()

                await self.app(scope, replayed, counted_send)
            else:
                await self.app(scope, receive, counted_send)
        finally:
            observe()


def _content_length(scope: dict[str, Any]) -> int | None:
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def _too_large(send: Callable[[dict[str, Any]], Awaitable[None]], limit: int) -> None:
    err = ApiError(413, f"the request body is larger than {limit} bytes (send a shorter request, or start the server with a larger --max-body-bytes)", "invalid_request_error", "body_too_large")
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


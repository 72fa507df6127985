"""A language model behind an OpenAI-compatible HTTP server: vLLM, llama.cpp's server, TGI, ragkit serve.

Chat prompts go to ``POST {base_url}/chat/completions``, raw text prompts to ``{base_url}/completions``.
Single answers are streamed over server-sent events, so the time to the first token and the gaps
between tokens are measured exactly as for :class:`~ragkit.models.llm.LocalLLM`, and each piece of
text reaches :func:`ragkit.emit_token` as it arrives. Token counts come from the server's ``usage``
when it reports them; otherwise the prompt is estimated from its length and each streamed piece
counts as one token.

Example:
    >>> from ragkit.models.remote import OpenAILLM
    >>> llm = OpenAILLM(model="qwen2.5-7b-instruct", base_url="http://127.0.0.1:8000/v1")
    >>> llm.generate("The capital of France is", max_new_tokens=3).text  # doctest: +SKIP
    ' Paris.'

In a pipeline file::

    resources:
      llm:
        type: openai_llm
        base_url: http://127.0.0.1:8000/v1
        model: qwen2.5-7b-instruct
        api_key: ${env:LLM_API_KEY}
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ragkit.core.component import register_resource
from ragkit.core.metrics import GenerationStats, emit_token, is_streaming
from ragkit.errors import MissingDependencyError, ModelError, ModelUnavailableError
from ragkit.models.base import LLM, ChatMessage, Generation, record

if TYPE_CHECKING:
    from ragkit.query.constrain import TermConstraint

logger = logging.getLogger(__name__)

__all__ = ["OpenAILLM"]

_RETRY_STATUSES = frozenset({429, 502, 503})
_MAX_ERROR_TEXT = 500


@register_resource("openai_llm")
class OpenAILLM(LLM):
    """A chat model served over the OpenAI API by another process (local or remote).

    Args:
        model: the model name the server knows (``GET {base_url}/models`` lists them).
        base_url: the API root, ending in ``/v1`` for most servers.
        api_key: sent as ``Authorization: Bearer ...``; write ``${env:NAME}`` in pipeline files.
        timeout: seconds to wait for the server to answer and between two streamed pieces.
        context_window: the model's context length in tokens (the prompt budget is capped by it).
        chars_per_token: how prompt tokens are estimated for budgets when no tokenizer is at hand.
        max_retries: retries when the server is busy (HTTP 429/502/503) or refuses the connection,
            waiting as its ``Retry-After`` says (at most ``timeout``).
        logprobs: ask for per-token log-probabilities, to score several returned sequences.
        headers: extra HTTP headers sent with every request.

    Example:
        >>> llm = OpenAILLM(model="smollm2", base_url="http://127.0.0.1:8000/v1", timeout=30)
        >>> llm.warm_up()                       # doctest: +SKIP
        >>> llm.generate([ChatMessage(role="user", content="Hi")], max_new_tokens=8).text  # doctest: +SKIP
        'Hello! How can I help you today?'
    """

    thread_safe: ClassVar[bool] = True
    """One HTTP client serves any number of threads; ``ragkit serve`` may run pipelines in parallel."""

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        timeout: float = 60.0,
        context_window: int = 4096,
        chars_per_token: float = 4.0,
        max_retries: int = 2,
        logprobs: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError("give 'model': the name the server knows the model by (see GET <base_url>/models)")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("'base_url' must be an http:// or https:// address, e.g. http://127.0.0.1:8000/v1")
        if timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        if context_window < 64:
            raise ValueError("context_window must be at least 64 tokens")
        if chars_per_token <= 0:
            raise ValueError("chars_per_token must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self.context_window = context_window
        self.chars_per_token = chars_per_token
        self.max_retries = max_retries
        self.logprobs = logprobs
        self.headers = dict(headers or {})
        self._client: Any = None

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.init_params.items() if k not in ("api_key", "headers")}
        if self._api_key is not None:
            shown["api_key"] = "***"
        if self.headers:
            shown["headers"] = {k: "***" for k in self.headers}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        try:
            import httpx
        except ImportError:
            raise MissingDependencyError("httpx", "remote", "the OpenAI-compatible model client") from None
        headers = {"User-Agent": "ragkit", **self.headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        client = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)))
        try:
            resp = self._send(client, "GET", "/models")
        except BaseException:
            client.close()
            raise
        if resp.status_code == 200:
            try:
                known = [m.get("id") for m in resp.json().get("data", []) if isinstance(m, dict)]
            except (ValueError, AttributeError):
                known = []
            if known and self.model not in known:
                client.close()
                raise ModelError(f"the server at {self.base_url} has no model {self.model!r} (it serves: {', '.join(map(str, known))}; set 'model' to one of them)")
        elif resp.status_code in (401, 403):
            client.close()
            raise ModelError(f"the server at {self.base_url} refused the API key (HTTP {resp.status_code}); check the resource's api_key")
        # Other answers (404: a server without /models) are left to the first generate() to judge.
        self._client = client

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- LLM interface --------------------------------------------------------------------------
    def render(self, messages: Sequence[ChatMessage]) -> str:
        # The chat template is applied by the server; this text is only what budgets are counted on.
        return "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages) + "<|assistant|>\n"

    def count_tokens(self, text: str) -> int:
        """An estimate: the server's tokenizer is not at hand (``chars_per_token`` characters per token)."""
        return math.ceil(len(text) / self.chars_per_token)

    def generate(
        self,
        prompt: str | Sequence[ChatMessage],
        *,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        num_return_sequences: int = 1,
        stream: bool = False,
        constraint: TermConstraint | None = None,
    ) -> Generation:
        self.warm_up()
        chat = not isinstance(prompt, str)
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": temperature, "n": num_return_sequences}
        if chat:
            body["messages"] = [{"role": m.role, "content": m.content} for m in prompt]  # type: ignore[union-attr]
        else:
            body["prompt"] = prompt
        if stop:
            body["stop"] = list(stop)
        if self.logprobs:
            body["logprobs"] = True if chat else 1
        path = "/chat/completions" if chat else "/completions"
        prompt_text = self.render(prompt) if chat else str(prompt)  # type: ignore[arg-type]
        start = time.perf_counter()
        if num_return_sequences == 1:
            # Streamed even when nobody listens, so TTFT and the gaps between tokens are measured.
            texts, scores, usage, first, times = self._stream(path, body, chat, start, forward=stream and is_streaming())
        else:
            texts, scores, usage = self._complete(path, body, chat)
            first, times = None, []
        seconds = time.perf_counter() - start
        texts = [_cut(t, stop) for t in texts]
        n_in = _int(usage.get("prompt_tokens"), self.count_tokens(prompt_text) * num_return_sequences)
        n_out = _int(usage.get("completion_tokens"), len(times) if times else sum(self.count_tokens(t) for t in texts))
        stats = GenerationStats(tokens_in=n_in, tokens_out=n_out, seconds=seconds)
        if first is not None:
            stats.ttft = first
            stats.inter_token = [b - a for a, b in zip(times, times[1:])]
        else:
            stats.ttft = seconds if n_out else None
        record(stats)
        return Generation(texts=tuple(texts), scores=tuple(scores), stats=stats)

    # -- HTTP -----------------------------------------------------------------------------------
    def _stream(
        self, path: str, body: dict[str, Any], chat: bool, start: float, forward: bool
    ) -> tuple[list[str], list[float], dict[str, Any], float | None, list[float]]:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        pieces: list[str] = []
        logps: list[float] = []
        usage: dict[str, Any] = {}
        first: float | None = None
        times: list[float] = []
        with self._open_stream(path, body) as resp:
            for event in _sse_events(resp.iter_lines()):
                if isinstance(event.get("error"), dict | str):
                    raise ModelError(f"the model server at {self.base_url} failed while generating: {_error_text(event)}")
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    logps.extend(_logprobs(choice))
                    if not piece:
                        continue
                    now = time.perf_counter()
                    if first is None:
                        first = now - start
                    times.append(now)
                    pieces.append(piece)
                    if forward:
                        emit_token(piece)
        scores = [sum(logps) / len(logps)] if logps else []
        return ["".join(pieces)], scores, usage, first, times

    def _complete(self, path: str, body: dict[str, Any], chat: bool) -> tuple[list[str], list[float], dict[str, Any]]:
        resp = self._send(self._client, "POST", path, json={**body, "stream": False})
        self._check(resp)
        try:
            data = resp.json()
        except ValueError:
            raise ModelError(f"the model server at {self.base_url} answered with something that is not JSON (is base_url an OpenAI-compatible API?)") from None
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        texts = [((c.get("message") or {}).get("content") or "") if chat else (c.get("text") or "") for c in choices]
        scores = []
        for c in choices:
            lp = _logprobs(c)
            if lp:
                scores.append(sum(lp) / len(lp))
        return texts, scores if len(scores) == len(texts) else [], data.get("usage") or {}

    def _open_stream(self, path: str, body: dict[str, Any]) -> Any:
        import contextlib

        @contextlib.contextmanager
        def opened() -> Iterator[Any]:
            resp = self._send(self._client, "POST", path, json=body, stream=True)
            try:
                if resp.status_code != 200:
                    resp.read()
                    self._check(resp)
                yield resp
            except _transport_errors() as e:
                raise self._transport_error(e) from None
            finally:
                resp.close()

        return opened()

    def _send(self, client: Any, method: str, path: str, *, json: Any = None, stream: bool = False) -> Any:
        """One request, retried while the server is busy or not accepting connections."""
        import httpx

        attempt = 0
        while True:
            try:
                req = client.build_request(method, path, json=json)
                resp = client.send(req, stream=stream)
            except httpx.ConnectError as e:
                if attempt < self.max_retries:
                    attempt += 1
                    time.sleep(min(0.5 * 2**attempt, self.timeout))
                    continue
                raise self._transport_error(e) from None
            except _transport_errors() as e:
                raise self._transport_error(e) from None
            if resp.status_code in _RETRY_STATUSES and attempt < self.max_retries:
                attempt += 1
                wait = _retry_after(resp.headers.get("Retry-After"), default=0.5 * 2**attempt)
                resp.close()
                logger.info("model server %s answered %d; retrying in %.1f s", self.base_url, resp.status_code, wait)
                time.sleep(min(wait, self.timeout))
                continue
            return resp

    def _transport_error(self, e: Exception) -> ModelError:
        import httpx

        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
            return ModelUnavailableError(
                f"cannot reach the model server at {self.base_url}: {e} (check that it is running and that 'base_url' is right)"
            )
        if isinstance(e, httpx.TimeoutException):
            return ModelError(f"the model server at {self.base_url} did not answer within {self.timeout:g} s (raise the resource's timeout, or ask for fewer tokens)")
        return ModelUnavailableError(f"the connection to the model server at {self.base_url} failed: {type(e).__name__}: {e}")

    def _check(self, resp: Any) -> None:
        code = resp.status_code
        if code == 200:
            return
        text = _error_text(_json_or_text(resp))
        where = self.base_url
        if code in (401, 403):
            raise ModelError(f"the model server at {where} refused the request (HTTP {code}: {text}); check the resource's api_key")
        if code == 404:
            raise ModelError(f"the model server at {where} answered HTTP 404 ({text}); check 'base_url' (it usually ends in /v1) and 'model'")
        if code in _RETRY_STATUSES or code >= 500:
            raise ModelUnavailableError(f"the model server at {where} is unavailable (HTTP {code}: {text}); try again later")
        raise ModelError(f"the model server at {where} rejected the request (HTTP {code}: {text})")


def _transport_errors() -> tuple[type[Exception], ...]:
    import httpx

    return (httpx.TransportError,)


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of an OpenAI event stream (``data: {...}`` lines), up to ``data: [DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # comments (": ping"), event names, blank separators
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise ModelError(f"the model server sent an event that is not JSON: {data[:200]!r}") from None
        if isinstance(event, dict):
            yield event


def _logprobs(choice: dict[str, Any]) -> list[float]:
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return []
    if isinstance(lp.get("content"), list):  # chat
        return [float(t["logprob"]) for t in lp["content"] if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)]
    return [float(x) for x in lp.get("token_logprobs") or [] if isinstance(x, int | float)]  # completions


def _json_or_text(resp: Any) -> Any:
    try:
        return resp.json()
    except ValueError:
        return " ".join(resp.text.split())[:_MAX_ERROR_TEXT]


def _error_text(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message") or err)[:_MAX_ERROR_TEXT]
        return str(err)[:_MAX_ERROR_TEXT]
    return str(data)[:_MAX_ERROR_TEXT] or "no details"


def _retry_after(value: str | None, default: float) -> float:
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def _int(value: Any, fallback: int) -> int:
    return int(value) if isinstance(value, int) and value >= 0 else fallback


def _cut(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text

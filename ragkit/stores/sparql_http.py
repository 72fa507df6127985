"""Any SPARQL 1.1 endpoint over HTTP (Oxigraph server, Fuseki, GraphDB, Virtuoso, Stardog, ...).

Queries are sent as the SPARQL 1.1 Protocol describes (``POST`` with a form-encoded ``query=``);
results are read as SPARQL JSON (``application/sparql-results+json``), or N-Triples for ``CONSTRUCT``
and ``DESCRIBE``. Only the standard library is used, so the store needs no extra package.

Results are read as they arrive: after ``limit`` rows the connection is closed and the result is
marked ``truncated``, so a query that matches millions of rows never fills memory.

Example:
    >>> from ragkit.stores.sparql_http import SparqlEndpointStore
    >>> store = SparqlEndpointStore(url="http://localhost:7878/query")
    >>> store.query("SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }").rows  # doctest: +SKIP
    (('594',),)
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import http.client
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, NoReturn

from ragkit.core.component import register_resource
from ragkit.errors import QueryError, QueryParseError, QueryTimeoutError, StoreError, StoreUnavailableError
from ragkit.stores.base import DEFAULT_ROW_LIMIT, DEFAULT_TIMEOUT, QueryResult
from ragkit.stores.rdf import RdfStore

logger = logging.getLogger(__name__)

__all__ = ["SparqlEndpointStore"]

_ACCEPT = "application/sparql-results+json, application/n-triples;q=0.9"
_JSON_TYPES = frozenset({"application/sparql-results+json", "application/json"})
_NTRIPLES_TYPES = frozenset({"application/n-triples", "text/plain"})
_COUNT_QUERY = "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }"
_CHUNK = 64 * 1024
_MAX_ERROR_TEXT = 2000
# Header names whose values are secrets: scrubbed from any text that reaches an error message.
_SECRET_HEADER = re.compile(r"(?i)authorization|cookie|token|key|secret|password")


@register_resource("sparql_endpoint")
class SparqlEndpointStore(RdfStore):
    """A remote SPARQL 1.1 query endpoint, read over HTTP.

    Credentials are sent as HTTP basic auth on every request and never appear in logs, error
    messages or ``repr``. Redirects are not followed (they would carry the credentials elsewhere):
    point ``url`` at the final address.

    Args:
        url: the query endpoint, e.g. ``http://localhost:7878/query`` (Oxigraph) or
            ``http://localhost:3030/ds/sparql`` (Fuseki). ``user:password@`` in it is used as
            credentials when ``username`` is not given.
        username: user for HTTP basic auth.
        password: password for HTTP basic auth.
        headers: extra HTTP headers sent with every request (``Accept`` and ``Content-Type`` are
            always the store's own).
        timeout: seconds a query may run; the HTTP request is abandoned at that point.
        row_limit: rows returned at most.

    Attributes:
        url: the endpoint without credentials.
        display_url: the endpoint as messages show it (no credentials, no query string).

    Example:
        >>> store = SparqlEndpointStore(url="https://example.org/sparql", username="me", password="...")
        >>> store.query("ASK { ?s ?p ?o }").boolean  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        row_limit: int = DEFAULT_ROW_LIMIT,
    ) -> None:
        super().__init__(timeout=timeout, row_limit=row_limit)
        if not isinstance(url, str) or not url.strip():
            raise ValueError("give 'url': the SPARQL query endpoint, e.g. http://localhost:7878/query")
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("'url' must be an http:// or https:// address of a SPARQL query endpoint")
        if username is None and parts.username:
            username = urllib.parse.unquote(parts.username)
            if password is None and parts.password is not None:
                password = urllib.parse.unquote(parts.password)
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        # Messages leave out the query string too: some endpoints take an API key there.
        self.display_url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", "", "")) + ("?..." if parts.query else "")
        self.username = username
        self.headers = dict(headers or {})
        self._password = password
        secrets = [password or ""]
        send = {k: v for k, v in self.headers.items() if k.lower() not in ("accept", "content-type")}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            send["Authorization"] = f"Basic {token}"
            secrets += [username, token]
        secrets += [v for k, v in self.headers.items() if _SECRET_HEADER.search(k)]
        send["Accept"] = _ACCEPT
        send["Content-Type"] = "application/x-www-form-urlencoded"
        send.setdefault("User-Agent", "ragkit")
        self._send_headers = send
        # Short strings are not secrets worth masking, and masking them would garble messages.
        self._secrets = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)
        self._local = threading.local()

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.init_params.items() if k not in ("username", "password", "headers")}
        shown["url"] = self.display_url
        if self.username is not None:
            shown["username"] = "***"
        if self._password is not None:
            shown["password"] = "***"
        if self.headers:
            shown["headers"] = {k: "***" for k in self.headers}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.username is not None and self.url.startswith("http://"):
            logger.warning("sending credentials to %s over plain HTTP (use https:// to protect them)", self.display_url)
        try:
            res = self._with_timeout(lambda: self._execute("ASK {}", 1), self.timeout, "ASK {}")
        except StoreUnavailableError:
            raise
        except (QueryError, StoreError) as e:
            raise StoreUnavailableError(
                f"the SPARQL endpoint {self.display_url} did not answer 'ASK {{}}': {e} "
                "(check that the URL is the SPARQL query endpoint, e.g. .../query for Oxigraph or .../sparql for Fuseki)"
            ) from None
        if res.boolean is None:
            raise StoreUnavailableError(
                f"{self.display_url} answered 'ASK {{}}' without a boolean: it does not look like a SPARQL query endpoint "
                "(check the URL's path)"
            )
        logger.debug("SPARQL endpoint %s answers", self.display_url)

    def fingerprint(self) -> str:
        """The endpoint's address hashed, plus its triple count (one ``COUNT(*)`` query per call)."""
        self.warm_up()
        res = self._with_timeout(lambda: self._execute(_COUNT_QUERY, 1), self.timeout, _COUNT_QUERY)
        count = res.rows[0][0] if res.rows and res.rows[0] else "0"
        return f"{hashlib.sha256(self.url.encode()).hexdigest()[:16]}-{count}"

    # -- queries --------------------------------------------------------------------------------
    def _with_timeout(self, fn: Any, timeout: float, query: str) -> Any:
        # An HTTP request can be abandoned by closing its socket, so it needs no worker thread: the
        # deadline bounds the socket time-outs and is checked between reads.
        previous = getattr(self._local, "deadline", None)
        deadline = time.monotonic() + timeout
        if previous is not None and previous[0] < deadline:
            deadline, timeout = previous
        self._local.deadline = (deadline, timeout)
        try:
            return fn()
        finally:
            self._local.deadline = previous

    def _execute(self, query: str, limit: int) -> QueryResult:
        deadline, budget = getattr(self._local, "deadline", None) or (time.monotonic() + self.timeout, self.timeout)
        resp = self._open(query, deadline, budget)
        try:
            ctype = resp.headers.get_content_type()
            read = _Reader(resp, deadline, budget, self._scrub).read
            if ctype in _JSON_TYPES:
                return _read_json_results(read, limit, query, self._scrub)
            if ctype in _NTRIPLES_TYPES:
                return _read_ntriples(read, limit, self._scrub)
            raise StoreError(
                f"{self.display_url} answered with {ctype}, not SPARQL results "
                "(check that the URL is the SPARQL query endpoint, not a web page or a proxy's login page)"
            )
        finally:
            resp.close()

    def _open(self, query: str, deadline: float, budget: float) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(budget)
        body = urllib.parse.urlencode({"query": query}).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=self._send_headers, method="POST")
        logger.debug("POST %s (%d characters of SPARQL)", self.display_url, len(query))
        try:
            return _OPENER.open(request, timeout=remaining)
        except urllib.error.HTTPError as e:
            self._raise_http_error(e, query)
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise StoreUnavailableError(
                    f"the SPARQL endpoint {self.display_url} did not accept a connection within {remaining:.3g} s "
                    "(check that the server is up and that no firewall drops the traffic)"
                ) from None
            raise StoreUnavailableError(
                f"cannot reach the SPARQL endpoint {self.display_url}: {self._scrub(str(e.reason))} "
                "(check that the server is running and that the host name and port in 'url' are right)"
            ) from None
        except TimeoutError:
            raise _timeout(budget) from None
        except (OSError, http.client.HTTPException) as e:  # the connection dropped before an answer
            raise StoreUnavailableError(
                f"the SPARQL endpoint {self.display_url} closed the connection without answering: "
                f"{self._scrub(str(e)) or type(e).__name__} (check the server's log)"
            ) from None

    def _raise_http_error(self, e: urllib.error.HTTPError, query: str) -> NoReturn:
        try:
            text = e.read(_MAX_ERROR_TEXT * 2).decode("utf-8", "replace")
        except Exception:  # the body is only decoration for the message
            text = ""
        finally:
            e.close()
        text = self._scrub(" ".join(text.split()))[:_MAX_ERROR_TEXT] or str(e.reason)
        code = e.code
        where = self.display_url
        if code == 400:
            raise QueryParseError(f"the SPARQL endpoint rejected the query: {text}", query=query, details=[text]) from None
        if code in (401, 403):
            raise StoreUnavailableError(
                f"the SPARQL endpoint {where} refused access (HTTP {code}): check the store's username and password, "
                "or the headers that carry a token"
            ) from None
        if code == 404:
            raise StoreUnavailableError(
                f"no SPARQL endpoint at {where} (HTTP 404: {text}); check the URL's path, "
                "e.g. .../query for Oxigraph or .../sparql for Fuseki"
            ) from None
        if code in (408, 504):
            raise QueryTimeoutError(f"the SPARQL endpoint {where} gave up on the query (HTTP {code}: {text}); simplify it or add a LIMIT") from None
        if 300 <= code < 400:
            location = e.headers.get("Location", "") if e.headers else ""
            target = self._scrub(urllib.parse.urlsplit(location)._replace(query="", fragment="").geturl()) if location else "elsewhere"
            raise StoreUnavailableError(
                f"the SPARQL endpoint {where} redirects to {target} (HTTP {code}); set the store's url to the final address"
            ) from None
        if code >= 500:
            raise StoreUnavailableError(
                f"the SPARQL endpoint {where} failed (HTTP {code}: {text}); check the server's log and that it is healthy"
            ) from None
        raise StoreError(f"the SPARQL endpoint {where} answered HTTP {code}: {text}") from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Following a redirect would resend the Authorization header, possibly to another host, and
    # urllib turns a redirected POST into a GET without the query.
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _timeout(budget: float) -> QueryTimeoutError:
    return QueryTimeoutError(f"query ran longer than {budget:g} s and was abandoned (simplify it, add a LIMIT, or raise the store's timeout)")


class _Reader:
    """Reads a response body as text, chunk by chunk, within the query's deadline."""

    def __init__(self, resp: Any, deadline: float, budget: float, scrub: Callable[[str], str]) -> None:
        self._resp = resp
        self._deadline = deadline
        self._budget = budget
        self._scrub = scrub
        charset = resp.headers.get_content_charset() or "utf-8"
        try:
            self._decoder = codecs.getincrementaldecoder(charset)("replace")
        except LookupError:
            self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # Private attributes of http.client, used only to shorten the socket time-out to what is
        # left of the deadline; without them a read may overrun the deadline by one time-out.
        self._sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)

    def read(self, size: int = _CHUNK) -> str:
        """The next piece of text; ``""`` at the end of the body."""
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise _timeout(self._budget)
            if self._sock is not None:
                try:
                    self._sock.settimeout(remaining)
                except OSError:
                    self._sock = None
            try:
                data = self._resp.read1(size)
            except TimeoutError:
                raise _timeout(self._budget) from None
            except (OSError, ValueError, http.client.HTTPException) as e:  # ValueError: a broken chunked body
                raise StoreError(f"the connection to the SPARQL endpoint broke while reading results: {self._scrub(str(e)) or type(e).__name__}") from None
            if not data:
                return self._decoder.decode(b"", final=True)
            text = self._decoder.decode(data)
            if text:
                return text


class _BadJson(Exception):
    def __init__(self, tail: str) -> None:
        self.tail = tail
        super().__init__(tail)


class _JsonStream:
    """Just enough of an incremental JSON reader to walk SPARQL results one binding at a time."""

    _ws = re.compile(r"[ \t\r\n]*")

    def __init__(self, read: Callable[[int], str]) -> None:
        self._read = read
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._decoder = json.JSONDecoder()

    def _fill(self, size: int = _CHUNK) -> bool:
        if self._eof:
            return False
        chunk = self._read(size)
        if not chunk:
            self._eof = True
            return False
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character (not consumed), or ``""`` at the end."""
        while True:
            self._pos = self._ws.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            self.fail()
        self._pos += 1

    def value(self) -> Any:
        """The next complete JSON value."""
        self.peek()
        size = _CHUNK
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
                # A value that ends exactly at the end of the buffer may be a number cut in two.
                if end < len(self._buf) or self._eof:
                    self._pos = end
                    return value
            except json.JSONDecodeError:
                if self._eof:
                    self.fail()
            # Grow the reads so a very large value is not re-decoded once per small chunk.
            self._fill(size)
            size *= 2

    def fail(self) -> NoReturn:
        if self._pos >= len(self._buf):  # show what follows, without waiting on a stalled server
            self._fill()
        raise _BadJson(" ".join(self._buf[self._pos : self._pos + 300].split()))


def _read_json_results(read: Callable[[int], str], limit: int, query: str, scrub: Callable[[str], str]) -> QueryResult:
    stream = _JsonStream(read)
    variables: list[str] | None = None
    boolean: bool | None = None
    bindings: list[dict[str, Any]] = []
    truncated = False
    try:
        stream.expect("{")
        done = stream.peek() == "}"
        while not done and not truncated:
            key = stream.value()
            stream.expect(":")
            if key == "head":
                head = stream.value()
                if isinstance(head, dict) and isinstance(head.get("vars"), list):
                    variables = [str(v) for v in head["vars"]]
            elif key == "boolean":
                boolean = bool(stream.value())
            elif key == "results":
                truncated = _read_results_object(stream, bindings, limit)
            else:
                stream.value()
            if truncated:
                break
            sep = stream.peek()
            if sep == "}":
                done = True
            elif sep != ",":
                stream.fail()
            else:
                stream.expect(",")
    except _BadJson as e:
        tail = scrub(e.tail)
        if re.search(r"(?i)cancel|time.?out|timed out", tail):
            raise QueryTimeoutError(f"the SPARQL endpoint abandoned the query: {tail} (simplify it, add a LIMIT, or raise the server's time-out)") from None
        raise StoreError(f"the SPARQL endpoint sent malformed SPARQL JSON results near: {tail!r} (check the server's log)") from None

    if boolean is not None and not bindings:
        return QueryResult(columns=("answer",), rows=((boolean,),), boolean=boolean)
    if variables is None:  # "head" came after the rows we read, or not at all
        variables = []
        for b in bindings:
            variables.extend(k for k in b if k not in variables)
    cols = tuple(variables)
    rows = tuple(tuple(_term_value(b.get(v)) for v in cols) for b in bindings)
    return QueryResult(columns=cols, rows=rows, truncated=truncated)


def _read_results_object(stream: _JsonStream, bindings: list[dict[str, Any]], limit: int) -> bool:
    """Read ``{"bindings": [...]}`` into ``bindings``; True when stopped at ``limit`` with rows left."""
    stream.expect("{")
    if stream.peek() == "}":
        stream.expect("}")
        return False
    while True:
        key = stream.value()
        stream.expect(":")
        if key == "bindings":
            stream.expect("[")
            if stream.peek() == "]":
                stream.expect("]")
            else:
                while True:
                    item = stream.value()
                    if isinstance(item, dict) and item:  # an empty binding is no row, as in rdflib
                        bindings.append(item)
                    sep = stream.peek()
                    if sep == "]":
                        stream.expect("]")
                        break
                    if sep != ",":
                        stream.fail()
                    stream.expect(",")
                    if len(bindings) >= limit:
                        return True
        else:
            stream.value()
        sep = stream.peek()
        if sep == "}":
            stream.expect("}")
            return False
        stream.expect(",")


def _term_value(term: Any) -> Any:
    """A SPARQL JSON term as a plain value: IRIs and literals as their lexical form."""
    if not isinstance(term, dict):
        return None
    if term.get("type") == "triple" and isinstance(term.get("value"), dict):
        t = term["value"]
        return "<< " + " ".join(str(_term_value(t.get(k))) for k in ("subject", "predicate", "object")) + " >>"
    value = term.get("value")
    return None if value is None else str(value)


_NT_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")
_NT_SIMPLE = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_NT_TERM = r'<(?:[^>\\]|\\.)*>|_:\S+|"(?:[^"\\]|\\.)*"(?:@[A-Za-z0-9-]+|\^\^<(?:[^>\\]|\\.)*>)?'
_NT_LINE = re.compile(rf"\s*({_NT_TERM})\s*({_NT_TERM})\s*({_NT_TERM})\s*\.\s*(?:#.*)?")


def _nt_unescape(s: str) -> str:
    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] in "uU" and len(e) > 1:
            return chr(int(e[1:], 16))
        return _NT_SIMPLE.get(e, e)

    return _NT_ESCAPE.sub(one, s) if "\\" in s else s


def _nt_value(term: str) -> str:
    if term.startswith("<"):
        return _nt_unescape(term[1:-1])
    if term.startswith("_:"):
        return term[2:]
    end = term.rindex('"')
    return _nt_unescape(term[1:end])


def _read_ntriples(read: Callable[[int], str], limit: int, scrub: Callable[[str], str]) -> QueryResult:
    rows: list[tuple[Any, ...]] = []
    pending = ""
    eof = False
    while not eof:
        chunk = read(_CHUNK)
        eof = not chunk
        pending += chunk
        lines = pending.split("\n")
        pending = "" if eof else lines.pop()
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if len(rows) >= limit:
                return QueryResult(columns=("subject", "predicate", "object"), rows=tuple(rows), truncated=True)
            m = _NT_LINE.fullmatch(line)
            if m is None:
                raise StoreError(f"the SPARQL endpoint sent a line that is not N-Triples: {scrub(line[:300])!r} (check the server's log)")
            rows.append(tuple(_nt_value(m.group(i)) for i in (1, 2, 3)))
    return QueryResult(columns=("subject", "predicate", "object"), rows=tuple(rows), truncated=False)

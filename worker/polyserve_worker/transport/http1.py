"""REST on a lean HTTP/1.1 server (the default front): llhttp's parser (PyPI ``httptools``).

The aiohttp front spends about 40 us of CPU per request before a handler runs (an empty
handler under bench/closedloop.py: 41 us per request on aiohttp, 10 on this shape;
bench/RESULTS.md), against about 200 for a small model's whole inference. This front serves
the same route table (``rest.RestServer.routes``) with the same handlers and the same
answers; an infer request goes straight to ``RestServer.admit``/``answer`` with no framework
objects, and its answer is one write.

Bounds, as the aiohttp front keeps them (tests/worker/test_http1.py):

- A request line over ``MAX_LINE`` bytes is answered 414; a header block over ``MAX_HEAD``
  bytes or ``MAX_FIELDS`` fields 431; a body over ``--http-max-input-size`` 413 as soon as
  its size is known (Content-Length, or the chunks so far); a body that has not arrived
  within ``--http-body-timeout-secs`` 408. After such an early answer the rest of the body
  is read and dropped for at most ``linger`` seconds (so the answer is not lost to a reset),
  then the connection closes. A request llhttp cannot parse is answered 400 and the
  connection closes.
- A connection without a complete request header for ``--http-idle-timeout-secs`` closes.
- Pipelined requests are answered in order, one at a time. While one is handled the next is
  not read from the socket, nor while the client leaves its answers unread (the transport's
  write buffer past its high-water mark): a connection holds at most one body being handled
  and what one read brought.
- ``Expect: 100-continue`` is answered 100 once the headers are accepted.
- While the worker drains, every answer says ``Connection: close`` and the connection
  closes after it; every request is counted in ``DataPlane.activity``.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import cast
from urllib.parse import unquote

import httptools
from aiohttp import web

from polyserve_worker import errors
from polyserve_worker.transport import rest

logger = logging.getLogger(__name__)

#: The longest request line (method, target, version) accepted: aiohttp's limit.
MAX_LINE = 8190
#: The largest header block (request line and every field) and the most fields accepted.
MAX_HEAD = 64 * 1024
MAX_FIELDS = 256
#: Bodies at least this large with a Content-Length are gathered into one buffer of that
#: size as they arrive (one copy); smaller ones are joined at the end (usually one chunk,
#: no copy).
PREALLOCATE_BYTES = rest.PREALLOCATE_BYTES

_JSON = b"application/json"
_JSON_UTF8 = b"application/json; charset=utf-8"  # as aiohttp's json_response says it
_BINARY = b"application/octet-stream"


class _Refused(Exception):
    """Raised from a parser callback: the request is answered ``status`` and the connection
    closes."""

    def __init__(self, status: int, message: str, linger: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.linger = linger


@dataclass
class Request:
    """One complete request, as the route table's handlers read it (``method``, ``path``,
    ``match_info``, ``body``; see ``rest.RestServer._routes``)."""

    method: str
    target: bytes
    headers: dict[str, str]
    body: bytes | bytearray
    keep_alive: bool
    http10: bool
    path: str = ""
    match_info: dict[str, str] = field(default_factory=dict)


@dataclass
class _Answer:
    """A response already made (an early refusal), written in its turn."""

    data: tuple[bytes, ...]
    close: bool


class Router:
    """``rest.RestServer.routes`` as exact paths and segment patterns; ``{name}`` matches one
    non-empty segment, percent-decoded, as aiohttp's router does."""

    def __init__(self, routes: list[tuple[str, str, rest.AnyHandler]]) -> None:
        self._exact: dict[str, dict[str, rest.AnyHandler]] = {}
        self._patterns: dict[int, list[tuple[tuple[str, ...], str, rest.AnyHandler]]] = {}
        for method, path, handler in routes:
            if "{" not in path:
                self._exact.setdefault(path, {})[method] = handler
                continue
            segments = tuple(path.split("/"))
            self._patterns.setdefault(len(segments), []).append((segments, method, handler))

    def resolve(self, method: str, path: str) -> tuple[rest.AnyHandler, dict[str, str]]:
        """The handler of ``method`` on ``path`` (raw, undecoded) and its path parameters;
        raises aiohttp's 404 or 405 otherwise (``rest.failure`` words both)."""
        wanted = "GET" if method == "HEAD" else method
        exact = self._exact.get(path)
        allowed = False
        if exact is not None:
            handler = exact.get(wanted)
            if handler is not None:
                return handler, {}
            allowed = True
        segments = path.split("/")
        for pattern, route_method, handler in self._patterns.get(len(segments), ()):
            match = _match(pattern, segments)
            if match is None:
                continue
            if route_method == wanted:
                return handler, match
            allowed = True
        if allowed:
            raise web.HTTPMethodNotAllowed(method, [])
        raise web.HTTPNotFound()


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    found: dict[str, str] = {}
    for expected, segment in zip(pattern, segments, strict=True):
        if expected.startswith("{"):
            if not segment:
                return None
            found[expected[1:-1]] = unquote(segment)
        elif expected != segment:
            return None
    return found


class HttpFront:
    """The worker's REST port on this front: ``start``, then ``stop_accepting`` and
    ``close`` at shutdown (server.py drains between the two)."""

    name = "httptools"

    def __init__(self, rest_server: rest.RestServer, idle_timeout: float, linger: float) -> None:
        self.rest = rest_server
        self.router = Router(rest_server.routes)
        self.idle_timeout = idle_timeout
        self.linger = linger
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._date = (0, b"")

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> int:
        """Listen; returns the port (the one bound when ``port`` is 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self),
            host,
            port,
            ssl=ssl_context,
            reuse_port=reuse_port or None,
        )
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        """No new connections; the open ones are served."""
        if self._server is not None:
            self._server.close()

    def transports(self) -> list[asyncio.Transport]:
        return [c.transport for c in self.connections if c.transport is not None]

    async def close(self, wait: float) -> None:
        """Give requests in progress ``wait`` seconds to be answered, then close every
        connection."""
        answering = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if answering:
            await asyncio.wait(answering, timeout=wait)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()

    def date(self) -> bytes:
        """The ``Date`` header's value, made once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]


class Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self.rest = front.rest
        self.core = front.rest.core
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self._queue: collections.deque[Request | _Answer] = collections.deque()
        self._writable = True
        self._wrote: asyncio.Future[None] | None = None
        self._paused = False
        self._closing = False
        # the request being read
        self._in_message = False
        self._headers_done = False
        self._target = bytearray()
        self._headers: dict[str, str] = {}
        self._fields = 0
        self._head_bytes = 0
        self._chunks: list[bytes] = []
        self._buffer: bytearray | None = None
        self._size = 0
        self._discarding = False
        # timers: armed once, re-armed from their own callback while needed
        self._idle_since: float | None = self.loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._body_since: float | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.front.connections.add(self)
        self._idle_timer = self.loop.call_later(self.front.idle_timeout, self._on_idle_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self._closing = True
        for timer in (self._idle_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        if self._wrote is not None and not self._wrote.done():
            self._wrote.set_result(None)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._wrote is not None and not self._wrote.done():
            self._wrote.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._discarding:
            return  # after an early answer the parser has stopped; the rest is dropped
        if not self._headers_done:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A protocol switch (h2c, WebSocket) is not offered: what completed is answered,
            # then the connection closes.
            if self._in_message:
                self._refuse(400, "protocol upgrades are not supported on this port")
            self._closing = True
            self._close_when_answered()
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if refused is None:
                refused = _Refused(400, f"malformed HTTP request: {exc}")
            self._refuse(refused.status, refused.message, refused.linger)
            if not refused.linger:
                self._closing = True
            return
        if not self._headers_done and self._in_message and self._head_bytes > MAX_HEAD:
            self._refuse(431, f"the request header is over {MAX_HEAD} bytes")
            self._closing = True
        elif self._headers_done and self._body_timer is None and not self._discarding:
            self._body_timer = self.loop.call_later(self.rest.body_timeout, self._on_body_timer)

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._headers_done = False
        self._target = bytearray()
        self._headers = {}
        self._fields = 0
        self._chunks = []
        self._buffer = None
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_LINE:
            raise _Refused(414, f"the request target is over {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise _Refused(431, f"the request has more than {MAX_FIELDS} header fields")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._head_bytes = 0
        self._idle_since = None
        self._body_since = self.loop.time()
        length = self._headers.get("content-length")
        limit = self.rest.max_input_size
        if length is not None and length.isdigit():
            size = int(length)
            if size > limit:
                raise _Refused(413, _too_large(f"of {size} bytes", limit), linger=True)
            if size >= PREALLOCATE_BYTES:
                self._buffer = bytearray(size)
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._discarding:
            return
        end = self._size + len(body)
        if end > self.rest.max_input_size:
            raise _Refused(413, _too_large("over", self.rest.max_input_size), linger=True)
        if self._buffer is not None:
            self._buffer[self._size : end] = body
        else:
            self._chunks.append(body)
        self._size = end

    def on_message_complete(self) -> None:
        self._in_message = False
        self._headers_done = False
        self._body_since = None
        if self._buffer is not None:
            body: bytes | bytearray = self._buffer
        elif len(self._chunks) == 1:
            body = self._chunks[0]
        else:
            body = b"".join(self._chunks)
        parser = self.parser
        request = Request(
            parser.get_method().decode("latin-1"),
            bytes(self._target),
            self._headers,
            body,
            parser.should_keep_alive(),
            parser.get_http_version() == "1.0",
        )
        self._enqueue(request)

    # -- answering -----------------------------------------------------------------------

    def _enqueue(self, item: Request | _Answer) -> None:
        self._queue.append(item)
        if self.busy:
            if not self._paused and self.transport is not None:
                self.transport.pause_reading()  # one at a time: the next waits in the socket
                self._paused = True
            return
        self.busy = True
        self.task = self.loop.create_task(self._serve())

    def _refuse(self, status: int, message: str, linger: bool = False) -> None:
        """Answer the request being read ``status`` (in its turn) and close; with ``linger``
        its body is first read and dropped, for at most the linger time."""
        data = _response(status, _error_body(message), _JSON_UTF8, b"", True, self.front.date())
        self._discarding = linger and self._in_message
        if self._discarding:
            self.loop.call_later(self.front.linger, self._abort)
        self._enqueue(_Answer(data, close=True))

    async def _serve(self) -> None:
        try:
            while self._queue:
                item = self._queue[0]
                if isinstance(item, _Answer):
                    data, close = item.data, item.close
                else:
                    data, close = await self._answer(item)
                if not self._writable and not self._closing:
                    self._wrote = self.loop.create_future()
                    await self._wrote
                self._queue.popleft()
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                transport.writelines(data)
                if close:
                    self._closing = True
                    if not self._discarding:
                        transport.close()
                    elif self._paused:  # read (and drop) the rest until the linger ends
                        self._paused = False
                        transport.resume_reading()
                    return
        finally:
            self.busy = False
        if self._closing:  # the connection ends after its last answer (an upgrade asked)
            if self.transport is not None and not self._discarding:
                self.transport.close()
            return
        self._idle_since = None if self._headers_done else self.loop.time()
        if self._paused and self.transport is not None and not self._closing:
            self._paused = False
            self.transport.resume_reading()

    async def _answer(self, request: Request) -> tuple[tuple[bytes, ...], bool]:
        """The whole response to ``request`` and whether the connection closes after it."""
        close = not request.keep_alive
        extra = b""
        content_type = _JSON
        target = request.target
        query = target.find(b"?")
        raw_path = (target if query < 0 else target[:query]).decode("latin-1")
        with self.core.activity:
            try:
                handler, match_info = self.front.router.resolve(request.method, raw_path)
                if handler == self.rest.infer:
                    payload, header_size = await self._infer(request, match_info)
                    if header_size is not None:
                        extra = b"Inference-Header-Content-Length: %d\r\n" % header_size
                        content_type = _BINARY
                    status = 200
                else:
                    request.path = unquote(raw_path)
                    request.match_info = match_info
                    response = await handler(request)
                    status, payload, content_type, extra = _from_aiohttp(response)
                    close = close or response.keep_alive is False
            except Exception as exc:  # every failure is one answer, as rest._errors makes
                status, message = rest.failure(exc, request.method, unquote(raw_path))
                payload = _error_body(message)
                content_type, extra = _JSON_UTF8, b""
                close = close or isinstance(exc, errors.RequestTimeout)
        close = close or self.core.draining
        if request.http10 and not close:
            extra += b"Connection: keep-alive\r\n"
        head = _head(status, len(payload), content_type, extra, close, self.front.date())
        return ((head,) if request.method == "HEAD" else (head, payload)), close

    async def _infer(
        self, request: Request, match_info: Mapping[str, str]
    ) -> tuple[bytes, int | None]:
        headers = request.headers
        content_type = headers.get("content-type", "")
        if content_type:
            content_type = content_type.split(";", 1)[0].strip().lower()
        name = match_info["model"]
        version = match_info.get("version", "")
        served = self.rest.admit(name, version, content_type, len(request.body))
        header_length = headers.get("inference-header-content-length")
        return await self.rest.answer(served, name, version, request.body, header_length)

    # -- timers --------------------------------------------------------------------------

    def _on_idle_timer(self) -> None:
        """No complete request header for the idle timeout: close. Re-armed for what is left
        of the timeout while the connection is in use."""
        self._idle_timer = None
        if self._closing or self.transport is None:
            return
        timeout = self.front.idle_timeout
        since = self._idle_since
        if since is not None and not self.busy:
            left = since + timeout - self.loop.time()
            if left <= 0:
                self.transport.close()
                return
            timeout = left
        self._idle_timer = self.loop.call_later(timeout, self._on_idle_timer)

    def _on_body_timer(self) -> None:
        """A body still arriving after the body timeout is answered 408."""
        self._body_timer = None
        since = self._body_since
        if self._closing or since is None or self._discarding:
            return
        left = since + self.rest.body_timeout - self.loop.time()
        if left > 0:
            self._body_timer = self.loop.call_later(left, self._on_body_timer)
            return
        self._refuse(
            408,
            f"the request body did not arrive within {self.rest.body_timeout:g} s "
            "(--http-body-timeout-secs)",
            linger=True,
        )

    def _abort(self) -> None:
        """The linger time after an early answer is over: close, body read or not."""
        self._discarding = False
        if self.transport is not None and not self.busy:
            self.transport.close()
        self._closing = True

    def _close_when_answered(self) -> None:
        if not self.busy and self.transport is not None:
            self.transport.close()


def _too_large(size: str, limit: int) -> str:
    return f"request body {size} exceeds the limit of {limit} bytes (--http-max-input-size)"


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _from_aiohttp(response: web.StreamResponse) -> tuple[int, bytes, bytes, bytes]:
    """Status, body, content type and other headers of a handler's ``web.Response``."""
    assert isinstance(response, web.Response)
    body = response.body
    if not isinstance(body, bytes | bytearray):
        raise errors.ServerError(f"a handler answered a body of type {type(body).__name__}")
    content_type = b""
    extra = b""
    for key, value in response.headers.items():
        lower = key.lower()
        if lower == "content-type":
            content_type = value.encode("latin-1")
        elif lower not in ("content-length", "connection", "transfer-encoding"):
            extra += f"{key}: {value}\r\n".encode("latin-1")
    return response.status, bytes(body), content_type, extra


def _status_line(status: int) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


_STATUS_LINES = {status.value: _status_line(status.value) for status in http.HTTPStatus}


def _head(
    status: int, length: int, content_type: bytes, extra: bytes, close: bool, date: bytes
) -> bytes:
    return b"".join(
        (
            _STATUS_LINES.get(status) or _status_line(status),
            b"Content-Type: ",
            content_type,
            b"\r\nContent-Length: %d\r\nDate: " % length,
            date,
            b"\r\nServer: polyserve\r\n",
            extra,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        )
    )


def _response(
    status: int, payload: bytes, content_type: bytes, extra: bytes, close: bool, date: bytes
) -> tuple[bytes, bytes]:
    return _head(status, len(payload), content_type, extra, close, date), payload

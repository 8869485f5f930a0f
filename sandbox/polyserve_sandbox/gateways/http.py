"""The HTTP/1.1 side of a listener: a reverse proxy that routes every request on its own.

Each request (also the tenth on one keep-alive connection) is matched against the port's
table as it is at that moment, gets a backend by weight and an endpoint, and is forwarded
with a pooled upstream connection; the answer streams back. What Envoy would answer, this
answers: 404 when no rule matches, 500 for an invalid backend's share, 503 when a Service has
no ready endpoint or the upstream cannot be reached, 504 past ``timeouts.request``.

A request whose upstream connection fails before any byte of an answer (a pooled keep-alive
connection to a pod that just went away, or a refused connect) is sent once more, to a
freshly drawn endpoint: the body is read whole first, so this is safe to repeat. That is the
one retry, so a rolling pod does not cost a client a request; nothing else is retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from polyserve_sandbox.gateways import routes, tables, upstreams

logger = logging.getLogger(__name__)

# Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1), and
# Expect, which the proxy answers itself (it reads the whole body before forwarding).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
ATTEMPTS = 2


def _forwarded(headers: Mapping[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in HOP_BY_HOP:
            out.add(name, value)
    return out


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")


class HttpProxy:
    """Answers the requests of one listener port (see the module docstring)."""

    def __init__(
        self,
        table: Callable[[], tables.PortTable],
        picker: upstreams.Upstreams,
        session: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self._table = table
        self._picker = picker
        self._session = session

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = request.headers

        def header(name: str) -> Sequence[str]:
            return headers.getall(name, ())

        def query(name: str) -> Sequence[str]:
            return request.query.getall(name, ())

        host = routes.request_host(headers.get("Host"))
        action = self._table().http_action(host, request.method, request.path, header, query)
        if action is None:
            return _plain(404, f"no route matches {request.method} {request.path}")
        if headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await request.content.read()
        try:
            async with asyncio.timeout(action.timeout):
                return await self._forward(request, action, body)
        except TimeoutError:
            return _plain(504, "upstream request timeout")

    async def _forward(
        self, request: web.BaseRequest, action: routes.Action, body: bytes
    ) -> web.StreamResponse:
        outgoing = _forwarded(request.headers)
        peer = request.remote or ""
        prior = outgoing.get("X-Forwarded-For")
        outgoing["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        outgoing.setdefault("X-Forwarded-Proto", "http")
        if action.request_headers is not None:
            action.request_headers.apply(outgoing)
        failure = "no attempt"
        for _ in range(ATTEMPTS):
            pick = self._picker.pick(action)
            if pick.endpoint is None:
                return _plain(pick.status, pick.reason)
            url = f"http://{pick.endpoint.ip}:{pick.endpoint.port}{request.raw_path}"
            try:
                upstream = await self._session().request(
                    request.method,
                    url,
                    headers=outgoing,
                    data=body if body else None,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=action.backend_timeout, sock_connect=5),
                )
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue  # nothing of an answer came: safe to send again, elsewhere
            except TimeoutError:
                return _plain(504, "upstream request timeout")
            except aiohttp.ClientError as exc:
                return _plain(503, f"upstream connect error: {exc}")
            async with upstream:
                return await self._relay(request, upstream, action)
        return _plain(503, f"upstream connect error or disconnect before headers: {failure}")

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, action: routes.Action
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.update(_forwarded(upstream.headers))
        if action.response_headers is not None:
            action.response_headers.apply(response.headers)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except aiohttp.ClientError as exc:
            # The answer has begun: all that is left is to cut the connection, as Envoy does.
            logger.info("upstream answer to %s broke off: %s", request.path, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

"""One Gateway port: HTTP/1.1 and gRPC on the same ``address:port``, told apart per
connection by its first bytes, as Envoy's HTTP connection manager does.

A connection that opens with the HTTP/2 preface (``PRI * HTTP/2.0``: gRPC over cleartext
HTTP/2 with prior knowledge) is relayed, byte for byte, to this port's ``grpc.aio`` server
(on the same address, a port of its own); any other is handed, with the bytes already read,
to this port's aiohttp server. So one listener serves both route kinds, and a client never
sees the difference. HTTP/2 without gRPC (h2c for plain HTTP) is not served.

``table`` is swapped whole when routes, weights or Services change; each request reads it
once, so a change counts from the next request on and none in flight is disturbed.
``close`` stops accepting, then lets requests and calls in flight finish (up to a grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp
import grpc.aio
from aiohttp import web

from polyserve_sandbox.gateways import grpc as grpc_proxy
from polyserve_sandbox.gateways import http as http_proxy
from polyserve_sandbox.gateways import tables, upstreams

logger = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class PortServer:
    """Serves one (address, port) of one Gateway with the routes of ``table``."""

    def __init__(
        self,
        address: str,
        port: int,
        table: tables.PortTable,
        picker: upstreams.Upstreams,
        session: Callable[[], aiohttp.ClientSession],
        channels: grpc_proxy.Channels,
    ) -> None:
        self.address = address
        self.port = port
        self.table = table
        self._http = web.Server(
            http_proxy.HttpProxy(lambda: self.table, picker, session).handle,
            access_log=None,
        )
        self._grpc = grpc.aio.server(options=grpc_proxy.OPTIONS)
        self._grpc.add_generic_rpc_handlers(
            (grpc_proxy.GrpcProxy(lambda: self.table, picker, channels),)
        )
        self._grpc_port = 0
        self._front: asyncio.Server | None = None
        self._undecided: set[asyncio.Transport] = set()  # connections that have said nothing

    async def start(self) -> None:
        """Bind and serve; ``OSError`` when the port cannot be had."""
        self._grpc_port = self._grpc.add_insecure_port(f"{self.address}:0")
        await self._grpc.start()
        loop = asyncio.get_running_loop()
        try:
            self._front = await loop.create_server(
                lambda: _Sniffer(self), host=self.address, port=self.port, reuse_address=True
            )
        except OSError:
            await self._grpc.stop(None)
            raise

    def http_protocol(self) -> asyncio.Protocol:
        protocol: asyncio.Protocol = self._http()
        return protocol

    def grpc_protocol(self) -> asyncio.Protocol:
        return _Relay((self.address, self._grpc_port))

    def undecided(self, transport: asyncio.Transport, waiting: bool) -> None:
        """A connection has not yet shown its protocol (``waiting``), or now has."""
        if waiting:
            self._undecided.add(transport)
        else:
            self._undecided.discard(transport)

    def stop_accepting(self) -> None:
        """Close the port to new connections (and those that never said a word)."""
        if self._front is not None:
            self._front.close()
        for transport in list(self._undecided):
            transport.close()

    async def close(self, grace: float) -> None:
        self.stop_accepting()
        await asyncio.gather(
            self._http.shutdown(grace), self._grpc.stop(grace), return_exceptions=True
        )
        if self._front is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._front.wait_closed(), grace)


class _Sniffer(asyncio.Protocol):
    """Reads a connection's first bytes, then hands it to the HTTP or the gRPC side."""

    def __init__(self, server: PortServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.undecided(transport, True)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < len(H2_PREFACE) and H2_PREFACE.startswith(self._buffer):
            return  # could still be the HTTP/2 preface: wait for more
        assert self._transport is not None
        self._server.undecided(self._transport, False)
        if self._buffer.startswith(H2_PREFACE):
            protocol = self._server.grpc_protocol()
        else:
            protocol = self._server.http_protocol()
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        protocol.data_received(self._buffer)
        self._buffer = b""

    def eof_received(self) -> bool | None:
        return False  # closed before saying anything: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._server.undecided(self._transport, False)
        self._transport = None


class _Relay(asyncio.Protocol):
    """Copies a client connection to an upstream one and back, with back-pressure."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._client: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._client = transport
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self._connect(), name="gateway-grpc-relay")

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(lambda: _Upstream(self), *self._target)
        except OSError as exc:
            logger.warning("gateway: the gRPC side of %s:%s is gone: %s", *self._target, exc)
            if self._client is not None:
                self._client.close()
            return
        if self._closed:
            upstream.close()
            return
        self._upstream = upstream
        for chunk in self._pending:
            upstream.write(chunk)
        self._pending.clear()
        if self._client is not None:
            self._client.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._upstream is None:
            self._pending.append(data)
        else:
            self._upstream.write(data)

    def eof_received(self) -> bool | None:
        if self._upstream is not None and self._upstream.can_write_eof():
            self._upstream.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._upstream is not None:
            self._upstream.close()

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    # From the upstream side:
    def upstream_data(self, data: bytes) -> None:
        if self._client is not None:
            self._client.write(data)

    def upstream_lost(self) -> None:
        if self._client is not None:
            self._client.close()

    def upstream_pause(self, pause: bool) -> None:
        if self._client is not None:
            if pause:
                self._client.pause_reading()
            else:
                self._client.resume_reading()


class _Upstream(asyncio.Protocol):
    def __init__(self, relay: _Relay) -> None:
        self._relay = relay

    def data_received(self, data: bytes) -> None:
        self._relay.upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.upstream_lost()

    def pause_writing(self) -> None:
        self._relay.upstream_pause(True)

    def resume_writing(self) -> None:
        self._relay.upstream_pause(False)


def session() -> aiohttp.ClientSession:
    """The upstream HTTP client the proxies share: pooled keep-alive connections, bodies
    passed through untouched (no decompression), no limit on connections."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )

"""The gRPC side of a listener: every call, unary or streaming, routed on its own.

A ``grpc.aio`` server with one generic handler takes any method; messages stay raw bytes
(no serializers), so nothing here knows the protocol of the service behind. Each call is
matched against the port's GRPCRoutes as they are when it starts, gets a backend by weight
and an endpoint, and is relayed over a channel kept per endpoint: request messages as they
come, then the answer's initial metadata, messages, trailing metadata and status. The
client's deadline goes along; cancelling the call cancels the upstream one.

Errors as the spec and Envoy word them: UNIMPLEMENTED when no GRPCRoute matches the method,
UNAVAILABLE for an invalid backend's share, a Service with no ready endpoint or an
unreachable one. Not seen: ``:authority``, which grpc's Python server does not expose, so
GRPCRoute ``hostnames`` decide where a route attaches, not which call it takes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from multidict import CIMultiDict

from polyserve_sandbox.gateways import tables, upstreams

logger = logging.getLogger(__name__)

# No size limits of our own: the backend enforces its own (the worker's are configurable).
OPTIONS = (("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1))


def _user_metadata(metadata: Sequence[Any]) -> CIMultiDict[Any]:
    """Metadata a client set (not the transport's own: pseudo-headers, ``grpc-*``,
    ``user-agent``), as a multi-dict the header filters can edit."""
    out: CIMultiDict[Any] = CIMultiDict()
    for key, value in metadata:
        if not key.startswith((":", "grpc-")) and key != "user-agent":
            out.add(key, value)
    return out


class Channels:
    """One channel per endpoint, opened on first use and kept (pod addresses are reused,
    and a channel to an address reconnects to whichever pod holds it)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], grpc.aio.Channel] = {}

    def to(self, ip: str, port: int) -> grpc.aio.Channel:
        channel = self._open.get((ip, port))
        if channel is None:
            channel = grpc.aio.insecure_channel(f"{ip}:{port}", options=OPTIONS)
            self._open[(ip, port)] = channel
        return channel

    async def close(self) -> None:
        for channel in self._open.values():
            await channel.close(grace=None)
        self._open.clear()


class GrpcProxy(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no stubs
    """Relays the calls of one listener port (see the module docstring)."""

    def __init__(
        self,
        table: Callable[[], tables.PortTable],
        picker: upstreams.Upstreams,
        channels: Channels,
    ) -> None:
        self._table = table
        self._picker = picker
        self._channels = channels

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = str(handler_call_details.method)
        metadata = _user_metadata(handler_call_details.invocation_metadata or ())

        async def relay(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            action = self._table().grpc_action(method, lambda k: metadata.getall(k, ()))
            if action is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no GRPCRoute matches {method}")
                return
            pick = self._picker.pick(action)
            if pick.endpoint is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, pick.reason)
                return
            outgoing = CIMultiDict(metadata)
            if action.request_headers is not None:
                action.request_headers.apply(outgoing)
            limits = [t for t in (context.time_remaining(), action.timeout) if t is not None]
            channel = self._channels.to(pick.endpoint.ip, pick.endpoint.port)
            call = channel.stream_stream(method)(
                requests, metadata=tuple(outgoing.items()), timeout=min(limits, default=None)
            )
            try:
                initial = _user_metadata(await call.initial_metadata())
                if action.response_headers is not None:
                    action.response_headers.apply(initial)
                await context.send_initial_metadata(tuple(initial.items()))
                async for message in call:
                    yield message
                trailing = _user_metadata(await call.trailing_metadata())
            except grpc.aio.AioRpcError as exc:
                trailing = _user_metadata(exc.trailing_metadata() or ())
                await context.abort(exc.code(), exc.details() or "", tuple(trailing.items()))
                return
            finally:
                call.cancel()  # a no-op once the call is over; ends it when ours was cancelled
            context.set_trailing_metadata(tuple(trailing.items()))

        return grpc.stream_stream_rpc_method_handler(relay)

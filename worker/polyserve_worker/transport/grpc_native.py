"""gRPC on a Rust front end (PyPI ``pygrpc-native``): no Python per HTTP/2 event.

grpc.aio runs gRPC core's completion queue on a poller thread and hands every completion
to the event loop through a socketpair wake-up and a Python callback, about four per unary
call (bench/RESULTS.md: ~75% of the busy loop thread, ~30 syscalls per inference). Here
tokio threads do HTTP/2 (framing, flow control, HPACK, deadlines) outside the GIL and hand
whole calls to Python as (call id, method, request bytes) events, many per wake-up: one
thread blocks in ``recv_batch`` with the GIL released and passes each batch to the loop with
one ``call_soon_threadsafe``. An answer is one ``respond(call_id, bytes)``.

The servicer is the same ``grpc.InferenceServicer`` grpc.aio serves, so both transports
share every decode, validation and error rule; this module only moves bytes and maps
aborts to statuses. Unary methods are served by the front itself. ``ModelStreamInfer``
(bidirectional) is what the Rust front cannot serve: it forwards that method to a grpc.aio
server on a private Unix socket in this process, so it works, at grpc.aio's speed.

Hostile input stays bounded as with grpc.aio: a message larger than
``max_message_size`` is refused RESOURCE_EXHAUSTED by its length before it is parsed; the
request's tensors then go through the same ``tensors.Budget`` as every transport.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pygrpc_native
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from polyserve_worker import dataplane, errors
from polyserve_worker.transport import grpc as grpc_transport

logger = logging.getLogger(__name__)

#: Events taken from the front per wake-up of the loop: under load a batch carries every
#: call that arrived since the last one, so the loop wakes once per batch, not per call.
MAX_EVENTS = 256
#: At the end of a stop, how long calls still running get to send the answer they have
#: (the worker has already answered its queues UNAVAILABLE) before they are cancelled.
CLOSE_WAIT_SECS = 0.5


SOCKET_NAME = "stream.sock"
#: The longest path a Unix socket address holds (``sun_path`` less its NUL).
SOCKET_PATH_MAX = 107


@dataclass
class SocketFolder:
    """A private folder for the stream socket, named by a path short enough to bind in."""

    path: str
    """Where the socket goes: the folder itself, or ``/proc/self/fd/N`` when its own path is
    too long for a socket's (the local fleet gives each pod's /tmp a deep folder, and its
    root is read-only): the process's handle on the folder names it in a few bytes."""
    folder: str
    handle: int | None = None

    def close(self) -> None:
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None
        shutil.rmtree(self.folder, ignore_errors=True)


def socket_folder() -> SocketFolder:
    """A new private folder in TMPDIR for the stream socket."""
    folder = tempfile.mkdtemp(prefix="polyserve-grpc-")
    if len(os.path.join(folder, SOCKET_NAME).encode()) <= SOCKET_PATH_MAX:
        return SocketFolder(folder, folder)
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    return SocketFolder(f"/proc/self/fd/{handle}", folder, handle)


class _Abort(grpc.aio.AbortError):  # type: ignore[misc]  # grpc has no type stubs
    """What ``context.abort`` raises here: the status the call ends with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of grpc.aio's ServicerContext the servicer's unary methods use."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Abort(code, details)


Handler = Callable[[int, bytes], Awaitable[None]]


class NativeFront:
    """The worker's gRPC port on pygrpc-native; ``ModelStreamInfer`` through grpc.aio."""

    name = "native"

    def __init__(
        self,
        core: dataplane.DataPlane,
        address: str,
        max_message_size: int,
        max_stream_in_flight: int = 64,
        reuse_port: bool = False,
        io_threads: int = 1,
    ) -> None:
        self.servicer = grpc_transport.InferenceServicer(core, max_stream_in_flight)
        self._core = core
        self._max_message_size = max_message_size
        unary = [
            (f"/{grpc_transport.SERVICE}/{name}", handler)
            for name, handler in grpc_transport.method_handlers(self.servicer).items()
            # the rest (ModelStreamInfer) goes to the grpc.aio server behind the front
            if not (handler.request_streaming or handler.response_streaming)
        ]
        native = [(path, False) for path, _ in unary]
        try:
            self._front = pygrpc_native.NativeGrpcFront(
                address,
                native,
                io_threads=io_threads,
                keepalive_permit_without_calls=False,
                reuse_port=reuse_port,
            )
        except OSError as exc:
            raise errors.ServerError(f"cannot bind gRPC to {address}: {exc}") from exc
        self.port: int = self._front.bound_port
        self._handlers: list[Handler] = [self._unary(handler) for _, handler in unary]
        self._options = [
            ("grpc.max_receive_message_length", max_message_size),
            ("grpc.max_send_message_length", -1),
        ]
        self._fallback: grpc.aio.Server | None = None
        self._socket: SocketFolder | None = None
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._ids: dict[asyncio.Task[None], int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump: threading.Thread | None = None
        self._closed = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._socket = socket_folder()
        path = os.path.join(self._socket.path, SOCKET_NAME)
        fallback = grpc.aio.server(options=self._options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, fallback)
        fallback.add_insecure_port(f"unix:{path}")
        await fallback.start()
        self._fallback = fallback
        self._front.set_fallback(path)
        self._front.start()
        self._pump = threading.Thread(target=self._receive, name="grpc-native-pump", daemon=True)
        self._pump.start()

    def _receive(self) -> None:
        """On its own thread: blocks in the front with the GIL released; each batch of
        calls reaches the loop in one wake-up."""
        front, loop = self._front, self._loop
        assert loop is not None
        while (events := front.recv_batch(MAX_EVENTS)) is not None:
            try:
                loop.call_soon_threadsafe(self._dispatch, events)
            except RuntimeError:  # the loop closed without a stop
                return

    def _dispatch(self, events: list[tuple[Any, ...]]) -> None:
        loop = self._loop
        assert loop is not None
        for kind, call_id, method_id, payload, _ in events:
            if kind == pygrpc_native.EVENT_CANCEL:
                task = self._calls.pop(call_id, None)
                if task is not None:
                    task.cancel()  # the client left or its deadline passed
                continue
            if self._closed:
                self._front.fail(
                    call_id, grpc.StatusCode.UNAVAILABLE.value[0], "the server is shutting down"
                )
                continue
            task = loop.create_task(self._handlers[method_id](call_id, payload))
            self._calls[call_id] = task
            self._ids[task] = call_id
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        call_id = self._ids.pop(task, None)
        if call_id is not None:
            self._calls.pop(call_id, None)

    def _unary(self, handler: Any) -> Handler:
        """A call of one unary method: its bytes parsed, the servicer run, the answer sent."""
        parse = handler.request_deserializer
        serialize = handler.response_serializer
        method = handler.unary_unary
        context = _Context()
        front = self._front
        limit = self._max_message_size

        async def call(call_id: int, payload: bytes) -> None:
            if len(payload) > limit:
                front.fail(
                    call_id,
                    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                    f"received message larger than max ({len(payload)} vs. {limit})",
                )
                return
            try:
                request = parse(payload) if parse is not None else payload
            except Exception:
                front.fail(
                    call_id, grpc.StatusCode.INVALID_ARGUMENT.value[0], "cannot parse the request"
                )
                return
            try:
                response = await method(request, context)
            except _Abort as abort:
                front.fail(call_id, abort.code.value[0], abort.details)
                return
            front.respond(call_id, serialize(response) if serialize is not None else response)

        return call

    async def stop(self, grace: float) -> asyncio.Task[None]:
        """Start the shutdown: streams through grpc.aio's quiesce (GOAWAY), unary calls
        served until the returned task has closed the front (after the drain)."""
        assert self._fallback is not None
        stopping = await self.servicer.quiesce(self._fallback, grace)
        return asyncio.create_task(self._close(stopping), name="grpc-native-stop")

    async def _close(self, fallback_stopped: asyncio.Task[None]) -> None:
        # Unary calls keep being served through the drain, as on open HTTP connections;
        # the front closes once the worker has stopped serving (its queues answered 503).
        await self._core.stopping.wait()
        await fallback_stopped
        self._closed = True
        running = list(self._calls.values())
        if running:
            await asyncio.wait(running, timeout=CLOSE_WAIT_SECS)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await asyncio.to_thread(self._front.close)
        if self._pump is not None:
            await asyncio.to_thread(self._pump.join, 5)
        if self._socket is not None:
            self._socket.close()

"""gRPC transport: ``inference.GRPCInferenceService`` from tritonclient's generated code.

Decodes typed contents and ``raw_input_contents`` into numpy arrays, calls the dataplane,
and answers with ``raw_output_contents`` as Triton does. Errors map through ``STATUS``;
RPCs this worker does not implement answer UNIMPLEMENTED saying so.

A ModelStreamInfer stream holds at most ``max_stream_in_flight`` requests that are decoded,
running or answered but unsent; past that it stops reading the stream, so HTTP/2 flow
control holds back a client that does not read its answers.

On shutdown, ``quiesce`` first holds new calls until they stop arriving: gRPC core cancels
(CANCELLED) every call that has reached the server but not yet the application when the
shutdown starts, and holding the calls lets every one of them reach it. Then the server's
``stop(grace)`` sends GOAWAY (clients move on; a new call gets UNAVAILABLE), the held calls
are served, and an open stream ends with UNAVAILABLE once the drain is over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from polyserve_worker import dataplane, errors, shm, tensors, tls, transport

logger = logging.getLogger(__name__)

#: Error class -> gRPC status, the one table for this transport (most specific first).
STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelLoadError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RequestTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ClientError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ServerError, grpc.StatusCode.INTERNAL),
)

#: Typed contents field -> the numpy type protobuf stores it in (wider than INT8/16, UINT8/16).
_FIELD_DTYPES = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

# Typed contents field per datatype; FP16 and BF16 travel only as raw bytes.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

T = TypeVar("T")

#: Before shutting down, new calls are held until none has arrived for this long (seconds):
#: far longer than a request in flight on a cluster network takes to arrive ...
QUIESCE_QUIET_SECS = 0.05
#: ... and at most this long, whatever clients keep sending.
QUIESCE_MAX_SECS = 0.5


def code_of(exc: Exception) -> grpc.StatusCode:
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _param_value(param: Any) -> Any:
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


#: ModelInferRequest's field number of ``raw_input_contents``.
_RAW_INPUT_CONTENTS = 7
#: Requests at least this large have their raw contents split off unparsed
#: (``split_raw_contents``); below it the copies cost less than the split.
SPLIT_BYTES = 64 * 1024


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def split_raw_contents(payload: bytes) -> tuple[bytes, list[memoryview]]:
    """A serialized ModelInferRequest without its ``raw_input_contents``, and those contents
    as views of ``payload``: parsing the whole message would copy every tensor twice (into
    protobuf's arena, then out as ``bytes``), and the tensors are most of a large request.
    Raises ``ValueError`` on a malformed message."""
    view = memoryview(payload)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    pos, end = 0, len(payload)
    while pos < end:
        start = pos
        key, pos = _varint(payload, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _varint(payload, pos)
            if pos + length > end:
                raise ValueError("a field runs past the end of the message")
            if field == _RAW_INPUT_CONTENTS:
                raw.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        elif wire == 0:
            _, pos = _varint(payload, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        if pos > end:
            raise ValueError("a field runs past the end of the message")
        rest.append(view[start:pos])
    return b"".join(rest), raw


def decode_request(
    request: Any,
    lease: shm.Lease,
    budget: tensors.Budget | None = None,
    raw_contents: list[memoryview] | None = None,
) -> tuple[dict[str, tensors.Array], list[str], dict[str, Any], dict[str, shm.Placement]]:
    """Decode a ModelInferRequest; every input is admitted by ``budget`` (the model's shapes,
    the request's caps) before its data is decoded. ``raw_contents``: the request's raw
    contents when they were split off (``split_raw_contents``)."""
    budget = budget or tensors.Budget()
    raw = request.raw_input_contents if raw_contents is None else raw_contents
    if raw and len(raw) != len(request.inputs):
        raise errors.InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in order"
        )
    inputs: dict[str, tensors.Array] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise errors.InvalidArgument(f"input '{name}' appears twice")
        shape = list(tensor.shape)
        if "shared_memory_region" in tensor.parameters:
            params = {k: _param_value(v) for k, v in tensor.parameters.items()}
            inputs[name] = lease.read(name, params, tensor.datatype, shape, budget)
            continue
        if raw:
            if tensor.HasField("contents"):
                raise errors.InvalidArgument(
                    f"input '{name}': use either raw_input_contents or typed contents, not both"
                )
            inputs[name] = tensors.from_raw(name, raw[index], tensor.datatype, shape, budget)
            continue
        inputs[name] = _typed_contents(tensor, budget)
    outputs = []
    placements: dict[str, shm.Placement] = {}
    for output in request.outputs:
        if "shared_memory_region" in output.parameters:
            out_params = {k: _param_value(v) for k, v in output.parameters.items()}
            placements[output.name] = lease.place(output.name, out_params)
        if "classification" in output.parameters:
            raise errors.Unsupported("the classification extension is not supported")
        outputs.append(output.name)
    params = {key: _param_value(value) for key, value in request.parameters.items()}
    return inputs, outputs, params, placements


def _typed_contents(tensor: Any, budget: tensors.Budget) -> tensors.Array:
    """One input from its typed ``contents``, values checked against the datatype's range."""
    name = tensor.name
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        if tensor.datatype in tensors.DTYPES:
            raise errors.InvalidArgument(
                f"input '{name}': {tensor.datatype} data must be sent in raw_input_contents"
            )
        raise errors.InvalidArgument(f"input '{name}': unknown datatype {tensor.datatype!r}")
    dims = budget.admit(name, tensor.datatype, list(tensor.shape))
    values = getattr(tensor.contents, field)
    count = tensors.element_count(dims)
    if len(values) != count:
        raise errors.InvalidArgument(
            f"input '{name}': shape {list(dims)} needs {count} elements, got {len(values)} "
            f"in {field}"
        )
    if tensor.datatype == "BYTES":
        budget.charge(name, sum(map(len, values)))
        array = np.empty(count, dtype=object)
        for i, item in enumerate(values):
            array[i] = bytes(item)
        return array.reshape(dims)
    stored = np.array(values, dtype=_FIELD_DTYPES[field])
    target = tensors.DTYPES[tensor.datatype]
    if target != stored.dtype and stored.size:
        info = np.iinfo(target)
        low, high = int(stored.min()), int(stored.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise errors.InvalidArgument(
                f"input '{name}': {field} value {bad} is outside the range of "
                f"{tensor.datatype} ({info.min}..{info.max})"
            )
    return stored.astype(target, copy=False).reshape(dims)


def encode_response(
    result: dataplane.InferResult, placements: dict[str, shm.Placement] | None = None
) -> Any:
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id
    )
    for name, array in result.outputs.items():
        out = response.outputs.add()
        out.name = name
        out.datatype = tensors.datatype_of(array)
        out.shape.extend(array.shape)
        placement = placements.get(name) if placements else None
        if placement is None:
            response.raw_output_contents.append(tensors.to_raw(array))
            continue
        for key, value in placement.write(name, array).items():
            if isinstance(value, str):
                out.parameters[key].string_param = value
            else:
                out.parameters[key].int64_param = value
        response.raw_output_contents.append(b"")  # keeps raw contents aligned with outputs
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, core: dataplane.DataPlane, max_stream_in_flight: int = 64) -> None:
        self.core = core
        self.max_stream_in_flight = max_stream_in_flight
        self._open = asyncio.Event()  # cleared while new calls are held (quiesce)
        self._open.set()
        self._last_call = 0.0

    async def quiesce(self, server: grpc.aio.Server, grace: float) -> asyncio.Task[None]:
        """Shut ``server`` down without losing a call: hold new calls until they stop
        arriving, start the shutdown (GOAWAY), then serve the held calls. Returns the
        shutdown, which ends when the calls in flight have."""
        self._open.clear()
        held = time.monotonic()
        while time.monotonic() - max(self._last_call, held) < QUIESCE_QUIET_SECS:
            if time.monotonic() - held > min(QUIESCE_MAX_SECS, grace):
                break
            await asyncio.sleep(QUIESCE_QUIET_SECS / 5)
        stopping = asyncio.create_task(server.stop(grace), name="grpc-stop")
        for _ in range(3):  # let the shutdown begin: from then on calls go elsewhere
            await asyncio.sleep(0)
        self._open.set()
        return stopping

    async def _guard(self, context: Any, call: Callable[[], Awaitable[T]]) -> T:
        """Run one call: held while quiescing, counted as activity, errors mapped."""
        self._last_call = time.monotonic()
        if not self._open.is_set():
            await self._open.wait()
        try:
            with self.core.activity:
                return await call()
        except errors.PolyserveError as exc:
            await context.abort(code_of(exc), str(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            logger.exception("gRPC call failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        raise AssertionError("unreachable")  # context.abort always raises

    async def ServerLive(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            return pb.ServerLiveResponse(live=self.core.live())

        return await self._guard(context, call)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            return pb.ServerReadyResponse(ready=self.core.ready())

        return await self._guard(context, call)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

        return await self._guard(context, call)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            meta = self.core.server_metadata()
            return pb.ServerMetadataResponse(
                name=meta["name"], version=meta["version"], extensions=meta["extensions"]
            )

        return await self._guard(context, call)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            meta = self.core.model_metadata(request.name, request.version)
            response = pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"]
            )
            for key, target in (("inputs", response.inputs), ("outputs", response.outputs)):
                for tensor in meta[key]:
                    target.add(
                        name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
                    )
            return response

        return await self._guard(context, call)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            config = self.core.model_config(request.name, request.version)
            return pb.ModelConfigResponse(config=config)

        return await self._guard(context, call)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            response = pb.ModelStatisticsResponse()
            for stats in await self.core.statistics_of_pod(request.name, request.version):
                json_format.ParseDict(stats, response.model_stats.add())
            return response

        return await self._guard(context, call)

    async def ModelInfer(
        self, request: Any, context: Any, raw_contents: list[memoryview] | None = None
    ) -> Any:
        """``raw_contents``: the request's raw contents, split off by a front that parsed
        the message itself (``split_raw_contents``)."""

        async def call() -> Any:
            return await self._infer(request, raw_contents)

        return await self._guard(context, call)

    async def _infer(self, request: Any, raw_contents: list[memoryview] | None = None) -> Any:
        served = self.core.require(request.model_name, request.model_version)
        lease = self.core.shm.lease()
        raw = request.raw_input_contents if raw_contents is None else raw_contents
        size = transport.decode_cost(served.config, _typed_size(request), sum(map(len, raw)))
        try:
            inputs, outputs, params, placements = await self.core.decode(
                served,
                size,
                lambda budget: decode_request(request, lease, budget, raw_contents),
            )
            result = await self.core.infer(
                request.model_name,
                request.model_version,
                inputs,
                outputs,
                params,
                request.id,
                mirror=not placements,
            )
            return await self.core.encode(result, lambda: encode_response(result, placements))
        finally:
            lease.release()

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Requests run concurrently; each answer (or its error) is sent as it completes.

        At most ``max_stream_in_flight`` requests are read ahead of the answers the client
        has taken; when the worker is about to exit, the stream stops reading, sends the
        answers it owes and ends with UNAVAILABLE."""
        self._last_call = time.monotonic()
        if not self._open.is_set():
            await self._open.wait()
        answers: asyncio.Queue[Any] = asyncio.Queue()
        slots = asyncio.Semaphore(self.max_stream_in_flight)
        running: set[asyncio.Task[None]] = set()
        done = object()

        async def handle(request: Any) -> None:
            try:
                with self.core.activity:
                    response = await self._infer(request)
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
            except errors.PolyserveError as exc:
                echo = pb.ModelInferResponse(
                    id=request.id,
                    model_name=request.model_name,
                    model_version=request.model_version,
                )
                answers.put_nowait(
                    pb.ModelStreamInferResponse(error_message=str(exc), infer_response=echo)
                )
            except Exception as exc:
                logger.exception("stream request failed")
                answers.put_nowait(
                    pb.ModelStreamInferResponse(error_message=f"internal error: {exc}")
                )

        async def read() -> None:
            requests = aiter(request_iterator)
            try:
                while True:
                    await slots.acquire()  # a free slot before reading: flow control holds
                    try:
                        request = await anext(requests)
                    except StopAsyncIteration:
                        break
                    task = asyncio.create_task(handle(request), name="stream-infer")
                    running.add(task)
                    task.add_done_callback(running.discard)
            finally:
                # Also when the worker stops reading: the requests read are answered.
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
                answers.put_nowait(done)

        reader = asyncio.create_task(read(), name="stream-reader")
        stopping = asyncio.create_task(self.core.stopping.wait(), name="stream-stopping")
        stopping.add_done_callback(lambda _: reader.cancel())
        try:
            while (item := await answers.get()) is not done:
                yield item
                slots.release()
        finally:
            stopping.cancel()
            reader.cancel()
            for task in list(running):
                task.cancel()
        if self.core.stopping.is_set():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down; open the stream again on another replica",
            )

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            response = pb.RepositoryIndexResponse()
            for row in self.core.repository_index(request.ready):
                response.models.add(**row)
            return response

        return await self._guard(context, call)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            files = {
                key[len("file:") :]: bytes(value.bytes_param)
                for key, value in request.parameters.items()
                if key.startswith("file:")
            }
            config = None
            if "config" in request.parameters:
                config = request.parameters["config"].string_param
            await self.core.load(request.model_name, config, files)
            return pb.RepositoryModelLoadResponse()

        return await self._guard(context, call)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            await self.core.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._guard(context, call)

    async def _unimplemented(self, context: Any, what: str) -> Any:
        async def call() -> Any:
            raise errors.Unsupported(f"{what} is not implemented by this worker")

        return await self._guard(context, call)

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            response = pb.SystemSharedMemoryStatusResponse()
            for region in self.core.shm.status(request.name, shm.SYSTEM):
                response.regions[region["name"]].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await self._guard(context, call)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self.core.shm.register_system(
                request.name, request.key, request.offset, request.byte_size
            )
            return pb.SystemSharedMemoryRegisterResponse()

        return await self._guard(context, call)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self.core.shm.unregister(request.name, shm.SYSTEM)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await self._guard(context, call)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            response = pb.CudaSharedMemoryStatusResponse()
            for region in self.core.shm.status(request.name, shm.CUDA):
                response.regions[region["name"]].CopyFrom(
                    pb.CudaSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await self._guard(context, call)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self.core.shm.register_cuda(
                request.name, bytes(request.raw_handle), request.device_id, request.byte_size
            )
            return pb.CudaSharedMemoryRegisterResponse()

        return await self._guard(context, call)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self.core.shm.unregister(request.name, shm.CUDA)
            return pb.CudaSharedMemoryUnregisterResponse()

        return await self._guard(context, call)

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        return await self._unimplemented(context, "the trace extension")

    async def LogSettings(self, request: Any, context: Any) -> Any:
        return await self._unimplemented(context, "the logging extension")


def _typed_size(request: Any) -> int:
    """Roughly how many bytes of typed contents a request carries (decoded value by value)."""
    size = 0
    for tensor in request.inputs:
        if tensor.HasField("contents"):
            contents = tensor.contents
            size += 4 * (
                len(contents.int_contents)
                + len(contents.uint_contents)
                + len(contents.fp32_contents)
                + len(contents.bool_contents)
            )
            size += 8 * (
                len(contents.int64_contents)
                + len(contents.uint64_contents)
                + len(contents.fp64_contents)
            )
            size += sum(map(len, contents.bytes_contents))
    return size


class Front(Protocol):
    """One gRPC port of the worker, whatever serves its HTTP/2 (``aio`` here, ``native`` in
    ``grpc_native``). ``stop`` begins the shutdown and returns the task that ends it: the
    worker drains between the two (server.py)."""

    #: ``native`` or ``aio``: what ``--grpc-transport`` resolved to.
    name: str
    port: int
    servicer: InferenceServicer

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> asyncio.Task[None]: ...


SERVICE = "inference.GRPCInferenceService"


class _Methods:
    """Collects the generated code's method handlers, as a grpc server would."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the generated code registers every method below as well

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update(handlers)


def method_handlers(servicer: InferenceServicer) -> dict[str, Any]:
    """Method name -> grpc handler: the generated ones, except ``ModelInfer``, which takes and
    answers bytes (identity serializers) so that its parsing is ours (``parse_infer``)."""
    methods = _Methods()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, methods)

    async def model_infer(payload: bytes, context: Any) -> bytes:
        try:
            request, raw = parse_infer(payload)
        except Exception as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot parse the request")
            raise AssertionError("unreachable") from exc  # context.abort always raises
        response = await servicer.ModelInfer(request, context, raw)
        serialized: bytes = response.SerializeToString()
        return serialized

    methods.handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(model_infer)
    return methods.handlers


def parse_infer(payload: bytes) -> tuple[Any, list[memoryview] | None]:
    """A serialized ModelInferRequest; a large one's raw contents stay in ``payload``."""
    if len(payload) >= SPLIT_BYTES:
        rest, raw = split_raw_contents(payload)
        return pb.ModelInferRequest.FromString(rest), raw
    return pb.ModelInferRequest.FromString(payload), None


class AioFront:
    """The port on grpc.aio: gRPC core's HTTP/2 in C, each completion through Python."""

    name = "aio"

    def __init__(
        self,
        core: dataplane.DataPlane,
        address: str,
        max_message_size: int,
        max_stream_in_flight: int = 64,
        reuse_port: bool = False,
        certificates: tls.Certificates | None = None,
    ) -> None:
        # No interceptors and no maximum_concurrent_rpcs: each costs Python per call.
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_size),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", int(reuse_port)),
            ]
        )
        self.servicer = InferenceServicer(core, max_stream_in_flight)
        handlers = method_handlers(self.servicer)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.server.add_registered_method_handlers(SERVICE, handlers)
        if certificates is not None:
            self.port: int = self.server.add_secure_port(address, certificates.grpc_credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise errors.ServerError(f"cannot bind gRPC to {address}")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float) -> asyncio.Task[None]:
        return await self.servicer.quiesce(self.server, grace)


#: What ``--grpc-transport`` may name.
TRANSPORTS = ("auto", "native", "aio")


def native_available() -> bool:
    """Whether the native front (PyPI pygrpc-native, in the worker extra) is installed."""
    try:
        import pygrpc_native  # noqa: F401
    except ImportError:
        return False
    return True


def create_front(
    core: dataplane.DataPlane,
    address: str,
    max_message_size: int,
    max_stream_in_flight: int = 64,
    transport: str = "auto",
    reuse_port: bool = False,
    certificates: tls.Certificates | None = None,
) -> Front:
    """A bound, not yet started gRPC port, over TLS with ``certificates``. ``auto`` is
    ``native`` where pygrpc-native is installed and TLS is off, else ``aio``; ``native``
    without it, or with TLS (which the native front cannot serve), is a startup error."""
    if transport == "auto":
        transport = "native" if native_available() and certificates is None else "aio"
    if transport == "native" and certificates is not None:
        raise errors.ServerError(
            "the native gRPC front (pygrpc-native) cannot serve TLS: use --grpc-transport=aio"
        )
    if transport == "native":
        if not native_available():
            raise errors.ServerError(
                "--grpc-transport=native needs pygrpc-native (pip install 'polyserve[worker]')"
            )
        from polyserve_worker.transport import grpc_native

        return grpc_native.NativeFront(
            core, address, max_message_size, max_stream_in_flight, reuse_port
        )
    if transport != "aio":
        raise errors.ServerError(f"unknown gRPC transport {transport!r}; one of {TRANSPORTS}")
    return AioFront(core, address, max_message_size, max_stream_in_flight, reuse_port, certificates)

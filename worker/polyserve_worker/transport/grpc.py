"""gRPC transport: ``inference.GRPCInferenceService`` from tritonclient's generated code.

Decodes typed contents and ``raw_input_contents`` into numpy arrays, calls the dataplane,
and answers with ``raw_output_contents`` as Triton does. Errors map through ``STATUS``;
RPCs this worker does not implement answer UNIMPLEMENTED saying so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from polyserve_worker import dataplane, errors, shm, tensors

logger = logging.getLogger(__name__)

#: Error class -> gRPC status, the one table for this transport (most specific first).
STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelLoadError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ClientError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ServerError, grpc.StatusCode.INTERNAL),
)

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


def code_of(exc: Exception) -> grpc.StatusCode:
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


async def _guard(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except errors.PolyserveError as exc:
        await context.abort(code_of(exc), str(exc))
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as exc:
        logger.exception("gRPC call failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
    raise AssertionError("unreachable")  # context.abort always raises


def _param_value(param: Any) -> Any:
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


def decode_request(
    request: Any, lease: shm.Lease
) -> tuple[dict[str, tensors.Array], list[str], dict[str, Any], dict[str, shm.Placement]]:
    raw = request.raw_input_contents
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
            inputs[name] = lease.read(name, params, tensor.datatype, shape)
            continue
        if raw:
            if tensor.HasField("contents"):
                raise errors.InvalidArgument(
                    f"input '{name}': use either raw_input_contents or typed contents, not both"
                )
            inputs[name] = tensors.from_raw(name, raw[index], tensor.datatype, shape)
            continue
        field = _CONTENTS.get(tensor.datatype)
        if field is None:
            if tensor.datatype in tensors.DTYPES:
                raise errors.InvalidArgument(
                    f"input '{name}': {tensor.datatype} data must be sent in raw_input_contents"
                )
            raise errors.InvalidArgument(f"input '{name}': unknown datatype {tensor.datatype!r}")
        values = getattr(tensor.contents, field)
        dims = tensors.check_shape(name, shape)
        count = tensors.element_count(dims)
        if len(values) != count:
            raise errors.InvalidArgument(
                f"input '{name}': shape {shape} needs {count} elements, got {len(values)} "
                f"in {field}"
            )
        if tensor.datatype == "BYTES":
            array = np.empty(count, dtype=object)
            for i, item in enumerate(values):
                array[i] = bytes(item)
            inputs[name] = array.reshape(dims)
        else:
            inputs[name] = np.asarray(values, dtype=tensors.DTYPES[tensor.datatype]).reshape(dims)
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
    def __init__(self, core: dataplane.DataPlane) -> None:
        self.core = core

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.core.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.core.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

        return await _guard(context, call)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.core.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

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

        return await _guard(context, call)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            config = self.core.model_config(request.name, request.version)
            return pb.ModelConfigResponse(config=config)

        return await _guard(context, call)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            response = pb.ModelStatisticsResponse()
            for stats in self.core.statistics(request.name, request.version):
                json_format.ParseDict(stats.to_dict(), response.model_stats.add())
            return response

        return await _guard(context, call)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            return await self._infer(request)

        return await _guard(context, call)

    async def _infer(self, request: Any) -> Any:
        self.core.require(request.model_name, request.model_version)
        lease = self.core.shm.lease()
        try:
            inputs, outputs, params, placements = decode_request(request, lease)
            result = await self.core.infer(
                request.model_name, request.model_version, inputs, outputs, params, request.id
            )
            return encode_response(result, placements)
        finally:
            lease.release()

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Requests run concurrently; each answer (or its error) is sent as it completes."""
        answers: asyncio.Queue[Any] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        done = object()

        async def handle(request: Any) -> None:
            try:
                response = await self._infer(request)
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except errors.PolyserveError as exc:
                echo = pb.ModelInferResponse(
                    id=request.id,
                    model_name=request.model_name,
                    model_version=request.model_version,
                )
                await answers.put(
                    pb.ModelStreamInferResponse(error_message=str(exc), infer_response=echo)
                )
            except Exception as exc:
                logger.exception("stream request failed")
                await answers.put(
                    pb.ModelStreamInferResponse(error_message=f"internal error: {exc}")
                )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(handle(request), name="stream-infer")
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
            finally:
                await answers.put(done)

        reader = asyncio.create_task(read(), name="stream-reader")
        try:
            while (item := await answers.get()) is not done:
                yield item
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            response = pb.RepositoryIndexResponse()
            for row in self.core.repository_index(request.ready):
                response.models.add(**row)
            return response

        return await _guard(context, call)

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

        return await _guard(context, call)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            await self.core.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await _guard(context, call)

    async def _unimplemented(self, context: Any, what: str) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented by this worker"
        )

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            response = pb.SystemSharedMemoryStatusResponse()
            for region in self.core.shm.status(request.name, shm.SYSTEM):
                response.regions[region["name"]].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await _guard(context, call)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self.core.shm.register_system(
                request.name, request.key, request.offset, request.byte_size
            )
            return pb.SystemSharedMemoryRegisterResponse()

        return await _guard(context, call)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self.core.shm.unregister(request.name, shm.SYSTEM)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await _guard(context, call)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            response = pb.CudaSharedMemoryStatusResponse()
            for region in self.core.shm.status(request.name, shm.CUDA):
                response.regions[region["name"]].CopyFrom(
                    pb.CudaSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await _guard(context, call)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self.core.shm.register_cuda(
                request.name, bytes(request.raw_handle), request.device_id, request.byte_size
            )
            return pb.CudaSharedMemoryRegisterResponse()

        return await _guard(context, call)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self.core.shm.unregister(request.name, shm.CUDA)
            return pb.CudaSharedMemoryUnregisterResponse()

        return await _guard(context, call)

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        return await self._unimplemented(context, "the trace extension")

    async def LogSettings(self, request: Any, context: Any) -> Any:
        return await self._unimplemented(context, "the logging extension")


def create_server(
    core: dataplane.DataPlane, address: str, max_message_size: int
) -> tuple[grpc.aio.Server, int]:
    """A started-later gRPC server bound to ``address``; returns it and the bound port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_size),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise errors.ServerError(f"cannot bind gRPC to {address}")
    return server, port

"""TensorRT backend: serialized engines (``model.plan``) on NVIDIA GPUs.

The only module that imports tensorrt, and the CUDA runtime bindings (``cuda-python``) that
move tensors to and from the card, so a TensorRT worker needs neither torch nor pycuda.
Everything is read from the engine: I/O tensor names, modes and types, and the dynamic-shape
optimization profile, whose largest leading dimension becomes ``max_batch_size`` when every
tensor's leading dimension is dynamic. The engine's precision was fixed when it was built
(``trtexec --fp16`` / ``--int8``), so there is no precision switch here. Each instance is
one execution context with its own CUDA stream and device buffers, used from the instance's
own thread, on ``cuda:<device_id>``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyserve_worker import config as model_config
from polyserve_worker import errors, tensors
from polyserve_worker.backends import base, configs
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

# trt.DataType member names -> Triton config types.
_TRT_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "INT8": "TYPE_INT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "HALF": "TYPE_FP16",
    "BF16": "TYPE_BF16",
    "FLOAT": "TYPE_FP32",
}


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise errors.ModelLoadError(
            "TensorRT is not installed in this worker: pip install 'polyserve[tensorrt]' "
            "on a node with an NVIDIA GPU"
        ) from exc
    return tensorrt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:  # cuda-python before 12.6 spelled it this way
            from cuda import cudart as runtime
        except ImportError as exc:
            raise errors.ModelLoadError(
                "the CUDA runtime bindings are not installed: pip install 'polyserve[tensorrt]'"
            ) from exc
    return runtime


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (error, *values): raise on error, return the value(s)."""
    cudart = _cudart()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise errors.ServerError(f"CUDA {what} failed: {error}")
    return values[0] if len(values) == 1 else tuple(values)


def _deserialize(trt: Any, config: Any, model_path: Path) -> Any:
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    try:
        engine = runtime.deserialize_cuda_engine(model_path.read_bytes())
    except Exception as exc:
        raise errors.ModelLoadError(
            f"model '{config.name}': TensorRT cannot deserialize {model_path}: {exc}"
        ) from exc
    if engine is None:
        raise errors.ModelLoadError(
            f"model '{config.name}': TensorRT cannot deserialize {model_path}: not an engine, "
            "or built by another TensorRT version or for another GPU"
        )
    return engine


class _Io:
    """One engine I/O tensor as the config and the execution need it."""

    def __init__(self, trt: Any, engine: Any, name: str) -> None:
        self.name = name
        self.is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = engine.get_tensor_dtype(name).name
        if dtype not in _TRT_TYPES:
            raise errors.ModelLoadError(
                f"engine tensor '{name}' has type {dtype}, which the protocol cannot carry"
            )
        self.type = _TRT_TYPES[dtype]
        self.dtype = configs.numpy_dtype(configs.config_type(self.type))
        self.shape: list[int | None] = [
            None if d < 0 else int(d) for d in engine.get_tensor_shape(name)
        ]
        self.max_shape: list[int] | None = None
        if self.is_input and engine.num_optimization_profiles > 0 and None in self.shape:
            _, _, largest = engine.get_tensor_profile_shape(name, 0)
            self.max_shape = [int(d) for d in largest]


def _io(trt: Any, engine: Any) -> list[_Io]:
    tensors_ = [_Io(trt, engine, engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)]
    for tensor in tensors_:
        if engine.is_shape_inference_io(tensor.name):
            raise errors.ModelLoadError(
                f"engine tensor '{tensor.name}' is a shape tensor, which this backend does not "
                "serve"
            )
    return tensors_


class TensorRtBackend:
    name = "tensorrt"
    default_filename = "model.plan"

    def complete_config(self, config: Any, model_path: Path) -> None:
        trt = _trt()
        engine = _deserialize(trt, config, model_path)
        io = _io(trt, engine)
        inputs = [t for t in io if t.is_input]
        outputs = [t for t in io if not t.is_input]
        unconfigured = config.max_batch_size == 0 and not config.input and not config.output
        if unconfigured and all(t.shape and t.shape[0] is None for t in io):
            largest = [t.max_shape[0] for t in inputs if t.max_shape]
            config.max_batch_size = min(largest) if largest else configs.DEFAULT_MAX_BATCH_SIZE
            config.dynamic_batching.SetInParent()
        batched = config.max_batch_size > 0
        if not config.input:
            for t in inputs:
                configs.fill(config.input.add(), t.name, t.type, t.shape, batched)
        if not config.output:
            for t in outputs:
                configs.fill(config.output.add(), t.name, t.type, t.shape, batched)
        if not config.instance_group:  # an engine runs only on a GPU: say so by default
            config.instance_group.add(
                count=1, kind=model_config.model_config_pb2.ModelInstanceGroup.KIND_GPU
            )

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        if instance.kind != "KIND_GPU":
            raise errors.ModelLoadError(
                f"model '{config.name}': TensorRT engines run only on NVIDIA GPUs; set "
                "instance_group kind KIND_GPU"
            )
        loaded = TensorRtInstance(config, instance)
        await loaded.open(model_path)
        return loaded


class TensorRtInstance(base.BlockingInstance):
    def __init__(self, config: Any, instance: base.InstanceSpec) -> None:
        super().__init__(config.name, batched=config.max_batch_size > 0)
        self._config = config
        self._instance = instance
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._stream: Any = None
        self._context: Any = None
        self._engine: Any = None

    async def open(self, model_path: Path) -> None:
        """Create the context, stream and buffers on the thread that will use them."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open, model_path)
        except BaseException:
            await self.close()
            raise

    def _open(self, model_path: Path) -> None:
        trt, cudart = _trt(), _cudart()
        count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if self._instance.device_id >= count:
            raise errors.ModelLoadError(
                f"model '{self.model_name}': GPU {self._instance.device_id} does not exist "
                f"({count} visible)"
            )
        _check(cudart.cudaSetDevice(self._instance.device_id), "cudaSetDevice")
        self._engine = _deserialize(trt, self._config, model_path)
        self._io = {t.name: t for t in _io(trt, self._engine)}
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise errors.ModelLoadError(
                f"model '{self.model_name}': TensorRT could not create an execution context "
                "(out of GPU memory?)"
            )
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        if self._engine.num_optimization_profiles > 1:
            self._context.set_optimization_profile_async(0, int(self._stream))
        logger.info(
            "model '%s' instance %s: TensorRT %s on cuda:%d, tensors %s",
            self.model_name,
            self._instance.name,
            trt.__version__,
            self._instance.device_id,
            {name: (t.type, t.shape) for name, t in self._io.items()},
        )

    def _buffer(self, name: str, nbytes: int) -> int:
        """The tensor's device buffer, grown when a larger batch needs more room."""
        cudart = _cudart()
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(cudart.cudaFree(pointer), "cudaFree")
            pointer = int(_check(cudart.cudaMalloc(max(nbytes, 256)), "cudaMalloc"))
            self._buffers[name] = (pointer, max(nbytes, 256))
            self._context.set_tensor_address(name, pointer)
        return pointer

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> base.Outputs:
        cudart = _cudart()
        _check(cudart.cudaSetDevice(self._instance.device_id), "cudaSetDevice")
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        stream = self._stream
        staged = []  # host arrays must outlive the asynchronous copies
        for name, array in inputs.items():
            spec = self._io.get(name)
            if spec is None or not spec.is_input:
                continue
            host = np.ascontiguousarray(
                array.view(np.uint16) if array.dtype == tensors.BF16 else array
            )
            staged.append(host)
            if not self._context.set_input_shape(name, tuple(host.shape)):
                raise errors.InvalidArgument(
                    f"input '{name}': shape {list(host.shape)} is outside the engine's "
                    f"optimization profile (largest {spec.max_shape})"
                )
            pointer = self._buffer(name, host.nbytes)
            _check(
                cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, to_device, stream),
                "copy to device",
            )
        names = list(outputs) or [n for n, t in self._io.items() if not t.is_input]
        results: dict[str, Array] = {}
        for name in (n for n, t in self._io.items() if not t.is_input):
            spec = self._io[name]
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            storage = np.uint16 if spec.dtype == tensors.BF16 else spec.dtype
            host = np.empty(shape, dtype=storage)
            self._buffer(name, host.nbytes)
            results[name] = host
        if not self._context.execute_async_v3(int(stream)):
            raise errors.ServerError(f"model '{self.model_name}': TensorRT execution failed")
        for name in names:
            host = results[name]
            pointer, _ = self._buffers[name]
            _check(
                cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, to_host, stream),
                "copy to host",
            )
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        del staged
        return {
            name: results[name].view(tensors.BF16)
            if self._io[name].dtype == tensors.BF16
            else results[name]
            for name in names
        }

    def release(self) -> None:
        if self._buffers or self._stream is not None:
            cudart = _cudart()
            for pointer, _ in self._buffers.values():
                cudart.cudaFree(pointer)
            self._buffers.clear()
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
                self._stream = None
        self._context = None
        self._engine = None

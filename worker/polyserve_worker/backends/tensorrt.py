"""TensorRT backend: serialized engines (``model.plan``), or ONNX built into one, on NVIDIA GPUs.

The only module that imports tensorrt, and the CUDA runtime bindings (``cuda-python``) that
move tensors to and from the card, so a TensorRT worker needs neither torch nor pycuda.
Everything is read from the engine: I/O tensor names, modes and types, and the dynamic-shape
optimization profile, whose largest leading dimension becomes ``max_batch_size`` when every
tensor's leading dimension is dynamic. A plan's precision was fixed when it was built
(``trtexec --fp16`` / ``--int8``), so it runs as built. Each instance is one execution
context with its own CUDA stream and device buffers, used from the instance's own thread,
on ``cuda:<device_id>``.

One artifact, any pool: a ``model.onnx`` given to this backend is built into an engine at
load with TensorRT's ONNX parser, in ``parameters.precision`` (fp32 or fp16), with one
optimization profile from batch 1 to ``max_batch_size`` (Triton's default of 4 when the
config leaves it to the file). Building takes minutes on a large model, so the engine is
kept under the ``engine_cache`` parameter's folder (a volume the operator mounts) at
``<gpu product>/<TensorRT version>/<precision>/<sha256 of the ONNX>-<profile>.plan``: an
engine only runs on the GPU and TensorRT it was built for, and the profile (batch and
shapes) is part of what was built. A restart, or another replica on a shared volume, loads
the cached engine; one that no longer deserializes is rebuilt. Without the parameter the
engine goes under the temporary folder, which survives container restarts in a pod only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyserve_worker import config as model_config
from polyserve_worker import errors, tensors
from polyserve_worker.backends import base, configs
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

#: Precisions an engine is built in here (int8 needs a calibration set: build it yourself).
BUILD_PRECISIONS = ("fp32", "fp16")

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

    def __init__(self) -> None:
        self._building = threading.Lock()  # one build at a time: each takes the whole GPU

    def complete_config(self, config: Any, model_path: Path) -> None:
        trt = _trt()
        engine = self.engine(trt, config, model_path)
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

    def engine(self, trt: Any, config: Any, model_path: Path, device_id: int = 0) -> Any:
        """The deserialized engine of a plan, or of the ONNX file built (or cached) for it."""
        plan = self.plan(trt, config, model_path, device_id)
        try:
            return _deserialize(trt, config, plan)
        except errors.ModelLoadError:
            if plan == model_path:
                raise
            # A cached engine that no longer loads (a driver update, a torn copy): rebuild.
            logger.warning(
                "model '%s': cached engine %s does not load; rebuilding", config.name, plan
            )
            plan.unlink(missing_ok=True)
            return _deserialize(trt, config, self.plan(trt, config, model_path, device_id))

    def plan(self, trt: Any, config: Any, model_path: Path, device_id: int = 0) -> Path:
        """The engine file to load: the model file itself, or the one built from ONNX."""
        if model_path.suffix != ".onnx":
            return model_path
        precision = configs.precision(config)
        if precision not in BUILD_PRECISIONS:
            raise errors.ModelLoadError(
                f"model '{config.name}': TensorRT builds engines from ONNX here in "
                f"{' or '.join(BUILD_PRECISIONS)}; for {precision}, build the engine yourself "
                "(trtexec with a calibration set) and serve the model.plan"
            )
        cudart = _cudart()
        _check(cudart.cudaSetDevice(device_id), "cudaSetDevice")
        properties = _check(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
        product = bytes(properties.name).split(b"\0", 1)[0].decode(errors="replace")
        # The parser owns the network's weights: it lives until the engine is built.
        builder, network, parser = _parse_onnx(trt, config, model_path)
        profile = build_profile(config, _network_inputs(network, config), _network_outputs(network))
        path = cache_path(
            _cache_root(config),
            product,
            trt.__version__,
            precision,
            _sha256(model_path),
            profile,
        )
        with self._building:
            if path.exists():
                logger.info("model '%s': TensorRT engine from the cache: %s", config.name, path)
                return path
            logger.info(
                "model '%s': building a TensorRT %s engine from %s for %s (profile %s); "
                "it is kept at %s",
                config.name,
                precision,
                model_path.name,
                product,
                profile,
                path,
            )
            _write_atomically(path, _build(trt, config, builder, network, profile, precision))
        del parser
        return path

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        if instance.kind != "KIND_GPU":
            raise errors.ModelLoadError(
                f"model '{config.name}': TensorRT engines run only on NVIDIA GPUs; set "
                "instance_group kind KIND_GPU"
            )
        loaded = TensorRtInstance(self, config, instance)
        await loaded.open(model_path)
        return loaded


#: One input's shapes for an optimization profile: (min, opt, max).
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def build_profile(
    config: Any,
    inputs: Sequence[tuple[str, Sequence[int]]],
    outputs: Sequence[Sequence[int]],
) -> Profile:
    """The optimization profile an ONNX file is built with, from its inputs' shapes (-1 for
    a dynamic dim) and the config: a leading dynamic dim is the batch, from 1 to
    ``max_batch_size`` (Triton's default when the config leaves batching to the file, as
    autocomplete would decide it), tuned for the largest (a loaded batcher forms full
    batches); any other dynamic dim takes the config's size for it."""
    unconfigured = config.max_batch_size == 0 and not config.input and not config.output
    shapes = [list(shape) for _, shape in inputs] + [list(shape) for shape in outputs]
    leading_dynamic = bool(shapes) and all(s and s[0] < 0 for s in shapes)
    batched = config.max_batch_size > 0 or (unconfigured and leading_dynamic)
    largest = config.max_batch_size or configs.DEFAULT_MAX_BATCH_SIZE
    listed = {t.name: list(t.dims) for t in config.input}
    profile: Profile = {}
    for name, shape in inputs:
        dims = list(shape)
        rest = dims[1:] if batched else dims
        given = listed.get(name)
        resolved = []
        for i, dim in enumerate(rest):
            if dim >= 0:
                resolved.append(int(dim))
            elif given is not None and i < len(given) and given[i] > 0:
                resolved.append(int(given[i]))
            else:
                raise errors.ModelLoadError(
                    f"model '{config.name}': ONNX input '{name}' has a dynamic dimension "
                    f"{i + (1 if batched else 0)} (shape {dims}); TensorRT builds an engine "
                    "for fixed sizes: give its size in the config's dims"
                )
        if batched:
            profile[name] = ((1, *resolved), (largest, *resolved), (largest, *resolved))
        else:
            profile[name] = (tuple(resolved), tuple(resolved), tuple(resolved))
    return profile


def cache_path(
    root: Path, product: str, trt_version: str, precision: str, onnx_sha256: str, profile: Profile
) -> Path:
    """Where an engine built from an ONNX file is kept: one folder per GPU product,
    TensorRT version and precision (an engine runs only where it was built), named by the
    ONNX file's sha256 and a digest of the optimization profile it was built for."""
    shapes = json.dumps({k: [list(s) for s in v] for k, v in sorted(profile.items())})
    digest = hashlib.sha256(shapes.encode()).hexdigest()[:12]
    return root / _label(product) / _label(trt_version) / precision / f"{onnx_sha256}-{digest}.plan"


def _label(text: str) -> str:
    """A GPU product or version as one path segment (``NVIDIA H200`` -> ``NVIDIA-H200``,
    GPU Feature Discovery's spelling)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "unknown"


def _cache_root(config: Any) -> Path:
    folder = configs.parameters(config).get(configs.ENGINE_CACHE)
    if folder:
        return Path(folder)
    logger.warning(
        "model '%s': no %s parameter: the engine built from ONNX is kept under the temporary "
        "folder, so a new pod builds it again",
        config.name,
        configs.ENGINE_CACHE,
    )
    return Path(tempfile.gettempdir()) / "polyserve-engines"


_digests: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's sha256, remembered while the file is unchanged (instances ask again)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(4 * 1024 * 1024):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the whole engine or none; replicas sharing the volume may race, the last
    rename wins and every copy is whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _parse_onnx(trt: Any, config: Any, model_path: Path) -> tuple[Any, Any, Any]:
    """(builder, network, parser) of the ONNX file, parsed by TensorRT's ONNX parser."""
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch, the only mode
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(model_path)):  # from a file: external weights load too
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise errors.ModelLoadError(
            f"model '{config.name}': TensorRT's ONNX parser cannot read {model_path.name}: "
            f"{problems or 'no reason given'}; serve it with backend onnxruntime instead"
        )
    return builder, network, parser


def _network_inputs(network: Any, config: Any) -> list[tuple[str, list[int]]]:
    inputs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.is_shape_tensor:
            raise errors.ModelLoadError(
                f"model '{config.name}': ONNX input '{tensor.name}' is a shape tensor, which "
                "this backend does not serve"
            )
        inputs.append((tensor.name, [int(d) for d in tensor.shape]))
    return inputs


def _network_outputs(network: Any) -> list[list[int]]:
    return [[int(d) for d in network.get_output(i).shape] for i in range(network.num_outputs)]


def _build(
    trt: Any, config: Any, builder: Any, network: Any, profile: Profile, precision: str
) -> bytes:
    build_config = builder.create_builder_config()
    optimization = builder.create_optimization_profile()
    for name, (smallest, tuned, largest) in profile.items():
        optimization.set_shape(name, smallest, tuned, largest)
    build_config.add_optimization_profile(optimization)
    if precision == "fp16":
        build_config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise errors.ModelLoadError(
            f"model '{config.name}': TensorRT could not build an engine (its log above says "
            "why); serve the ONNX file with backend onnxruntime instead"
        )
    return bytes(serialized)


class TensorRtInstance(base.BlockingInstance):
    def __init__(self, backend: TensorRtBackend, config: Any, instance: base.InstanceSpec) -> None:
        super().__init__(config.name, batched=config.max_batch_size > 0)
        self._backend = backend
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
        self._engine = self._backend.engine(trt, self._config, model_path, self._instance.device_id)
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

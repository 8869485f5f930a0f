"""ONNX Runtime backend: ``model.onnx`` on CPU, or on GPU through the CUDA/TensorRT providers.

The only module that imports onnxruntime. Thread counts come from the model's
``parameters`` (Triton's ORT backend names: ``intra_op_thread_count``,
``inter_op_thread_count``); the execution provider follows the instance kind and
``optimization.execution_accelerators`` as in Triton; ``parameters.precision: fp16`` on
GPU instances selects the TensorRT provider with FP16 on, the one provider that runs an
FP32 ONNX file in FP16; its engines are cached under the ``engine_cache`` parameter's folder
when set. A config whose tensors do not match the file fails at load.
ONNX Runtime's telemetry (a database it writes under ``$HOME/.cache``) is turned off.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.metadata
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyserve_worker import errors, tensors
from polyserve_worker.backends import base, configs
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16

# ONNX Runtime element type strings -> Triton config types.
_ORT_TYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
}


def _ort() -> Any:
    # ONNX Runtime reads this once, when it is first imported: without it, it keeps a
    # telemetry database and a device id under $HOME/.cache/Microsoft. Set it to 0 in the
    # worker's environment to allow telemetry deliberately.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime
    except ImportError as exc:
        raise errors.ModelLoadError(
            "ONNX Runtime is not installed in this worker: pip install 'polyserve[onnx]' "
            "(or 'polyserve[onnx-gpu]' for GPUs)"
        ) from exc
    return onnxruntime


class OnnxRuntimeBackend:
    name = "onnxruntime"
    default_filename = "model.onnx"

    def complete_config(self, config: Any, model_path: Path) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise errors.ModelLoadError(
                f"{model_path}: ONNX Runtime cannot read it: {exc}"
            ) from exc
        inputs = [_describe(t) for t in session.get_inputs()]
        outputs = [_describe(t) for t in session.get_outputs()]
        del session
        # Triton's autocomplete: a leading dynamic dimension on every tensor means the
        # model batches; serve it with a batcher of a moderate size.
        batched = configs.autocomplete_batching(
            config, [shape for _, _, shape in (*inputs, *outputs)]
        )
        if not config.input:
            for name, type_, shape in inputs:
                configs.fill(config.input.add(), name, type_, shape, batched)
        if not config.output:
            for name, type_, shape in outputs:
                configs.fill(config.output.add(), name, type_, shape, batched)
        configs.check_io(config, inputs, outputs)

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        # Building a session compiles the graph: keep it off the event loop.
        return await asyncio.to_thread(OnnxRuntimeInstance, config, model_path, instance)


class OnnxRuntimeInstance(base.BlockingInstance):
    def __init__(self, config: Any, model_path: Path, instance: base.InstanceSpec) -> None:
        super().__init__(config.name, batched=config.max_batch_size > 0)
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = configs.int_param(
            config, ("intra_op_thread_count",), configs.default_threads(config)
        )
        options.inter_op_num_threads = configs.int_param(config, ("inter_op_thread_count",), 1)
        # Spinning threads steal the cores the server and other instances need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = _providers(ort, config, instance)
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model '{config.name}': ONNX Runtime failed to load {model_path}: {exc}"
            ) from exc
        self._input_names = {t.name for t in self._session.get_inputs()}
        self._all_outputs = [t.name for t in self._session.get_outputs()]
        self._bf16 = any(
            t.type == "tensor(bfloat16)"
            for t in (*self._session.get_inputs(), *self._session.get_outputs())
        )
        logger.info(
            "model '%s' instance %s: providers %s, %d intra-op threads",
            config.name,
            instance.name,
            self._session.get_providers(),
            options.intra_op_num_threads,
        )

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> base.Outputs:
        names = list(outputs) or self._all_outputs
        feed = {
            name: _to_ort_strings(name, array) if array.dtype == object else array
            for name, array in inputs.items()
            if name in self._input_names
        }
        if self._bf16:
            return self._run_bf16(feed, names)
        produced = self._session.run(names, feed)
        return {
            name: _from_ort_strings(array) if array.dtype == object else array
            for name, array in zip(names, produced, strict=True)
        }

    def _run_bf16(self, feed: dict[str, Array], names: list[str]) -> base.Outputs:
        # ONNX Runtime's Python API has no numpy bfloat16: pass BF16 tensors as OrtValues
        # of raw uint16 and read BF16 outputs back from their buffers.
        ort = _ort()
        values = {
            name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                np.ascontiguousarray(array).view(np.uint16), _ONNX_BFLOAT16
            )
            if array.dtype == tensors.BF16
            else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
            for name, array in feed.items()
        }
        produced = self._session.run_with_ort_values(names, values)
        result: base.Outputs = {}
        for name, value in zip(names, produced, strict=True):
            if value.data_type() == "tensor(bfloat16)":
                count = int(np.prod(value.shape()))
                buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
                raw = np.ctypeslib.as_array(buffer).copy()
                result[name] = raw.view(tensors.BF16).reshape(value.shape())
            else:
                result[name] = value.numpy()
        return result

    def release(self) -> None:
        del self._session


def _to_ort_strings(name: str, array: Array) -> Array:
    # ONNX Runtime string tensors take Python str (it would str() a bytes object).
    out = np.empty(array.shape, dtype=object)
    flat_in = array.reshape(-1)
    flat_out = out.reshape(-1)
    for i, item in enumerate(flat_in):
        try:
            flat_out[i] = item.decode() if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as exc:
            raise errors.InvalidArgument(
                f"input '{name}': ONNX Runtime string tensors must be UTF-8 text"
            ) from exc
    return out


def _from_ort_strings(array: Array) -> Array:
    out = np.empty(array.shape, dtype=object)
    flat_out = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        flat_out[i] = item.encode() if isinstance(item, str) else bytes(item)
    return out


def _providers(ort: Any, config: Any, instance: base.InstanceSpec) -> list[Any]:
    available = ort.get_available_providers()
    if instance.kind != "KIND_GPU":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise errors.ModelLoadError(
            f"model '{config.name}': instance_group KIND_GPU needs ONNX Runtime's CUDA "
            f"execution provider, but this worker has only {available}: install "
            "'polyserve[onnx-gpu]' on a node with an NVIDIA GPU, or use KIND_CPU"
        )
    providers: list[Any] = []
    accelerators = {
        a.name: dict(a.parameters)
        for a in config.optimization.execution_accelerators.gpu_execution_accelerator
    }
    # Two ways to ask for TensorRT: Triton's accelerator entry (with its precision_mode),
    # or parameters.precision fp16, which only the TensorRT provider can run.
    fp16 = (
        configs.precision(config) == "fp16"
        or accelerators.get("tensorrt", {}).get("precision_mode", "").upper() == "FP16"
    )
    if "tensorrt" in accelerators or fp16:
        if "TensorrtExecutionProvider" not in available:
            why = "fp16 on ONNX Runtime runs through" if fp16 else "the tensorrt accelerator needs"
            raise errors.ModelLoadError(
                f"model '{config.name}': {why} ONNX Runtime's TensorRT execution provider, "
                f"which this worker lacks (it has {available})"
            )
        options: dict[str, Any] = {"device_id": instance.device_id, "trt_fp16_enable": fp16}
        workspace = accelerators.get("tensorrt", {}).get("max_workspace_size_bytes")
        if workspace:
            options["trt_max_workspace_size"] = int(workspace)
        options.update(_engine_cache(ort, config, "fp16" if fp16 else "fp32"))
        providers.append(("TensorrtExecutionProvider", options))
    providers.append(("CUDAExecutionProvider", {"device_id": instance.device_id}))
    providers.append("CPUExecutionProvider")
    return providers


def _engine_cache(ort: Any, config: Any, precision: str) -> dict[str, Any]:
    """The TensorRT provider's engine and timing caches under the ``engine_cache`` parameter's
    folder (the TensorRT backend's parameter too), so a restarted pod does not rebuild.
    The provider names its files by the model's hash and the GPU's compute capability; the
    folder adds what it cannot tell apart: the ONNX Runtime and TensorRT versions, and the
    precision."""
    folder = configs.parameters(config).get(configs.ENGINE_CACHE)
    if not folder:
        return {}
    try:
        trt_version = importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        trt_version = "bundled"
    path = Path(folder) / "onnxruntime" / f"{ort.__version__}-trt{trt_version}" / precision
    path.mkdir(parents=True, exist_ok=True)
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(path),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(path),
    }


def _describe(tensor: Any) -> configs.Described:
    """An ONNX Runtime input or output as (name, Triton type, shape with None = dynamic)."""
    try:
        type_ = _ORT_TYPES[tensor.type]
    except KeyError:
        raise errors.ModelLoadError(
            f"tensor '{tensor.name}' has type {tensor.type}, which the protocol cannot carry"
        ) from None
    return tensor.name, type_, [d if isinstance(d, int) else None for d in tensor.shape]

"""OpenVINO backend: IR (``model.xml`` + ``model.bin``) or ONNX, compiled for the Xeon tier.

The only module that imports openvino. ``parameters.precision`` becomes
``INFERENCE_PRECISION_HINT`` (fp32 -> f32, bf16 -> bf16, fp16 -> f16 on GPU): fp32 is set
explicitly because OpenVINO's CPU plugin otherwise picks bf16 by itself on AMX CPUs, and
one log line per instance says which precision actually runs, since a CPU without
AVX512_BF16/AMX quietly runs f32. ``PERFORMANCE_HINT`` (LATENCY or THROUGHPUT),
``NUM_STREAMS`` and ``INFERENCE_NUM_THREADS`` pass through from ``parameters``.

Each instance compiles the model once and keeps a pool of infer requests, as many as the
compiled model says it runs at once (one per stream). The batcher hands an instance one
batch at a time; the instance splits it across its free requests, so with THROUGHPUT and
several streams the parts of a batch overlap, and with LATENCY the batch runs whole on one
request. Devices: ``CPU``; ``GPU.<device_id>`` (Intel GPUs, OpenVINO's GPU plugin) when
present.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyserve_worker import errors, tensors
from polyserve_worker.backends import base, configs
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

# OpenVINO element type names -> Triton config types.
_OV_TYPES = {
    "boolean": "TYPE_BOOL",
    "u8": "TYPE_UINT8",
    "u16": "TYPE_UINT16",
    "u32": "TYPE_UINT32",
    "u64": "TYPE_UINT64",
    "i8": "TYPE_INT8",
    "i16": "TYPE_INT16",
    "i32": "TYPE_INT32",
    "i64": "TYPE_INT64",
    "f16": "TYPE_FP16",
    "bf16": "TYPE_BF16",
    "f32": "TYPE_FP32",
    "f64": "TYPE_FP64",
}

_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_PASSED_THROUGH = ("NUM_STREAMS", "INFERENCE_NUM_THREADS")

_core: Any = None


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise errors.ModelLoadError(
            "OpenVINO is not installed in this worker: pip install 'polyserve[openvino]'"
        ) from exc
    return openvino


def _get_core() -> Any:
    """One ``ov.Core`` per process: it owns the device plugins and their thread pools."""
    global _core
    if _core is None:
        _core = _ov().Core()
    return _core


def _read(config: Any, model_path: Path) -> Any:
    try:
        return _get_core().read_model(str(model_path))
    except Exception as exc:
        raise errors.ModelLoadError(
            f"model '{config.name}': OpenVINO cannot read {model_path}: {exc}"
        ) from exc


def _describe(port: Any) -> tuple[str, str, list[int | None]]:
    name = port.get_any_name()
    element = port.get_element_type().get_type_name()
    if element not in _OV_TYPES:
        raise errors.ModelLoadError(
            f"tensor '{name}' has OpenVINO type {element}, which this backend does not serve"
        )
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        raise errors.ModelLoadError(f"tensor '{name}' has a dynamic rank; set its dims")
    dims = [d.get_length() if d.is_static else None for d in shape]
    return name, _OV_TYPES[element], dims


class OpenVinoBackend:
    name = "openvino"
    default_filename = "model.xml"

    def complete_config(self, config: Any, model_path: Path) -> None:
        model = _read(config, model_path)
        inputs = [_describe(port) for port in model.inputs]
        outputs = [_describe(port) for port in model.outputs]
        batched = configs.autocomplete_batching(
            config, [shape for _, _, shape in (*inputs, *outputs)]
        )
        if not config.input:
            for name, type_, shape in inputs:
                configs.fill(config.input.add(), name, type_, shape, batched)
        if not config.output:
            for name, type_, shape in outputs:
                configs.fill(config.output.add(), name, type_, shape, batched)

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        return await asyncio.to_thread(OpenVinoInstance, config, model_path, instance)


class OpenVinoInstance:
    """A compiled model and its pool of infer requests; async, not a BlockingInstance."""

    def __init__(self, config: Any, model_path: Path, instance: base.InstanceSpec) -> None:
        ov = self._ov = _ov()
        core = _get_core()
        self.model_name = config.name
        self.batched = config.max_batch_size > 0
        device = _device(core, config, instance)
        properties = _properties(config, device)
        model = _read(config, model_path)
        try:
            self._compiled = core.compile_model(model, device, properties)
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model '{config.name}': OpenVINO cannot compile {model_path} for {device}: {exc}"
            ) from exc
        size = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(size):
            self._requests.put_nowait(self._compiled.create_infer_request())
        self._pool_size = size
        # Each request waits in its own thread while OpenVINO computes on its streams.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix=f"openvino-{config.name}"
        )
        self._inputs = {
            p.get_any_name(): p.get_element_type().get_type_name() for p in model.inputs
        }
        self._outputs = [p.get_any_name() for p in model.outputs]
        self._bf16 = ov.Type.bf16
        asked = properties.get("INFERENCE_PRECISION_HINT", "default")
        runs = str(self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        capabilities = core.get_property(device.split(".")[0], "OPTIMIZATION_CAPABILITIES")
        logger.info(
            "model '%s' instance %s: OpenVINO %s runs %s (asked %s; device capabilities %s), "
            "%s hint, %s streams, %d infer requests",
            config.name,
            instance.name,
            device,
            runs,
            asked,
            "/".join(capabilities),
            self._compiled.get_property("PERFORMANCE_HINT"),
            self._compiled.get_property("NUM_STREAMS"),
            size,
        )
        if asked == "bf16" and runs != "bf16":
            logger.warning(
                "model '%s': bf16 was asked for but %s lacks AVX512_BF16/AMX; it runs %s",
                config.name,
                device,
                runs,
            )
        self.precision = runs

    async def execute(
        self, requests: Sequence[Mapping[str, Array]], outputs: Sequence[str]
    ) -> base.ExecuteResult:
        start = time.perf_counter_ns()
        names = list(outputs) or self._outputs
        groups = _groups(len(requests), self._pool_size if self.batched else len(requests))
        parts = await asyncio.gather(
            *(self._run_group([requests[i] for i in group], names) for group in groups)
        )
        results = [outcome for part in parts for outcome in part]
        done = time.perf_counter_ns()
        return base.ExecuteResult(results, base.Timings(0, done - start, 0))

    async def _run_group(
        self, group: Sequence[Mapping[str, Array]], names: list[str]
    ) -> list[base.Outputs | errors.PolyserveError]:
        if len(group) == 1:
            return [await self._infer_one(group[0], names)]
        merged = base.merge(group)
        try:
            produced = await self._infer(merged, names)
        except Exception:
            # Rerun each request alone so the failure lands on the request that caused it.
            logger.info("batch of %d failed on %s; isolating", len(group), self.model_name)
            return [await self._infer_one(r, names) for r in group]
        return base.split(produced, group, self.model_name)

    async def _infer_one(
        self, request: Mapping[str, Array], names: list[str]
    ) -> base.Outputs | errors.PolyserveError:
        try:
            return await self._infer(request, names)
        except errors.PolyserveError as exc:
            return exc
        except Exception as exc:
            error = errors.ServerError(f"model '{self.model_name}' failed to execute: {exc}")
            error.__cause__ = exc
            return error

    async def _infer(self, inputs: Mapping[str, Array], names: list[str]) -> base.Outputs:
        request = await self._requests.get()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, self._infer_blocking, request, inputs, names
            )
        finally:
            self._requests.put_nowait(request)

    def _infer_blocking(
        self, request: Any, inputs: Mapping[str, Array], names: list[str]
    ) -> base.Outputs:
        feed: dict[str, Any] = {}
        for name, array in inputs.items():
            if name not in self._inputs:
                continue
            if array.dtype == tensors.BF16:
                raw = np.ascontiguousarray(array).view(np.uint16)
                feed[name] = self._ov.Tensor(raw, list(array.shape), self._bf16)
            else:
                feed[name] = array
        # The arrays outlive this blocking call, so OpenVINO may read them in place.
        request.infer(feed, share_inputs=True)
        produced: base.Outputs = {}
        for name in names:
            tensor = request.get_tensor(name)
            data = np.array(tensor.data, copy=True)  # the request reuses its buffers
            if tensor.element_type == self._bf16:  # its .data is the raw 16 bits
                data = data.view(np.uint16).view(tensors.BF16)
            produced[name] = data
        return produced

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        while not self._requests.empty():
            self._requests.get_nowait()
        del self._compiled


def _groups(count: int, parts: int) -> list[list[int]]:
    """Split ``count`` requests into at most ``parts`` contiguous, near-equal groups."""
    parts = max(1, min(count, parts))
    bounds = np.linspace(0, count, parts + 1).round().astype(int)
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]


def _device(core: Any, config: Any, instance: base.InstanceSpec) -> str:
    if instance.kind != "KIND_GPU":
        return "CPU"
    devices = core.available_devices
    gpus = [d for d in devices if d.startswith("GPU")]
    if not gpus:
        raise errors.ModelLoadError(
            f"model '{config.name}': instance_group KIND_GPU needs OpenVINO's GPU plugin "
            f"(Intel GPUs), but this node offers {devices}; use KIND_CPU, or serve the model "
            "with ONNX Runtime or TensorRT on NVIDIA GPUs"
        )
    if f"GPU.{instance.device_id}" in gpus:
        return f"GPU.{instance.device_id}"
    if instance.device_id == 0 and "GPU" in gpus:
        return "GPU"
    raise errors.ModelLoadError(
        f"model '{config.name}': GPU.{instance.device_id} does not exist (OpenVINO sees {gpus})"
    )


def _properties(config: Any, device: str) -> dict[str, str]:
    params = configs.parameters(config)
    properties = {
        "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[configs.precision(config)],
        "PERFORMANCE_HINT": configs.choice_param(
            config, "PERFORMANCE_HINT", ("LATENCY", "THROUGHPUT"), "LATENCY"
        ),
    }
    for key in _PASSED_THROUGH:
        if key in params:
            properties[key] = params[key]
    if device == "CPU" and "INFERENCE_NUM_THREADS" not in properties:
        properties["INFERENCE_NUM_THREADS"] = str(configs.default_threads(config))
    return properties

"""PyTorch backend: TorchScript (``model.pt``) and ``torch.export`` programs (``model.pt2``).

The only module that imports torch. A TorchScript file does not record tensor types or
shapes, so its config must list inputs and outputs; they bind to the model's arguments and
results as Triton's PyTorch backend binds them: a ``<name>__<index>`` suffix (``INPUT__0``)
gives the position, otherwise input names that match ``forward``'s argument names bind by
name, otherwise the config's order is the order. A ``torch.export`` program records all of
it, so its config is completed from the file (``INPUT__i`` / ``OUTPUT__i`` as Triton names
them). Instances run on ``cpu`` or ``cuda:<device_id>`` by instance kind, under
``torch.inference_mode``; ``parameters.precision`` fp16/bf16 casts the weights and floating
inputs (outputs come back in the config's type); ``INTRA_OP_THREAD_COUNT`` (or
``intra_op_thread_count``) sets the instance thread's intra-op threads.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyserve_worker import errors, tensors
from polyserve_worker.backends import base, configs
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

_POSITION = re.compile(r"__(\d+)$")

# torch dtype names are numpy's (torch has no string tensors).
_TORCH_TYPES = configs.DTYPE_NAMES


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise errors.ModelLoadError(
            "PyTorch is not installed in this worker: pip install 'polyserve[torch]'"
        ) from exc
    return torch


def _is_export(model_path: Path) -> bool:
    return model_path.suffix == ".pt2"


class PyTorchBackend:
    name = "pytorch"
    default_filename = "model.pt"

    def complete_config(self, config: Any, model_path: Path) -> None:
        if not _is_export(model_path):
            configs.require_io(config, "TorchScript")
            _refuse_strings(config)
            return
        program = _load_export(_torch(), model_path, config.name)
        inputs, outputs = _export_signature(program)
        batched = configs.autocomplete_batching(
            config, [shape for _, _, shape in (*inputs, *outputs)]
        )
        if not config.input:
            for i, (_, type_, shape) in enumerate(inputs):
                configs.fill(config.input.add(), f"INPUT__{i}", type_, shape, batched)
        if not config.output:
            for i, (_, type_, shape) in enumerate(outputs):
                configs.fill(config.output.add(), f"OUTPUT__{i}", type_, shape, batched)
        _refuse_strings(config)

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        loaded = await asyncio.to_thread(PyTorchInstance, config, model_path, instance)
        await loaded.prepare()
        return loaded


class PyTorchInstance(base.BlockingInstance):
    def __init__(self, config: Any, model_path: Path, instance: base.InstanceSpec) -> None:
        super().__init__(config.name, batched=config.max_batch_size > 0)
        torch = self._torch = _torch()
        self._device = _device(torch, config, instance)
        precision = configs.precision(config)
        self._compute = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._threads = configs.int_param(
            config,
            ("INTRA_OP_THREAD_COUNT", "intra_op_thread_count"),
            configs.default_threads(config),
        )
        try:
            if _is_export(model_path):
                module = _load_export(torch, model_path, config.name).module()
                arg_names: list[str] = []
            else:
                module = torch.jit.load(str(model_path), map_location=self._device)
                arg_names = [a.name for a in module.forward.schema.arguments[1:]]
            module = module.to(self._device)
            if self._compute is not None:
                module = module.to(self._compute)
        except errors.PolyserveError:
            raise
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model '{config.name}': PyTorch cannot load {model_path}: {exc}"
            ) from exc
        if not _is_export(model_path):  # an exported program is already in eval form
            module.eval()
        self._module = module
        self._inputs = _ordered(config.input, arg_names)
        self._outputs = _ordered(config.output, [])
        self._output_types = configs.expected_types(config.output)
        logger.info(
            "model '%s' instance %s: PyTorch on %s, %s, %d intra-op threads",
            config.name,
            instance.name,
            self._device,
            precision,
            self._threads,
        )

    async def prepare(self) -> None:
        """Set the instance thread's intra-op threads (OpenMP counts them per thread)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._set_threads)

    def _set_threads(self) -> None:
        # torch initialises a thread's count from a process-wide value on its first use;
        # trigger that first, so the count set next is this thread's and stays.
        self._torch.get_num_threads()
        self._torch.set_num_threads(self._threads)

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> base.Outputs:
        torch = self._torch
        args = [self._to_torch(inputs[t.name]) for t in self._inputs if t.name in inputs]
        with torch.inference_mode():
            produced = self._module(*args)
        results = self._bind_outputs(produced)
        wanted = list(outputs) or list(results)
        return {name: results[name] for name in wanted}

    def _to_torch(self, array: Array) -> Any:
        torch = self._torch
        if array.dtype == tensors.BF16:
            tensor = torch.from_numpy(np.require(array.view(np.int16), requirements=["C", "W"]))
            tensor = tensor.view(torch.bfloat16)
        else:
            # Request buffers are read-only views of the wire bytes; torch wants to own them.
            tensor = torch.from_numpy(np.require(array, requirements=["C", "W"]))
        if self._compute is not None and tensor.is_floating_point():
            tensor = tensor.to(self._compute)
        return tensor.to(self._device, non_blocking=True)

    def _bind_outputs(self, produced: Any) -> base.Outputs:
        torch = self._torch
        if isinstance(produced, torch.Tensor):
            produced = (produced,)
        if isinstance(produced, Mapping):
            missing = [t.name for t in self._outputs if t.name not in produced]
            if missing:
                raise errors.ServerError(
                    f"model '{self.model_name}' returned keys {sorted(produced)}, "
                    f"not the configured outputs {missing}"
                )
            values = [produced[t.name] for t in self._outputs]
        else:
            produced = list(produced)
            if len(produced) < len(self._outputs):
                raise errors.ServerError(
                    f"model '{self.model_name}' returned {len(produced)} tensors; its config "
                    f"lists {len(self._outputs)} outputs"
                )
            values = produced[: len(self._outputs)]
        return {
            t.name: self._to_numpy(v, self._output_types[t.name])
            for t, v in zip(self._outputs, values, strict=True)
        }

    def _to_numpy(self, tensor: Any, dtype: np.dtype[Any]) -> Array:
        torch = self._torch
        tensor = tensor.detach()
        if dtype == tensors.BF16:
            raw: Array = tensor.to(torch.bfloat16).cpu().view(torch.int16).numpy()
            return raw.view(tensors.BF16)
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: widen before converting
            tensor = tensor.float()
        array: Array = tensor.cpu().numpy()
        return array if array.dtype == dtype else array.astype(dtype)

    def release(self) -> None:
        del self._module
        if self._device.startswith("cuda"):
            self._torch.cuda.empty_cache()


def _device(torch: Any, config: Any, instance: base.InstanceSpec) -> str:
    if instance.kind != "KIND_GPU":
        return "cpu"
    if not torch.cuda.is_available():
        raise errors.ModelLoadError(
            f"model '{config.name}': instance_group KIND_GPU needs CUDA, but this PyTorch "
            f"({torch.__version__}) sees no CUDA device: install a CUDA build of torch on a "
            "node with an NVIDIA GPU, or use KIND_CPU"
        )
    count = torch.cuda.device_count()
    if instance.device_id >= count:
        raise errors.ModelLoadError(
            f"model '{config.name}': GPU {instance.device_id} does not exist ({count} visible)"
        )
    return f"cuda:{instance.device_id}"


def _load_export(torch: Any, model_path: Path, model: str) -> Any:
    try:
        return torch.export.load(str(model_path))
    except Exception as exc:
        raise errors.ModelLoadError(
            f"model '{model}': PyTorch cannot load {model_path} as a torch.export program: {exc}"
        ) from exc


def _export_signature(
    program: Any,
) -> tuple[list[tuple[str, str, list[int | None]]], list[tuple[str, str, list[int | None]]]]:
    """(name, config type, shape with None for symbolic dims) of each user input and output."""
    nodes = {node.name: node for node in program.graph.nodes}
    signature = program.graph_signature
    inputs = [_describe(name, nodes[name].meta.get("val")) for name in signature.user_inputs]
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    results = output_node.args[0]
    outputs = [
        _describe(str(arg), getattr(arg, "meta", {}).get("val"))
        for arg in results[: len(signature.user_outputs)]
    ]
    return inputs, outputs


def _describe(name: str, value: Any) -> tuple[str, str, list[int | None]]:
    if value is None or not hasattr(value, "dtype"):
        raise errors.ModelLoadError(
            f"torch.export program: tensor '{name}' has no recorded type; list the inputs "
            "and outputs in the config"
        )
    dtype = str(value.dtype).removeprefix("torch.")
    if dtype not in _TORCH_TYPES:
        raise errors.ModelLoadError(
            f"torch.export program: tensor '{name}' has type {dtype}, which the protocol "
            "cannot carry"
        )
    shape = [d if isinstance(d, int) else None for d in value.shape]
    return name, _TORCH_TYPES[dtype], shape


def _ordered(entries: Sequence[Any], arg_names: Sequence[str]) -> list[Any]:
    """Config tensors in the order the model takes or returns them (see module docstring)."""
    positions = [_POSITION.search(t.name) for t in entries]
    if entries and all(p is not None for p in positions):
        indexed = sorted(
            zip((int(p.group(1)) for p in positions if p is not None), entries, strict=True),
            key=lambda pair: pair[0],
        )
        return [t for _, t in indexed]
    if arg_names and {t.name for t in entries} <= set(arg_names):
        return sorted(entries, key=lambda t: list(arg_names).index(t.name))
    return list(entries)


def _refuse_strings(config: Any) -> None:
    for tensor in (*config.input, *config.output):
        if configs.type_name(tensor.data_type) == "TYPE_STRING":
            raise errors.ModelLoadError(
                f"model '{config.name}': tensor '{tensor.name}' is TYPE_STRING, but PyTorch "
                "tensors cannot hold strings; serve text models with ONNX Runtime or "
                "TensorFlow, or send token ids"
            )

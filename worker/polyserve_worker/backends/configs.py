"""Reading a model config the same way in every backend: parameters, precision, tensor types.

Backends never import each other, so what they share in how they read a ``ModelConfig``
lives here: integer and choice parameters with errors that name the model, the precision
asked for, the default thread split over the container's CPUs, Triton's autocomplete batch
size, and the table from Triton's ``TYPE_*`` names to numpy dtypes. It knows no framework.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from polyserve_worker import config as model_config
from polyserve_worker import cpus, errors, tensors

#: The parameter naming the folder where engines built at load are kept (TensorRT from
#: ONNX, ONNX Runtime's TensorRT provider); the operator mounts a volume there.
ENGINE_CACHE = "engine_cache"

#: Triton's default for autocompleted models that batch (--backend-config default-max-batch-size).
DEFAULT_MAX_BATCH_SIZE = 4

#: numpy-style dtype names, which torch and TensorFlow use too -> Triton config types.
DTYPE_NAMES: dict[str, str] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}


def parameters(config: Any) -> dict[str, str]:
    """The config's ``parameters`` as plain strings."""
    return {key: value.string_value for key, value in config.parameters.items()}


def int_param(config: Any, keys: Sequence[str], default: int) -> int:
    """The first of ``keys`` present (Triton spells some in upper case), as an integer."""
    params = parameters(config)
    for key in keys:
        if key in params:
            try:
                value = int(params[key])
            except ValueError:
                raise errors.ModelLoadError(
                    f"model '{config.name}': parameter {key} must be an integer, "
                    f"got {params[key]!r}"
                ) from None
            if value < 0:
                raise errors.ModelLoadError(
                    f"model '{config.name}': parameter {key} must be >= 0, got {value}"
                )
            return value
    return default


def choice_param(config: Any, key: str, choices: Collection[str], default: str) -> str:
    """A parameter that must be one of ``choices`` (compared case-insensitively)."""
    value = parameters(config).get(key, default)
    folded = {c.upper(): c for c in choices}
    if value.upper() not in folded:
        raise errors.ModelLoadError(
            f"model '{config.name}': parameter {key} must be one of "
            f"{', '.join(choices)}, got {value!r}"
        )
    return folded[value.upper()]


def precision(config: Any) -> str:
    """``parameters.precision`` (fp32 unless set); the repository has checked it is allowed."""
    return parameters(config).get("precision", "fp32").lower()


def default_threads(config: Any) -> int:
    """The CPUs the container may use (its CPU limit, not the node's cores: ``cpus``) split
    evenly across the model's instances, so instances do not fight."""
    instances = sum(max(1, g.count) for g in config.instance_group) or 1
    return max(1, cpus.available() // instances)


def config_type(name: str) -> int:
    """``"TYPE_FP32"`` -> the ``DataType`` enum value."""
    value: int = model_config.model_config_pb2.DataType.Value(name)
    return value


def type_name(value: int) -> str:
    """The ``DataType`` enum value -> ``"TYPE_FP32"``."""
    return str(model_config.model_config_pb2.DataType.Name(value))


def numpy_dtype(value: int) -> np.dtype[Any]:
    """The numpy dtype of a config tensor type (object for TYPE_STRING)."""
    return tensors.DTYPES[tensors.wire_datatype(type_name(value))]


def fill(entry: Any, name: str, type_: str, shape: Sequence[int | None], batched: bool) -> None:
    """Fill a config input/output from a model file's view of a tensor (None = dynamic)."""
    entry.name = name
    entry.data_type = config_type(type_)
    dims = [-1 if d is None or d < 0 else int(d) for d in shape]
    entry.dims.extend(dims[1:] if batched else dims)


def autocomplete_batching(config: Any, shapes: Sequence[Sequence[int | None]]) -> bool:
    """Triton's autocomplete: batch when the config is empty and every tensor's leading dim
    is dynamic. Returns whether the model batches."""
    unconfigured = config.max_batch_size == 0 and not config.input and not config.output
    if unconfigured and shapes and all(_leading_dynamic(s) for s in shapes):
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        config.dynamic_batching.SetInParent()
    return bool(config.max_batch_size > 0)


def _leading_dynamic(shape: Sequence[int | None]) -> bool:
    return bool(shape) and (shape[0] is None or shape[0] < 0)


def require_io(config: Any, framework: str) -> None:
    """Refuse a config without inputs and outputs where the model file cannot tell them."""
    if not config.input or not config.output:
        raise errors.ModelLoadError(
            f"model '{config.name}': a {framework} file does not record its tensor names, "
            "types and shapes; list every input and output in the config (Triton's "
            "INPUT__0 / OUTPUT__0 naming gives their positions)"
        )


#: A tensor as a model file describes it: name, Triton type name, shape (None = dynamic).
Described = tuple[str, str, Sequence[int | None]]


def check_io(config: Any, inputs: Sequence[Described], outputs: Sequence[Described]) -> None:
    """Refuse, at load, a config whose tensors the model file lacks or has with another type
    or shape, and a model input the config leaves out: served, each would fail every request
    with a 500. Dims that either side leaves variable are not compared."""
    batched = config.max_batch_size > 0
    sides = (("input", config.input, inputs), ("output", config.output, outputs))
    for kind, listed, known in sides:
        by_name = {name: (type_, shape) for name, type_, shape in known}
        for tensor in listed:
            if tensor.name not in by_name:
                raise errors.ModelLoadError(
                    f"model '{config.name}': {kind} '{tensor.name}' is not in the model file, "
                    f"whose {kind}s are {sorted(by_name)}"
                )
            type_, shape = by_name[tensor.name]
            if type_name(tensor.data_type) != type_:
                raise errors.ModelLoadError(
                    f"model '{config.name}': {kind} '{tensor.name}' is "
                    f"{type_name(tensor.data_type)} in the config but {type_} in the model file"
                )
            dims = tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims
            expected = ([-1] if batched else []) + [int(d) for d in dims]
            actual = [-1 if d is None or d < 0 else int(d) for d in shape]
            if len(expected) != len(actual) or any(
                e != -1 and a != -1 and e != a for e, a in zip(expected, actual, strict=True)
            ):
                raise errors.ModelLoadError(
                    f"model '{config.name}': {kind} '{tensor.name}' has shape {expected} "
                    f"(with the batch dimension) in the config but {actual} in the model file"
                )
    listed_inputs = {t.name for t in config.input}
    unlisted = [name for name, _, _ in inputs if name not in listed_inputs]
    if unlisted:
        raise errors.ModelLoadError(
            f"model '{config.name}': the model file needs input(s) {unlisted}, which the "
            "config does not list"
        )


def expected_types(tensors_: Sequence[Any]) -> Mapping[str, np.dtype[Any]]:
    """Config tensor name -> numpy dtype."""
    return {t.name: numpy_dtype(t.data_type) for t in tensors_}

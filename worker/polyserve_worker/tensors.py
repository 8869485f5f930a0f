"""Tensor datatypes and their wire forms, shared by every transport and backend.

One table maps the Open Inference Protocol datatype names (``FP32``), Triton's config names
(``TYPE_FP32``) and numpy dtypes. BYTES tensors are numpy object arrays of ``bytes``; on the
wire (binary extension, gRPC raw contents) each element is a 4-byte little-endian length
followed by its bytes. BF16 uses ``ml_dtypes.bfloat16``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from polyserve_worker import errors

Array = npt.NDArray[Any]

BF16 = np.dtype(ml_dtypes.bfloat16)

#: OIP datatype -> numpy dtype (BYTES -> object).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "BF16": BF16,
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

#: Triton config name -> OIP datatype. TYPE_STRING is Triton's name for BYTES.
CONFIG_TO_WIRE: dict[str, str] = {f"TYPE_{name}": name for name in DTYPES if name != "BYTES"}
CONFIG_TO_WIRE["TYPE_STRING"] = "BYTES"
WIRE_TO_CONFIG: dict[str, str] = {wire: cfg for cfg, wire in CONFIG_TO_WIRE.items()}


def wire_datatype(config_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; plain OIP names pass through."""
    if config_type in DTYPES:
        return config_type
    try:
        return CONFIG_TO_WIRE[config_type]
    except KeyError:
        raise errors.InvalidArgument(f"unknown data type {config_type!r}") from None


def datatype_of(array: Array) -> str:
    """The OIP datatype of a numpy array."""
    dtype = array.dtype
    if dtype == BF16:
        return "BF16"
    if dtype.kind in "OSU":
        return "BYTES"
    for name, candidate in DTYPES.items():
        if candidate == dtype:
            return name
    raise errors.ServerError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def check_shape(name: str, shape: Sequence[int], max_elements: int = 1 << 31) -> tuple[int, ...]:
    """Reject negative dims and shapes whose element count could exhaust memory."""
    dims = tuple(int(d) for d in shape)
    for dim in dims:
        if dim < 0:
            raise errors.InvalidArgument(
                f"input '{name}': shape {list(dims)} has a negative dimension; "
                "requests must give concrete sizes (-1 is only for model metadata)"
            )
    if element_count(dims) > max_elements:
        raise errors.InvalidArgument(
            f"input '{name}': shape {list(dims)} holds more than {max_elements} elements"
        )
    return dims


def from_raw(name: str, buffer: bytes | memoryview, datatype: str, shape: Sequence[int]) -> Array:
    """Decode a little-endian, row-major byte buffer into an array (no copy when possible)."""
    dims = check_shape(name, shape)
    count = element_count(dims)
    if datatype == "BYTES":
        return _deserialize_bytes(name, buffer, dims, count)
    dtype = _dtype(name, datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise errors.InvalidArgument(
            f"input '{name}': {datatype} shape {list(dims)} needs {expected} bytes "
            f"of data, got {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(dims)


def to_raw(array: Array) -> bytes:
    """Encode an array as the binary extension and gRPC raw contents expect."""
    if array.dtype.kind in "OSU":
        return _serialize_bytes(array)
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    return contiguous.tobytes()


def raw_size(array: Array) -> int:
    if array.dtype.kind in "OSU":
        return len(_serialize_bytes(array))
    return int(array.nbytes)


def from_json(name: str, data: Any, datatype: str, shape: Sequence[int]) -> Array:
    """Decode JSON ``data`` (nested or flat, row-major) into an array of ``shape``."""
    dims = check_shape(name, shape)
    count = element_count(dims)
    dtype = _dtype(name, datatype)
    flat = _flatten(data)
    if len(flat) != count:
        raise errors.InvalidArgument(
            f"input '{name}': shape {list(dims)} needs {count} elements, got {len(flat)} in 'data'"
        )
    try:
        if datatype == "BYTES":
            values = np.empty(count, dtype=object)
            for i, item in enumerate(flat):
                values[i] = item.encode() if isinstance(item, str) else bytes(item)
            return values.reshape(dims)
        if datatype == "BOOL" and not all(isinstance(v, bool) or v in (0, 1) for v in flat):
            raise ValueError("BOOL data must be true/false")
        return np.asarray(flat, dtype=dtype).reshape(dims)
    except (TypeError, ValueError, OverflowError) as exc:
        raise errors.InvalidArgument(
            f"input '{name}': 'data' does not hold {datatype} values: {exc}"
        ) from exc


def to_json(array: Array) -> list[Any]:
    """Flatten an array to JSON values; BYTES become UTF-8 strings where they decode."""
    if array.dtype.kind in "OSU":
        out: list[Any] = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            try:
                out.append(raw.decode())
            except UnicodeDecodeError:
                out.append(raw.decode("latin-1"))
        return out
    if array.dtype in (BF16, np.dtype(np.float16)):
        return [float(v) for v in array.astype(np.float32).reshape(-1)]
    result: list[Any] = array.reshape(-1).tolist()
    return result


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise errors.InvalidArgument(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {', '.join(DTYPES)}"
        ) from None


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _serialize_bytes(array: Array) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _deserialize_bytes(
    name: str, buffer: bytes | memoryview, dims: tuple[int, ...], count: int
) -> Array:
    view = memoryview(buffer)
    values = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise errors.InvalidArgument(
                f"input '{name}': BYTES data ends after {i} of {count} elements"
            )
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise errors.InvalidArgument(
                f"input '{name}': BYTES element {i} claims {length} bytes but only "
                f"{len(view) - offset} remain"
            )
        values[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise errors.InvalidArgument(
            f"input '{name}': {len(view) - offset} bytes left over after {count} BYTES elements"
        )
    return values.reshape(dims)

"""Tensor datatypes and their wire forms, shared by every transport and backend.

One table maps the Open Inference Protocol datatype names (``FP32``), Triton's config names
(``TYPE_FP32``) and numpy dtypes. BYTES tensors are numpy object arrays of ``bytes``; on the
wire (binary extension, gRPC raw contents) each element is a 4-byte little-endian length
followed by its bytes. BF16 uses ``ml_dtypes.bfloat16``.

Decoding is where a small request could make the worker allocate a lot, so every tensor
decoded from a request body is first admitted by the request's ``Budget``: its shape must be
concrete, within the per-request caps and (through a check the dataplane supplies) what the
model declares, and the payload must be able to hold it, all before any buffer is allocated.
JSON is read strictly: numbers for numeric types, strings for BYTES, nesting that matches
the shape exactly.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


#: numpy dtype -> OIP datatype, for the common case: one lookup instead of a comparison
#: with each dtype in turn (a dtype missing here takes the long way, with the same answer).
_DATATYPES: dict[np.dtype[Any], str] = {dtype: name for name, dtype in DTYPES.items()}


def datatype_of(array: Array) -> str:
    """The OIP datatype of a numpy array."""
    dtype = array.dtype
    known = _DATATYPES.get(dtype)
    if known is not None:
        return known
    if dtype == BF16:
        return "BF16"
    if dtype.kind in "OSU":
        return "BYTES"
    for name, candidate in DTYPES.items():
        if candidate == dtype:
            return name
    raise errors.ServerError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def check_shape(name: str, shape: Sequence[int], max_elements: int = 1 << 31) -> tuple[int, ...]:
    """Reject negative dims and shapes whose element count or any dim exceeds ``max_elements``."""
    dims = tuple(map(int, shape))
    if min(dims, default=0) < 0:
        raise errors.InvalidArgument(
            f"input '{name}': shape {list(dims)} has a negative dimension; "
            "requests must give concrete sizes (-1 is only for model metadata)"
        )
    if max(dims, default=0) > max_elements or element_count(dims) > max_elements:
        raise errors.InvalidArgument(
            f"input '{name}': shape {list(dims)} holds more than {max_elements} elements"
        )
    return dims


#: Checks one input's datatype and concrete shape against the model; raises InvalidArgument.
InputCheck = Callable[[str, str, tuple[int, ...]], None]


@dataclass(frozen=True)
class Limits:
    """Per-request caps on decoding (``--max-request-elements``, ``--max-request-bytes``)."""

    max_elements: int = 1 << 26
    max_bytes: int = 1 << 28


class Budget:
    """What one request may still decode; each tensor is admitted before it is allocated."""

    def __init__(self, limits: Limits | None = None, check: InputCheck | None = None) -> None:
        self.limits = limits or Limits()
        self._check = check
        self.elements = 0
        self.bytes = 0

    def admit(
        self, name: str, datatype: str, shape: Sequence[int], *, in_place: bool = False
    ) -> tuple[int, ...]:
        """The concrete dims of an input, checked against the caps and the model.

        Elements always count; ``in_place`` inputs (read where they lie, in shared memory)
        allocate nothing, so their bytes are not charged: their region bounds them."""
        dims = check_shape(name, shape, self.limits.max_elements)
        dtype = _dtype(name, datatype)
        if self._check is not None:
            self._check(name, datatype, dims)
        count = element_count(dims)
        self.elements += count
        if self.elements > self.limits.max_elements:
            raise errors.InvalidArgument(
                f"input '{name}': the request holds more than {self.limits.max_elements} "
                "tensor elements in all (--max-request-elements)"
            )
        if datatype != "BYTES" and not in_place:
            self.charge(name, count * dtype.itemsize)
        return dims

    def charge(self, name: str, nbytes: int) -> None:
        """Count ``nbytes`` of decoded data against the request's byte cap."""
        self.bytes += nbytes
        if self.bytes > self.limits.max_bytes:
            raise errors.InvalidArgument(
                f"input '{name}': the request decodes to more than {self.limits.max_bytes} "
                "bytes of tensors in all (--max-request-bytes)"
            )


def from_raw(
    name: str,
    buffer: bytes | memoryview,
    datatype: str,
    shape: Sequence[int],
    budget: Budget | None = None,
    *,
    in_place: bool = False,
) -> Array:
    """Decode a little-endian, row-major byte buffer into an array (no copy when possible).

    ``in_place``: the buffer is shared memory, read where it lies (see ``Budget.admit``)."""
    dims = (budget or Budget()).admit(name, datatype, shape, in_place=in_place)
    count = element_count(dims)
    if datatype == "BYTES":
        if budget is not None:
            budget.charge(name, len(buffer))
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


#: Python types JSON may use for each datatype (orjson yields exactly these types).
_FLOAT_KINDS = frozenset({int, float})
_JSON_KINDS: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool, int}),  # true/false, or 0/1 (checked below)
    "BYTES": frozenset({str}),
    **{t: frozenset({int}) for t in DTYPES if t.startswith(("INT", "UINT"))},
    **{t: _FLOAT_KINDS for t in ("FP16", "BF16", "FP32", "FP64")},
}


def from_json(
    name: str, data: Any, datatype: str, shape: Sequence[int], budget: Budget | None = None
) -> Array:
    """Decode JSON ``data`` (nested as the shape, or flat, row-major) into an array of ``shape``.

    Strict, as Triton is: numbers for numeric types (no null, no true for FP32, integers for
    integer types), strings for BYTES, true/false (or 0/1) for BOOL, and nesting that
    follows the shape exactly."""
    dims = (budget or Budget()).admit(name, datatype, shape)
    count = element_count(dims)
    dtype = _dtype(name, datatype)
    flat = _flatten(name, data, dims)
    if len(flat) != count:
        raise errors.InvalidArgument(
            f"input '{name}': shape {list(dims)} needs {count} elements, got {len(flat)} in 'data'"
        )
    _check_json_kinds(name, flat, datatype)
    try:
        if datatype == "BYTES":
            values = np.empty(count, dtype=object)
            for i, item in enumerate(flat):
                encoded = item.encode()
                if budget is not None:
                    budget.charge(name, len(encoded))
                values[i] = encoded
            return values.reshape(dims)
        return _to_array(flat, dtype).reshape(dims)
    except (TypeError, ValueError, OverflowError) as exc:
        raise errors.InvalidArgument(
            f"input '{name}': 'data' does not hold {datatype} values: {exc}"
        ) from exc


#: Large JSON tensors are checked and converted this many elements at a time: each step is
#: one C call holding the GIL, so a decode on a worker thread lets the event loop run between.
_CHUNK = 1 << 16


def _to_array(flat: list[Any], dtype: np.dtype[Any]) -> Array:
    if len(flat) <= _CHUNK:
        return np.asarray(flat, dtype=dtype)
    out = np.empty(len(flat), dtype=dtype)
    for start in range(0, len(flat), _CHUNK):
        out[start : start + _CHUNK] = flat[start : start + _CHUNK]
    return out


def _check_json_kinds(name: str, flat: list[Any], datatype: str) -> None:
    allowed = _JSON_KINDS[datatype]
    kinds: set[type] = set()
    for start in range(0, len(flat), _CHUNK):
        kinds.update(map(type, flat[start : start + _CHUNK]))
    if kinds <= allowed and (datatype != "BOOL" or int not in kinds):
        return
    if datatype == "BOOL" and kinds <= allowed and all(v in (0, 1) for v in flat):
        return
    bad = next(
        (v for v in flat if type(v) not in allowed or (datatype == "BOOL" and v not in (0, 1))),
        None,
    )
    wanted = {
        "BOOL": "true/false",
        "BYTES": "strings",
    }.get(datatype, "integers" if allowed == frozenset({int}) else "numbers")
    raise errors.InvalidArgument(
        f"input '{name}': {datatype} data must be {wanted}, got {_json_repr(bad)}"
    )


def _json_repr(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


def _flatten(name: str, data: Any, dims: tuple[int, ...]) -> list[Any]:
    """The elements of ``data``, flat; nested data must follow ``dims`` exactly."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data  # flat; a list hidden among the elements fails the type check
    level: list[Any] = [data]
    for depth, size in enumerate(dims):
        below: list[Any] = []
        for item in level:
            if not isinstance(item, list) or len(item) != size:
                raise errors.InvalidArgument(
                    f"input '{name}': nested 'data' does not follow shape {list(dims)} at "
                    f"depth {depth} (expected lists of {size}); send it flat or nested as "
                    "the shape"
                )
            below.extend(item)
        level = below
    return level


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
    # Every element takes at least its 4-byte length: refuse a count the payload cannot
    # hold before allocating a slot per element.
    if count * 4 > len(view):
        raise errors.InvalidArgument(
            f"input '{name}': BYTES data ends after {len(view) // 4} of {count} elements "
            f"(each needs a 4-byte length prefix; {len(view)} bytes hold at most "
            f"{len(view) // 4})"
        )
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

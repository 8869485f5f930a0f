"""Thin adapters from the wire (REST, gRPC) to the transport-neutral ``dataplane``."""

from __future__ import annotations

from typing import Any

#: ModelConfig's data_type of BYTES tensors (``TYPE_STRING``).
_TYPE_STRING = 13


def decode_cost(config: Any, parsed_bytes: int, raw_bytes: int) -> int:
    """How many bytes of a request its decoder really walks, which decides whether it
    decodes on a thread (``dataplane.decode``): JSON or typed contents byte by byte, raw
    tensor data only for BYTES elements. Other raw data becomes an array over the request's
    own buffer in constant time, and handing that to a thread would cost more than it saves."""
    takes_bytes = any(tensor.data_type == _TYPE_STRING for tensor in config.input)
    return parsed_bytes + (raw_bytes if takes_bytes else 0)

"""How a pod reaches the rest of the cluster: ConfigMaps, Secrets and claims.

The runtime never sees the API server: a ``Resolver`` answers for the objects a pod names
(the node glue reads them from the store). This module also reads an object's data the way
the kubelet does: a ConfigMap's ``data`` (text) and ``binaryData`` (base64), a Secret's
``data`` (base64) and ``stringData`` (text, in case the store has not folded it into data),
and parses resource quantities (``500m``, ``2Gi``).
"""

from __future__ import annotations

import base64
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

Obj = dict[str, Any]


class Resolver(Protocol):
    def config_map(self, namespace: str, name: str) -> Obj | None:
        """The ConfigMap object as the API returns it, or None when there is none."""
        ...

    def secret(self, namespace: str, name: str) -> Obj | None:
        """The Secret object as the API returns it, or None when there is none."""
        ...

    def claim(self, namespace: str, claim: str) -> Path | None:
        """The local folder that plays a PersistentVolumeClaim, or None when unbound."""
        ...


def config_map_data(obj: Obj) -> dict[str, bytes]:
    data = {key: str(value).encode() for key, value in (obj.get("data") or {}).items()}
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


def secret_data(obj: Obj) -> dict[str, bytes]:
    data = {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
    for key, value in (obj.get("stringData") or {}).items():
        data[key] = str(value).encode()
    return data


def text(value: bytes) -> str:
    """An environment value from object data (bytes that need not be UTF-8)."""
    return value.decode("utf-8", "surrogateescape")


_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity(value: object) -> Decimal:
    """A Kubernetes resource quantity as a number (``"500m"`` -> 0.5, ``"1Gi"`` -> 2**30)."""
    match = _QUANTITY.match(str(value).strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"quantities must match the regular expression of Kubernetes: {value!r}")
    number, suffix = match.groups()
    return Decimal(number) * _SUFFIXES[suffix]


def ceil(value: Decimal) -> int:
    return math.ceil(value)

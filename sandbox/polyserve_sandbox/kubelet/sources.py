"""How a pod reaches the rest of the cluster: ConfigMaps, Secrets, claims and Services.

The runtime never sees the API server: a ``Resolver`` answers for the objects a pod names
(the node glue reads them from the store). This module also reads an object's data the way
the kubelet does: a ConfigMap's ``data`` (text) and ``binaryData`` (base64), a Secret's
``data`` (base64) and ``stringData`` (text, in case the store has not folded it into data).
"""

from __future__ import annotations

import base64
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

    def services(self, namespace: str) -> list[Obj]:
        """The namespace's Services, for the variables a container gets about each one."""
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

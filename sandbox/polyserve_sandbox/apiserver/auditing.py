"""An audit log: every request, who made it and what it asked for, as kube-apiserver's
``--audit-log-path`` writes one (``audit.k8s.io/v1`` Events at level ``Metadata``, one JSON
object a line). Off by default; ``sandbox.yaml``'s ``audit: true`` writes
``DIR/logs/audit.log``.

What a line holds is what RBAC decides on: the user (the sandbox authenticates nobody, so
the bearer token is taken as the user name: a kubeconfig whose token is
``system:serviceaccount:NS:NAME`` makes its requests that account's), the verb in RBAC's words
(the real server's ``RequestInfo``: ``get``, ``list``, ``watch``, ``create``, ``update``,
``patch``, ``delete``, ``deletecollection``), the object (``apiGroup``, ``resource``,
``subresource``, ``namespace``, ``name``) and the answer's code. A ``patch`` answered 201 created
its object (server-side apply), which the real server also authorizes as ``create``.
Requests outside resources (discovery, OpenAPI, ``/version``) carry no ``objectRef``. A watch
is written when it starts.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import IO, Any

Obj = dict[str, Any]

ANONYMOUS = "system:anonymous"
#: The metric verbs of ``metrics.verb`` in RBAC's words.
RBAC_VERBS = {
    "GET": "get",
    "LIST": "list",
    "WATCH": "watch",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "APPLY": "patch",
    "DELETE": "delete",
    "DELETECOLLECTION": "deletecollection",
}


def user(authorization: str | None) -> str:
    """The user a request's ``Authorization`` header names (its bearer token, here)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ANONYMOUS


def event(
    *,
    username: str,
    method: str,
    uri: str,
    code: int,
    verb: str | None = None,
    group: str = "",
    version: str = "",
    resource: str = "",
    subresource: str = "",
    namespace: str | None = None,
    name: str | None = None,
) -> Obj:
    """One audit Event; ``verb`` is the metric verb of a resource request (None: outside
    resources, written with the HTTP method in lower case, as the real server does)."""
    found: Obj = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "stage": "ResponseComplete",
        "requestURI": uri,
        "verb": RBAC_VERBS.get(verb, verb.lower()) if verb else method.lower(),
        "user": {"username": username},
        "responseStatus": {"code": code},
        "requestReceivedTimestamp": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    if verb:
        ref: Obj = {"apiGroup": group, "apiVersion": version, "resource": resource}
        if subresource:
            ref["subresource"] = subresource
        if namespace:
            ref["namespace"] = namespace
        if name:
            ref["name"] = name
        found["objectRef"] = ref
    return found


class AuditLog:
    """Audit Events appended to a file, one line each, flushed per line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] | None = open(path, "a", buffering=1)  # noqa: SIM115 - kept open

    def write(self, found: Obj) -> None:
        if self._file is not None:
            self._file.write(json.dumps(found, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read(path: Path) -> list[Obj]:
    """The Events of an audit log file (the sandbox's, or a real cluster's at this level)."""
    events: list[Obj] = []
    with open(path) as file:
        for line in file:
            if line.strip():
                events.append(json.loads(line))
    return events

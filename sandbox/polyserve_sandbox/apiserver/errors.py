"""Errors of the emulated API server, shaped as the real server's ``Status`` objects.

One class, ``ApiError``, carries what a client sees: the HTTP status, the ``reason``
(Kubernetes' ``StatusReason``) and the message, worded as the real server words it (clients
and people match on these). The constructors below build the common ones so the wording
lives in one place::

    ApiError
      reason NotFound        404  not_found(), unknown_resource(), namespace_not_found()
      reason AlreadyExists   409  already_exists()
      reason Conflict        409  conflict(), precondition_failed(), apply_conflicts()
      reason Invalid         422  invalid(), test_failed()
      reason BadRequest      400  bad_request(), strict_decoding()
      reason Forbidden       403  forbidden()
      reason MethodNotAllowed 405 method_not_allowed()
      reason Expired         410  expired() (a watch resumed from a version no longer held)

The store raises them; the HTTP layer serialises ``status_object()`` as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


class ApiError(Exception):
    """A refused request: ``status`` (HTTP), ``reason`` (a StatusReason) and ``message``."""

    def __init__(self, status: int, reason: str, message: str, details: Obj | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status_object(self) -> Obj:
        """The ``Status`` object the real server sends for this error."""
        status: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.status,
        }
        return status

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.reason!r}, {self.message!r})"


@dataclass(frozen=True)
class Cause:
    """One field error of an Invalid answer (``details.causes[]``)."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


def qualified(plural: str, group: str) -> str:
    """``deployments.apps`` or ``pods``: how messages name a resource."""
    return f"{plural}.{group}" if group else plural


def _details(plural: str, group: str, name: str | None) -> Obj:
    details: Obj = {"kind": plural}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(plural, group)} "{name}" not found',
        _details(plural, group, name),
    )


def namespace_not_found(namespace: str) -> ApiError:
    return not_found("namespaces", "", namespace)


def unknown_resource() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def no_kind(api_version: str, kind: str) -> ApiError:
    return ApiError(404, "NotFound", f'no matches for kind "{kind}" in version "{api_version}"')


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(plural, group)} "{name}" already exists',
        _details(plural, group, name),
    )


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version and "
        "try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
        _details(plural, group, name),
    )


def precondition_failed(
    plural: str, group: str, name: str, what: str, want: str, have: str
) -> ApiError:
    return conflict(
        plural,
        group,
        name,
        f"Precondition failed: {what} in precondition: {want}, {what} in object meta: {have}",
    )


def apply_conflicts(
    plural: str, group: str, name: str, conflicts: Sequence[tuple[str, str, str]]
) -> ApiError:
    """Server-side apply met fields owned by others: (manager, apiVersion, field) each."""
    count = len(conflicts)
    if count == 1:
        manager, api_version, field = conflicts[0]
        text = (
            f'Apply failed with 1 conflict: conflict with "{manager}" using {api_version}: {field}'
        )
    else:
        by_manager: dict[tuple[str, str], list[str]] = {}
        for manager, api_version, field in conflicts:
            by_manager.setdefault((manager, api_version), []).append(field)
        blocks = [
            f'conflicts with "{m}" using {v}:\n' + "\n".join(f"- {f}" for f in fields)
            for (m, v), fields in by_manager.items()
        ]
        text = f"Apply failed with {count} conflicts: " + "\n".join(blocks)
    details = _details(plural, group, name)
    details["causes"] = [
        {"reason": "FieldManagerConflict", "message": f'conflict with "{m}" using {v}', "field": f}
        for m, v, f in conflicts
    ]
    return ApiError(409, "Conflict", text, details)


def invalid(kind: str, group: str, name: str, causes: Sequence[Cause]) -> ApiError:
    """``Deployment.apps "web" is invalid: spec.replicas: Invalid value: ...``."""
    texts = [f"{c.field}: {c.message}" if c.field else c.message for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    subject = f"{kind}.{group}" if group else kind
    details: Obj = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    details["causes"] = [
        {"reason": c.reason, "message": c.message, "field": c.field} for c in causes
    ]
    return ApiError(422, "Invalid", f'{subject} "{name}" is invalid: {joined}', details)


def test_failed(index: int, path: str) -> ApiError:
    """A JSON patch ``test`` op that does not hold (kopf re-reads the object on it)."""
    return ApiError(
        422,
        "Invalid",
        f"the server rejected our request due to an error in our request: testing value "
        f"{path} failed (operation {index})",
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def strict_decoding(kind: str, version: str, unknown: Sequence[str]) -> ApiError:
    """``fieldValidation=Strict`` met fields the schema does not declare (kubectl's default)."""
    fields = ", ".join(f'unknown field "{f}"' for f in unknown)
    return bad_request(
        f'{kind} in version "{version}" cannot be handled as a {kind}: '
        f"strict decoding error: {fields}"
    )


def forbidden(plural: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        403,
        "Forbidden",
        f'{qualified(plural, group)} "{name}" is forbidden: {why}',
        _details(plural, group, name),
    )


def method_not_allowed() -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def expired(requested: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")

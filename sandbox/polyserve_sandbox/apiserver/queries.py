"""What an HTTP request asks for, read the way the real server reads it: the target its path
names (resource, namespace, name, subresource), its write options (``dryRun``,
``fieldManager``, ``fieldValidation``), its ``DeleteOptions``, and its body (JSON, or YAML
where allowed). Parsing only: nothing here touches the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from polyserve_sandbox.apiserver import errors, protobuf
from polyserve_sandbox.apiserver.errors import ApiError
from polyserve_sandbox.apiserver.resources import Registry, Resource

Obj = dict[str, Any]

PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}


def flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


@dataclass
class Target:
    """What a resource path names."""

    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None
    watch: bool


def target(registry: Registry, group: str, version: str, rest: list[str]) -> Target:
    """``[watch/][namespaces/NS/]PLURAL[/NAME[/SUB]]`` after ``/api/v1`` or ``/apis/G/V``;
    404 as the real server answers for anything else."""
    watch = rest[0] == "watch"
    if watch:
        rest = rest[1:]
    namespace = None
    # /api/v1/namespaces/NAME/status is the Namespace's own subresource.
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and (group or rest[2] not in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise errors.unknown_resource()
    resource = registry.by_path(group, version, rest[0])
    if resource is None or (namespace is not None and not resource.namespaced):
        raise errors.unknown_resource()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in resource.subresources:
        raise errors.unknown_resource()
    if name is not None and resource.namespaced and namespace is None:
        raise errors.unknown_resource()
    return Target(resource, namespace, name, sub, watch)


@dataclass
class WriteOptions:
    dry_run: bool
    manager: str
    validation: str  # Strict | Warn | Ignore


def write_options(request: web.Request) -> WriteOptions:
    query = request.query
    dry_run = query.getall("dryRun", [])
    if any(value != "All" for value in dry_run):
        raise errors.bad_request(
            f'dryRun: Unsupported value: "{dry_run[0]}": supported values: "All"'
        )
    # The default field manager: the User-Agent up to its first "/", as the real server does.
    manager = query.get("fieldManager") or request.headers.get("User-Agent", "").split("/", 1)[0]
    validation = query.get("fieldValidation") or "Warn"
    if validation not in ("Strict", "Warn", "Ignore"):
        raise errors.bad_request(
            f'fieldValidation: Unsupported value: "{validation}": supported values: '
            '"Ignore", "Strict", "Warn"'
        )
    return WriteOptions(bool(dry_run), (manager or "unknown")[:128], validation)


@dataclass
class DeleteOptions:
    propagation: str
    grace: int | None
    preconditions: Obj
    dry_run: bool


async def delete_options(request: web.Request) -> DeleteOptions:
    """A ``DeleteOptions`` body, or the same as query parameters."""
    raw = await request.read()
    content_type = request.headers.get("Content-Type", "application/json").split(";")[0]
    try:
        if "protobuf" in content_type and raw.strip():
            body = protobuf.decode(raw, protobuf.OPTIONS)
        else:
            body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise errors.bad_request("the DeleteOptions body is not JSON") from None
    options = body if isinstance(body, dict) else {}
    query = request.query
    propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
    if propagation is None and (
        options.get("orphanDependents") or flag(query.get("orphanDependents"))
    ):
        propagation = "Orphan"
    grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
    try:
        grace = int(grace) if grace is not None else None
    except (TypeError, ValueError):
        raise errors.bad_request(f"invalid gracePeriodSeconds: {grace}") from None
    dry_run = "All" in (options.get("dryRun") or []) or "All" in query.getall("dryRun", [])
    preconditions = options.get("preconditions") or {}
    return DeleteOptions(propagation or "Background", grace, preconditions, dry_run)


async def body(request: web.Request, *, yaml_ok: bool = False) -> Any:
    """The request's object: JSON, YAML for apply patches and YAML content types, or
    protobuf as ``kubectl create`` sends it."""
    content_type = request.headers.get("Content-Type", "application/json").split(";")[0]
    raw = await request.read()
    if "protobuf" in content_type:
        return protobuf.decode(raw)
    try:
        return json.loads(raw)
    except ValueError as exc:
        if yaml_ok or "yaml" in content_type:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as yaml_exc:
                raise errors.bad_request(f"error decoding YAML: {yaml_exc}") from None
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None


def patch_type(request: web.Request) -> str:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    found = PATCH_TYPES.get(content_type)
    if found is None:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            + ", ".join(PATCH_TYPES),
        )
    return found


def typed(obj: Any, resource: Resource) -> None:
    """A body's apiVersion and kind: taken from the URL when missing (kopf's Events have
    none), a 400 when they name something else."""
    if not isinstance(obj, dict):
        return
    api_version = obj.setdefault("apiVersion", resource.api_version)
    kind = obj.setdefault("kind", resource.kind)
    if api_version != resource.api_version:
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({resource.api_version})"
        )
    if kind != resource.kind:
        raise errors.bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
        )


def wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def integer(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f"invalid {name}: {value}") from None

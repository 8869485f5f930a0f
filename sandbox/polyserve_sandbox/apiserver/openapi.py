"""OpenAPI documents: what ``kubectl apply`` needs to validate on the server, and what
``kubectl explain`` reads.

kubectl (1.27+) validates with ``fieldValidation=Strict`` on the server when the server's
OpenAPI v3 document of the object's group/version lists a PATCH operation for that kind
(``x-kubernetes-group-version-kind``) with a ``fieldValidation`` parameter
(``cli-runtime``'s ``queryParamVerifierV3``); before that check it loads ``/openapi/v2`` as
protobuf and fails when it cannot. So:

- ``/openapi/v2`` is served: an (almost) empty Swagger 2.0 document, as protobuf (gnostic's
  ``openapi_v2.Document``: swagger + info) or JSON. kubectl then finds no client-side schema
  and relies on the server, which is the modern path;
- ``/openapi/v3`` lists every group/version; ``/openapi/v3/apis/G/V`` has the operations of
  each resource with their parameters, and each kind's schema: the CRD's
  ``openAPIV3Schema`` for custom resources (so ``kubectl explain`` works on them), a stub
  for built-in kinds (explain shows no fields for those).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from polyserve_sandbox.apiserver.discovery import SERVER_VERSION
from polyserve_sandbox.apiserver.resources import Registry, Resource

Obj = dict[str, Any]

# What the real server answers with: the "@" of the type clients ask for is not a valid
# media type character, and client-go refuses a response that carries it.
PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
_INFO = {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def v2_protobuf() -> bytes:
    """gnostic ``openapi_v2.Document{swagger: "2.0", info: {title, version}}``."""
    info = _field(1, _INFO["title"].encode()) + _field(2, _INFO["version"].encode())
    return _field(1, b"2.0") + _field(2, info)


def v2_json() -> Obj:
    return {"swagger": "2.0", "info": dict(_INFO), "paths": {}, "definitions": {}}


def _schema_name(resource: Resource) -> str:
    group = ".".join(reversed(resource.group.split("."))) if resource.group else "io.k8s.api.core"
    return f"{group}.{resource.version}.{resource.kind}"


def _gvk(resource: Resource) -> Obj:
    return {"group": resource.group, "version": resource.version, "kind": resource.kind}


def _param(name: str, description: str, kind: str = "string") -> Obj:
    return {"name": name, "in": "query", "description": description, "schema": {"type": kind}}


_DRY_RUN = _param("dryRun", "When present, indicates that modifications should not be persisted.")
_MANAGER = _param("fieldManager", "a name associated with the actor or entity making these changes")
_VALIDATION = _param(
    "fieldValidation",
    "instructs the server on how to handle objects in the request containing unknown or "
    "duplicate fields: Ignore, Warn or Strict",
)
_FORCE = _param("force", 'Force is going to "force" Apply requests.', "boolean")
_WRITE_PARAMS = {
    "post": [_DRY_RUN, _MANAGER, _VALIDATION],
    "put": [_DRY_RUN, _MANAGER, _VALIDATION],
    "patch": [_DRY_RUN, _MANAGER, _VALIDATION, _FORCE],
    "delete": [_DRY_RUN],
    "get": [],
}
_ACTIONS = {"get": "get", "post": "post", "put": "put", "patch": "patch", "delete": "delete"}


def _operation(resource: Resource, method: str, ref: str, suffix: str) -> Obj:
    content = {"application/json": {"schema": {"$ref": ref}}}
    operation: Obj = {
        "operationId": f"{method}{resource.kind}{suffix}",
        "parameters": list(_WRITE_PARAMS[method]),
        "responses": {"200": {"description": "OK", "content": content}},
        "x-kubernetes-action": _ACTIONS[method],
        "x-kubernetes-group-version-kind": _gvk(resource),
    }
    if method in ("post", "put", "patch"):
        operation["requestBody"] = {"content": content}
    return operation


def _paths(resource: Resource, ref: str) -> Obj:
    base = f"/apis/{resource.group}/{resource.version}" if resource.group else "/api/v1"
    scope = f"{base}/namespaces/{{namespace}}" if resource.namespaced else base
    collection = f"{scope}/{resource.plural}"
    item = f"{collection}/{{name}}"
    paths: Obj = {
        collection: {m: _operation(resource, m, ref, "Collection") for m in ("get", "post")},
        item: {m: _operation(resource, m, ref, "") for m in ("get", "put", "patch", "delete")},
    }
    if resource.namespaced:
        paths[f"{base}/{resource.plural}"] = {
            "get": _operation(resource, "get", ref, "ForAllNamespaces")
        }
    if resource.has_status:
        paths[f"{item}/status"] = {
            m: _operation(resource, m, ref, "Status") for m in ("get", "put", "patch")
        }
    return paths


def _kind_schema(resource: Resource) -> Obj:
    if resource.schema is not None:
        schema: Obj = json.loads(json.dumps(resource.schema))
    else:
        schema = {
            "type": "object",
            "description": f"{resource.kind} ({resource.api_version}), served by the sandbox "
            "without its schema: see the Kubernetes API reference.",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
            },
        }
    schema["x-kubernetes-group-version-kind"] = [_gvk(resource)]
    return schema


def group_version(registry: Registry, group: str, version: str) -> Obj | None:
    """The OpenAPI v3 document of one group/version, or None when it is not served."""
    served = registry.in_group_version(group, version)
    if not served:
        return None
    paths: Obj = {}
    schemas: Obj = {}
    for resource in served:
        name = _schema_name(resource)
        schemas[name] = _kind_schema(resource)
        paths.update(_paths(resource, f"#/components/schemas/{name}"))
    return {
        "openapi": "3.0.0",
        "info": dict(_INFO),
        "paths": paths,
        "components": {"schemas": schemas},
    }


def index(registry: Registry, documents: dict[str, bytes]) -> Obj:
    """``/openapi/v3``: each group/version's URL, with a hash of its document (for caches)."""
    paths = {}
    for key, body in sorted(documents.items()):
        digest = hashlib.sha512(body).hexdigest()[:32].upper()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


def documents(registry: Registry) -> dict[str, bytes]:
    """Every group/version's document, serialised, keyed as ``/openapi/v3`` lists them."""
    found: dict[str, bytes] = {}
    for group, versions in registry.groups():
        for version in versions:
            document = group_version(registry, group, version)
            if document is not None:
                key = f"apis/{group}/{version}" if group else f"api/{version}"
                found[key] = json.dumps(document, separators=(",", ":")).encode()
    return found

"""The three classic patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and
Kubernetes' strategic merge patch for built-in kinds.

Each function takes the working copy of an object (the store's own copy, free to change)
and returns the patched document; patches themselves are never changed. Server-side apply
lives in ``applying``.

Strategic merge patch: maps merge; lists merge by the Kubernetes merge key of their field
where the real API declares one (``containers``/``volumes``/``env``... by ``name``,
container ``ports`` by ``containerPort``, Service ``ports`` by ``port``, ``volumeMounts`` by
``mountPath``, ``ownerReferences`` by ``uid``, ``conditions`` and node ``addresses`` by
``type``; ``metadata.finalizers`` as a set); other lists are replaced. The directives
kubectl sends are honoured: ``$patch: replace|delete|merge``, ``$retainKeys``,
``$setElementOrder/<field>``, ``$deleteFromPrimitiveList/<field>``. Custom resources refuse
it (415), as the real server does.
"""

from __future__ import annotations

import copy
from typing import Any

from polyserve_sandbox.apiserver import errors

Obj = dict[str, Any]
Path = tuple[str, ...]


# -- JSON merge patch ------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- JSON patch ------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise errors.ApiError(
            422, "Invalid", f'JSON pointer must start with "/" or be empty: {path!r}'
        )
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _invalid(message: str) -> errors.ApiError:
    return errors.ApiError(
        422, "Invalid", f"the server rejected our request due to an error in our request: {message}"
    )


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise _invalid(f"doc is missing path: {path}")
    return node, parts[-1]


def _index(node: list[Any], key: str, path: str, *, inserting: bool) -> int:
    if inserting and key == "-":
        return len(node)
    if not key.isdigit():
        raise _invalid(f"invalid array index {key!r} in {path}")
    index = int(key)
    if index > len(node) or (not inserting and index == len(node)):
        raise _invalid(f"array index out of bounds in {path}")
    return index


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    node, key = _parent(doc, parts, path)
    if isinstance(node, dict) and key in node:
        return node[key]
    if isinstance(node, list):
        return node[_index(node, key, path, inserting=False)]
    raise _invalid(f"doc is missing path: {path}")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    node, key = _parent(doc, parts, path)
    if isinstance(node, dict):
        node[key] = value
    elif isinstance(node, list):
        node.insert(_index(node, key, path, inserting=True), value)
    else:
        raise _invalid(f"doc is missing path: {path}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise _invalid("cannot remove the whole document")
    node, key = _parent(doc, parts, path)
    if isinstance(node, dict) and key in node:
        return node.pop(key)
    if isinstance(node, list):
        return node.pop(_index(node, key, path, inserting=False))
    raise _invalid(f"unable to remove nonexistent key: {key}: missing value")


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test); a failed ``test`` answers 422."""
    if not isinstance(operations, list):
        raise errors.bad_request(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        )
    for number, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise errors.bad_request(f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise errors.bad_request(f"missing value in the {kind} operation at {path}")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            if _pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = op.get("from")
            if source is None:
                raise errors.bad_request(f"missing from in the {kind} operation at {path}")
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            try:
                actual = _get(doc, path)
            except errors.ApiError:
                actual = None
            if actual != op["value"]:
                raise errors.test_failed(number, path)
        else:
            raise errors.bad_request(f"Unexpected kind: {kind}")
    return doc


# -- strategic merge patch -------------------------------------------------------------------

# Merge keys of built-in list fields, by field name (and path where the name is ambiguous).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "secrets": "name",
    "resourceClaims": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ownerReferences": "uid",
    "conditions": "type",
    "addresses": "type",
    "hostAliases": "ip",
    "podIPs": "ip",
    "topologySpreadConstraints": "topologyKey",
}
# Lists of strings merged as sets.
_SET_LISTS = {("metadata", "finalizers")}


def _merge_key(path: Path) -> str | None:
    name = path[-1]
    if name == "ports":
        # A Service's ports (spec.ports) merge by port; a container's by containerPort.
        return "port" if path == ("spec", "ports") else "containerPort"
    return _MERGE_KEYS.get(name)


def strategic_merge_patch(target: Any, patch: Any, path: Path = ()) -> Any:
    """Apply a strategic merge patch to ``target`` (a working copy, changed in place)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    plain = {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive == "replace":
        return _strip(plain)
    if directive not in (None, "merge"):
        raise errors.bad_request(f"Unrecognized $patch value: {directive}")
    result = target if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
        elif key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
    for key, value in plain.items():
        if value is None:
            result.pop(key, None)
            continue
        sub = (*path, key)
        current = result.get(key)
        if isinstance(value, list):
            merged = _merge_list(current, value, sub)
            result[key] = merged
        elif isinstance(value, dict) and value.get("$patch") == "delete":
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(current, value, sub)
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _ordered(result[field], order, _merge_key((*path, field)))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        for key in [k for k in result if k not in retain]:
            del result[key]
    return result


def _merge_list(current: Any, patch: list[Any], path: Path) -> list[Any]:
    key = _merge_key(path)
    if path in _SET_LISTS:
        base = list(current) if isinstance(current, list) else []
        return base + [copy.deepcopy(v) for v in patch if v not in base]
    if key is None or not all(isinstance(item, dict) for item in patch):
        return [_strip(item) for item in patch if not _is_directive(item)]
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [_strip(item) for item in patch if not _is_directive(item)]
    result = [item for item in (current if isinstance(current, list) else [])]
    for item in patch:
        if _is_directive(item):
            continue
        position = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
        elif position is None:
            result.append(_strip(item))
        else:
            result[position] = strategic_merge_patch(result[position], item, path)
    return result


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"$patch"}


def _strip(value: Any) -> Any:
    """A patch value without its directives, as stored."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _ordered(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [ident(o) for o in order]
    listed = sorted(
        (i for i in items if ident(i) in wanted), key=lambda item: wanted.index(ident(item))
    )
    return listed + [i for i in items if ident(i) not in wanted]

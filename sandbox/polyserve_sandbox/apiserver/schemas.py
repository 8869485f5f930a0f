"""Custom resources against their CRD's ``openAPIV3Schema``: defaults, pruning, validation.

As the real server does for a structural schema: ``default`` values are filled in where a
field is missing (inside objects that exist), fields the schema does not declare are
pruned (kept under ``x-kubernetes-preserve-unknown-fields`` or a map's
``additionalProperties``), and the rest is validated with ``jsonschema`` (OpenAPI v3.0 is
JSON Schema draft 4 plus ``nullable`` and ``x-kubernetes-int-or-string``, mapped here).
With ``fieldValidation=Strict`` (kubectl's default) an undeclared field is refused instead
of pruned, with the real server's "strict decoding error" message.

Then the CEL rules (``x-kubernetes-validations``, see ``validations``), unless the schema
already found a value of the wrong type; every failure of both is listed in one 422.

Not evaluated: ``format`` checks and list-type and map-type uniqueness
(``x-kubernetes-list-type``). Values an update leaves as they were are not validated again
(the real server's ratcheting).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema

from polyserve_sandbox.apiserver import errors, validations
from polyserve_sandbox.apiserver.resources import Resource

Obj = dict[str, Any]

_ROOT_KEPT = ("apiVersion", "kind", "metadata")
# Compiled validators by schema node identity (the node is kept with it: an id never reused).
_validators: dict[tuple[int, bool], tuple[Obj, jsonschema.Draft4Validator]] = {}


def _json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (structural) -> JSON Schema draft 4."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _json_schema(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k not in ("nullable", "default", "format")
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _validator(node: Obj, *, shallow: bool) -> jsonschema.Draft4Validator:
    """A compiled validator of one schema node (``shallow``: without its children's
    schemas, which are checked where they changed)."""
    key = (id(node), shallow)
    found = _validators.get(key)
    if found is None or found[0] is not node:
        if len(_validators) > 4096:  # schemas replaced by CRD updates: start afresh
            _validators.clear()
        body = {k: v for k, v in node.items() if not (shallow and k in _CHILDREN)}
        found = _validators[key] = (node, jsonschema.Draft4Validator(_json_schema(body)))
    return found[1]


_CHILDREN = ("properties", "additionalProperties", "items")
_MISSING: Any = object()


def _check(
    node: Obj, new: Any, old: Any, path: tuple[Any, ...], causes: list[errors.Cause]
) -> None:
    """Validate ``new`` against ``node`` where it differs from ``old`` (the real server's
    ratcheting: a value a write leaves as it was is not validated again)."""
    if old is not _MISSING and new == old:
        return
    properties = node.get("properties")
    extra = node.get("additionalProperties")
    items = node.get("items")
    if isinstance(new, dict) and (properties is not None or isinstance(extra, dict)):
        causes.extend(_cause(e, path) for e in _validator(node, shallow=True).iter_errors(new))
        before = old if isinstance(old, dict) else {}
        for key, value in new.items():
            if not path and key in _ROOT_KEPT:
                continue
            sub = properties.get(key) if properties and key in properties else extra
            if isinstance(sub, dict):
                _check(sub, value, before.get(key, _MISSING), (*path, key), causes)
    elif isinstance(new, list) and isinstance(items, dict):
        causes.extend(_cause(e, path) for e in _validator(node, shallow=True).iter_errors(new))
        before_items = old if isinstance(old, list) else []
        for index, value in enumerate(new):
            previous = before_items[index] if index < len(before_items) else _MISSING
            _check(items, value, previous, (*path, index), causes)
    else:
        causes.extend(_cause(e, path) for e in _validator(node, shallow=False).iter_errors(new))


def admit(
    resource: Resource,
    obj: Obj,
    *,
    strict: bool,
    warnings: list[str] | None = None,
    old: Obj | None = None,
) -> None:
    """Default, prune (or refuse, when strict) and validate ``obj`` (changed in place);
    with ``old``, only what changed is validated."""
    schema = resource.schema
    if not schema:
        return
    unknown: list[str] = []
    _prune(obj, schema, "", unknown, root=True)
    if unknown and strict:
        raise errors.strict_decoding(resource.kind, resource.version, unknown)
    if warnings is not None:
        warnings.extend(f'unknown field "{u}"' for u in unknown)
    default(schema, obj)
    name = (obj.get("metadata") or {}).get("name", "")
    causes: list[errors.Cause] = []
    _check(schema, obj, _MISSING if old is None else old, (), causes)
    if resource.validations is not None:
        if validations.blocked(causes):
            causes.append(errors.Cause("<nil>", validations.BLOCKED))
        else:
            causes += validations.check(resource.validations, obj, old, warnings)
    if causes:
        raise errors.invalid(resource.kind, resource.group, name, causes)


def unknown_fields(resource: Resource, obj: Obj) -> list[str]:
    """The undeclared fields of ``obj`` (not changed), for a strict apply configuration."""
    unknown: list[str] = []
    if resource.schema:
        _prune(copy.deepcopy(obj), resource.schema, "", unknown, root=True)
    return unknown


def _prune(value: Any, schema: Obj, path: str, unknown: list[str], *, root: bool = False) -> None:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
            return
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key in list(value):
            if root and key in _ROOT_KEPT:
                continue
            sub = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                _prune(value[key], properties[key], sub, unknown)
            elif isinstance(extra, dict):
                _prune(value[key], extra, sub, unknown)
            elif extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                continue
            elif properties is not None or schema.get("type") == "object":
                unknown.append(sub)
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _prune(item, schema["items"], f"{path}[{index}]", unknown)


def default(schema: Obj, value: Any) -> None:
    """Fill in ``default`` values under ``value`` (which exists) as the schema declares."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                default(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in (schema.get("properties") or {}):
                    default(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            default(schema["items"], item)


def _field(path: Any) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, default=str)


def _cause(error: jsonschema.ValidationError, prefix: tuple[Any, ...] = ()) -> errors.Cause:
    field = _field((*prefix, *error.absolute_path))
    value, rule = error.instance, error.validator_value
    kind = error.validator
    if kind == "required":
        # One error per missing property, named in its message ("'x' is a required property").
        quoted = re.match(r"^'(.*)' is a required property", error.message)
        name = quoted.group(1) if quoted else ""
        return errors.Cause(
            f"{field}.{name}" if field else name, "Required value", "FieldValueRequired"
        )
    if kind == "enum":
        allowed = ", ".join(_shown(v) for v in rule)
        return errors.Cause(
            field,
            f"Unsupported value: {_shown(value)}: supported values: {allowed}",
            "FieldValueNotSupported",
        )
    if kind == "type":
        wanted = rule if isinstance(rule, str) else rule[0]
        kind_name = type(value).__name__.replace("str", "string").replace("dict", "object")
        return errors.Cause(
            field,
            f'Invalid value: "{kind_name}": {field} in body must be of type {wanted}: '
            f'"{kind_name}"',
            "FieldValueTypeInvalid",
        )
    detail = {
        "minimum": f"should be greater than or equal to {rule}",
        "maximum": f"should be less than or equal to {rule}",
        "pattern": f"should match '{rule}'",
        "minLength": f"should be at least {rule} chars long",
        "maxLength": f"should be at most {rule} chars long",
        "minItems": f"should have at least {rule} items",
        "maxItems": f"should have at most {rule} items",
        "minProperties": f"should have at least {rule} properties",
        "maxProperties": f"should have at most {rule} properties",
    }.get(str(kind))
    if detail is None:
        return errors.Cause(field, f"Invalid value: {_shown(value)}: {error.message}")
    return errors.Cause(field, f"Invalid value: {_shown(value)}: {field} in body {detail}")

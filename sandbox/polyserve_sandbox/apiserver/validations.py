"""``x-kubernetes-validations``: a CRD version's CEL rules, compiled once, checked on writes.

``build(schema, where)`` walks an ``openAPIV3Schema`` and compiles every rule against the
schema node it sits on (``cel.compile_rule``), once per CRD version; the problems it meets
are the real server's answers to the CRD write (422 on the CRD, never at every object
write): a rule that does not compile, an unknown ``reason``, a ``messageExpression`` that
does not compile, ``oldSelf`` under a list that is not ``x-kubernetes-list-type: map``
(nothing to correlate it with).

``check(tree, new, old)`` evaluates them on a create or an update, as the server does: on
every value a rule's schema node describes (each list item, each map value), with ``self``
bound to it; a transition rule (one that reads ``oldSelf``) only on an update and where the
old value can be correlated (same property, same map key, same key of a ``map`` list), or
always with ``optionalOldSelf`` (``oldSelf.hasValue()``). A failed rule is one field error
in the server's words: ``spec.hardware: Invalid value: "object": <message>`` (``Forbidden``,
``Required value`` or ``Duplicate value`` by the rule's ``reason``, its ``fieldPath``
appended; ``<nil>`` at the root), and every failure is listed. As on a real server, rules
are not evaluated when the schema already found a value of the wrong type, and values an
update leaves as they were are not validated again (ratcheting; the real server evaluates
and only warns). Rules that call Kubernetes libraries the sandbox does not implement are
skipped with a warning (see ``cel``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from polyserve_sandbox.apiserver import cel, errors

Obj = dict[str, Any]
_MISSING: Any = object()

REASONS = ("FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired")
BLOCKED = (
    'Invalid value: "null": some validation rules were not checked because the object was '
    "invalid; correct the existing errors to complete validation"
)


@dataclass(frozen=True)
class Rule:
    """One compiled entry of ``x-kubernetes-validations``."""

    spec: Obj
    program: cel.Program
    message: cel.Program | None = None

    @property
    def transition(self) -> bool:
        return self.program.uses_old_self


@dataclass
class Node:
    """The rules of one schema node and of the nodes under it (only where there are any)."""

    schema: Obj
    rules: list[Rule] = field(default_factory=list)
    properties: dict[str, Node] = field(default_factory=dict)
    items: Node | None = None
    values: Node | None = None  # additionalProperties
    root: bool = False
    transitions: bool = False  # a transition rule here or below: unchanged values matter


def _go_rule(spec: Obj) -> str:
    """A rule as the server prints it in a field error (Go's ``%#v`` of the struct)."""

    def quoted(key: str) -> str:
        return json.dumps(str(spec.get(key, "")))

    def pointer(key: str) -> str:
        return "nil" if spec.get(key) is None else json.dumps(spec[key])

    return (
        f"apiextensions.ValidationRule{{Rule:{quoted('rule')}, Message:{quoted('message')}, "
        f"MessageExpression:{quoted('messageExpression')}, "
        f"Reason:(*apiextensions.FieldValueErrorReason)({pointer('reason')}), "
        f"FieldPath:{quoted('fieldPath')}, OptionalOldSelf:(*bool)({pointer('optionalOldSelf')})}}"
    )


def build(schema: Obj | None, where: str) -> tuple[Node | None, list[errors.Cause]]:
    """The compiled rules of a version's schema (None when it has none) and the problems a
    CRD write is refused for, with ``where`` the schema's own field path."""
    if not schema:
        return None, []
    problems: list[errors.Cause] = []
    node = _build(schema, where, problems, root=True, uncorrelatable=None)
    return node, problems


def _build(
    schema: Obj, where: str, problems: list[errors.Cause], *, root: bool, uncorrelatable: str | None
) -> Node | None:
    node = Node(schema, root=root)
    for i, spec in enumerate(schema.get("x-kubernetes-validations") or []):
        rule = _compile(spec, schema, f"{where}.x-kubernetes-validations[{i}]", problems, root)
        if rule is None:
            continue
        if rule.transition and uncorrelatable is not None:
            problems.append(
                errors.Cause(
                    f"{where}.x-kubernetes-validations[{i}].rule",
                    f"Invalid value: {json.dumps(spec.get('rule'))}: oldSelf cannot be used on "
                    f"the uncorrelatable portion of the schema within {uncorrelatable}",
                )
            )
            continue
        node.rules.append(rule)
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            child = _build(
                sub,
                f"{where}.properties[{name}]",
                problems,
                root=False,
                uncorrelatable=uncorrelatable,
            )
            if child is not None:
                node.properties[name] = child
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        atomic = schema.get("x-kubernetes-map-type") == "atomic"
        below = uncorrelatable or (f"{where}.additionalProperties" if atomic else None)
        node.values = _build(
            extra, f"{where}.additionalProperties", problems, root=False, uncorrelatable=below
        )
    items = schema.get("items")
    if isinstance(items, dict):
        keyed = schema.get("x-kubernetes-list-type") == "map"
        below = uncorrelatable or (None if keyed else f"{where}.items")
        node.items = _build(items, f"{where}.items", problems, root=False, uncorrelatable=below)
    children = [*node.properties.values(), node.items, node.values]
    node.transitions = any(r.transition for r in node.rules) or any(
        c is not None and c.transitions for c in children
    )
    if not node.rules and not any(c is not None for c in children):
        return None
    return node


def _compile(
    spec: Obj, schema: Obj, where: str, problems: list[errors.Cause], root: bool
) -> Rule | None:
    text = str(spec.get("rule") or "")
    if not text.strip():
        problems.append(errors.Cause(f"{where}.rule", "Required value", "FieldValueRequired"))
        return None
    reason = spec.get("reason")
    if reason is not None and reason not in REASONS:
        supported = ", ".join(f'"{r}"' for r in REASONS)
        problems.append(
            errors.Cause(
                f"{where}.reason",
                f'Unsupported value: "{reason}": supported values: {supported}',
                "FieldValueNotSupported",
            )
        )
        return None
    try:
        program = cel.compile_rule(text, schema, root=root)
    except cel.CompileError as exc:
        problems.append(
            errors.Cause(
                f"{where}.rule",
                f"Invalid value: {_go_rule(spec)}: compilation failed: {exc.detail}",
            )
        )
        return None
    message = None
    if spec.get("messageExpression"):
        try:
            message = cel.compile_rule(str(spec["messageExpression"]), schema, root=root)
        except cel.CompileError as exc:
            problems.append(
                errors.Cause(
                    f"{where}.messageExpression",
                    f"Invalid value: {_go_rule(spec)}: messageExpression compilation failed: "
                    f"{exc.detail}",
                )
            )
            return None
    return Rule(spec, program, message)


# -- checking objects --------------------------------------------------------------------


def blocked(causes: list[errors.Cause]) -> bool:
    """Whether the schema's own errors keep the rules from running (a wrong type or value)."""
    return any(c.reason in ("FieldValueTypeInvalid", "FieldValueNotSupported") for c in causes)


def check(
    tree: Node, new: Obj, old: Obj | None, warnings: list[str] | None = None
) -> list[errors.Cause]:
    """Every rule ``new`` breaks (``old``: the stored object of an update)."""
    causes: list[errors.Cause] = []
    _walk(tree, new, _MISSING if old is None else old, (), False, causes, warnings)
    return causes


def _path(steps: tuple[Any, ...]) -> str:
    text = ""
    for step in steps:
        if isinstance(step, int):
            text += f"[{step}]"
        elif isinstance(step, tuple):
            text += f"[{step[0]}]"  # a map key
        else:
            text += f".{step}" if text else str(step)
    return text


def _walk(
    node: Node,
    new: Any,
    old: Any,
    steps: tuple[Any, ...],
    unchanged: bool,
    causes: list[errors.Cause],
    warnings: list[str] | None,
) -> None:
    if new is None:
        return  # null values are not validated
    if old is not _MISSING:
        unchanged = new == old
    if unchanged and not node.transitions:
        return  # ratcheting: what an update leaves as it was is not validated again
    if node.rules:
        _evaluate(node, new, old, steps, unchanged, causes, warnings)
    if isinstance(new, dict):
        before = old if isinstance(old, dict) else {}
        atomic = node.schema.get("x-kubernetes-map-type") == "atomic"
        for key, value in new.items():
            child = node.properties.get(key)
            if child is not None:
                _walk(
                    child,
                    value,
                    before.get(key, _MISSING),
                    (*steps, key),
                    unchanged,
                    causes,
                    warnings,
                )
            elif node.values is not None and key not in (node.schema.get("properties") or {}):
                previous = _MISSING if atomic else before.get(key, _MISSING)
                _walk(node.values, value, previous, (*steps, (key,)), unchanged, causes, warnings)
    elif isinstance(new, list) and node.items is not None:
        matches = _correlate(node.schema, new, old)
        for index, value in enumerate(new):
            _walk(node.items, value, matches[index], (*steps, index), unchanged, causes, warnings)


def _correlate(schema: Obj, new: list[Any], old: Any) -> list[Any]:
    """Each new item's old self: by key in a ``map`` list, none in any other list."""
    keys = schema.get("x-kubernetes-list-map-keys") or []
    if schema.get("x-kubernetes-list-type") != "map" or not keys or not isinstance(old, list):
        return [_MISSING] * len(new)

    def key(item: Any) -> Any:
        return tuple(item.get(k) for k in keys) if isinstance(item, dict) else None

    before = {key(item): item for item in old}
    return [before.get(key(item), _MISSING) for item in new]


def _evaluate(
    node: Node,
    new: Any,
    old: Any,
    steps: tuple[Any, ...],
    unchanged: bool,
    causes: list[errors.Cause],
    warnings: list[str] | None,
) -> None:
    self_value = cel.value(new, node.schema, root=node.root)
    old_value = None if old is _MISSING else cel.value(old, node.schema, root=node.root)
    where = _path(steps) or "<nil>"
    kind = json.dumps(str(node.schema.get("type", "")))
    for rule in node.rules:
        optional = bool(rule.spec.get("optionalOldSelf"))
        if rule.transition and old is _MISSING and not optional:
            continue  # nothing to compare with: a transition rule waits for an update
        if not rule.transition and unchanged:
            continue
        if rule.program.unevaluated:
            if warnings is not None:
                names = ", ".join(sorted(rule.program.unevaluated))
                warnings.append(
                    f"{where}: rule {rule.spec.get('rule')!r} not evaluated: the sandbox does "
                    f"not implement {names}"
                )
            continue
        variables: dict[str, Any] = {"self": self_value}
        if rule.transition:
            variables["oldSelf"] = (
                cel.Optional(old_value, old is not _MISSING) if optional else old_value
            )
        try:
            if cel.holds(rule.program, variables):
                continue
        except cel.EvalError as exc:
            causes.append(errors.Cause(where, f"Invalid value: {kind}: {_failure(exc, rule)}"))
            continue
        causes.append(_cause(rule, where, kind, _message(rule, variables)))


def _failure(exc: cel.EvalError, rule: Rule) -> str:
    subject = str(rule.spec.get("message") or rule.spec.get("rule", "")).strip()
    text = str(exc)
    if text == "no such overload":
        return (
            f"'{text}': call arguments did not match a supported operator, function or macro "
            f"signature for rule: {subject}"
        )
    return f"{text} evaluating rule: {subject}"


def _message(rule: Rule, variables: dict[str, Any]) -> str:
    if rule.message is not None:
        try:
            text = cel.run(rule.message, variables)
        except cel.EvalError:
            text = None
        if isinstance(text, str) and text.strip() and "\n" not in text.strip():
            return text.strip()
    if rule.spec.get("message"):
        return str(rule.spec["message"]).strip()
    return f"failed rule: {str(rule.spec.get('rule', '')).strip()}"


def _cause(rule: Rule, where: str, kind: str, detail: str) -> errors.Cause:
    field_path = str(rule.spec.get("fieldPath") or "")
    if field_path:
        relative = field_path.lstrip(".")
        where = relative if where == "<nil>" else f"{where}.{relative}"
    reason = rule.spec.get("reason") or "FieldValueInvalid"
    if reason == "FieldValueForbidden":
        return errors.Cause(where, f"Forbidden: {detail}", reason)
    if reason == "FieldValueRequired":
        return errors.Cause(where, f"Required value: {detail}", reason)
    if reason == "FieldValueDuplicate":
        return errors.Cause(where, f"Duplicate value: {kind}", reason)
    return errors.Cause(where, f"Invalid value: {kind}: {detail}")

"""Label and field selectors, as ``?labelSelector=`` / ``?fieldSelector=`` and as the
``{matchLabels, matchExpressions}`` objects of Deployments, Services and PDBs.

Label selectors follow ``k8s.io/apimachinery/pkg/labels``: ``k=v``, ``k==v``, ``k!=v``,
``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``, ``k>1``, ``k<1``, comma-joined (all must
hold). ``!=`` and ``notin`` also match objects without the label, as on a real server.

Field selectors: ``=``, ``==`` and ``!=`` on a dotted path (``metadata.name``,
``spec.nodeName``, ``involvedObject.uid``, ``status.phase``...); a missing field reads as
"". The real server accepts only a few paths per kind and answers 400 for others; here any
path works (more permissive, never less).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from polyserve_sandbox.apiserver import errors

Obj = dict[str, Any]


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if not has:
            return False
        try:
            number, bound = int(value or ""), int(self.values[0])
        except ValueError:
            return False
        return number > bound if self.op == "gt" else number < bound

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        symbol = {"gt": ">", "lt": "<"}.get(self.op, self.op)
        return f"{self.key}{symbol}{self.values[0]}"


LabelSelector = tuple[Requirement, ...]

LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_OP = re.compile(r"^\s*(!?)\s*([^!=<>\s]+)\s*(==|=|!=|<|>)?\s*(.*?)\s*$")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _check(key: str, values: tuple[str, ...]) -> None:
    if not LABEL_KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise errors.bad_request(
            f'unable to parse requirement: key: Invalid value: "{key}": name part must consist of '
            "alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character"
        )
    for value in values:
        if not LABEL_VALUE.match(value) or len(value) > 63:
            raise errors.bad_request(
                f'unable to parse requirement: values[0][{key}]: Invalid value: "{value}": a valid '
                "label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                "'.', and must start and end with an alphanumeric character"
            )


@functools.lru_cache(maxsize=512)
def parse_labels(text: str) -> LabelSelector:
    """Parse a label selector string; 400 BadRequest when it does not parse."""
    requirements: list[Requirement] = []
    for part in _split(text):
        set_match = _SET.match(part)
        if set_match:
            key, op, inner = set_match.groups()
            values = tuple(sorted(v.strip() for v in inner.split(",") if v.strip()))
            _check(key, values)
            requirements.append(Requirement(key, op, values))
            continue
        match = _OP.match(part)
        if match is None:
            raise errors.bad_request(f"unable to parse requirement: found '{part.strip()}'")
        bang, key, op, value = match.groups()
        if bang and op:
            raise errors.bad_request(f"unable to parse requirement: found '{part.strip()}'")
        if bang or not op:
            if value:
                raise errors.bad_request(f"unable to parse requirement: found '{value}'")
            _check(key, ())
            requirements.append(Requirement(key, "!" if bang else "exists"))
            continue
        if op in ("<", ">") and not value.lstrip("-").isdigit():
            raise errors.bad_request(
                f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an "
                f"integer: {value}"
            )
        _check(key, () if op in ("<", ">") else (value,))
        name = {"==": "=", ">": "gt", "<": "lt"}.get(op, op)
        requirements.append(Requirement(key, name, (value,)))
    return tuple(requirements)


def labels_selector(selector: str | Mapping[str, str] | None) -> LabelSelector:
    """A selector from a string, an equality mapping, or nothing (everything matches)."""
    if selector is None:
        return ()
    if isinstance(selector, str):
        return parse_labels(selector)
    return tuple(Requirement(k, "=", (str(v),)) for k, v in sorted(selector.items()))


def matches_labels(selector: LabelSelector, labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in selector)


def from_object(selector: Obj | None) -> LabelSelector:
    """A ``metav1.LabelSelector`` object (``matchLabels`` + ``matchExpressions``) as
    requirements. None or ``{}`` selects everything, as the real API defines."""
    if not selector:
        return ()
    found: list[Requirement] = [
        Requirement(k, "=", (str(v),))
        for k, v in sorted((selector.get("matchLabels") or {}).items())
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expression in selector.get("matchExpressions") or []:
        op = ops.get(expression.get("operator", ""))
        if op is None:
            raise errors.bad_request(
                f"{expression.get('operator')!r} is not a valid label selector operator"
            )
        values = tuple(sorted(str(v) for v in expression.get("values") or []))
        found.append(Requirement(str(expression.get("key", "")), op, values))
    return tuple(found)


def format_labels(selector: LabelSelector) -> str:
    """The string form (``app=web,tier in (a,b)``), as ``metav1.FormatLabelSelector`` gives."""
    return ",".join(str(r) for r in selector) if selector else ""


# -- field selectors ------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    equal: bool
    value: str

    def matches(self, obj: Obj) -> bool:
        return (field_value(obj, self.path) == self.value) == self.equal


FieldSelector = tuple[FieldRequirement, ...]


def field_value(obj: Obj, path: tuple[str, ...]) -> str:
    node: Any = obj
    for step in path:
        if not isinstance(node, dict):
            return ""
        node = node.get(step)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@functools.lru_cache(maxsize=512)
def parse_fields(text: str) -> FieldSelector:
    """Parse a field selector string; 400 BadRequest when it does not parse."""
    found: list[FieldRequirement] = []
    for part in re.split(r"(?<!\\),", text):
        if not part.strip():
            continue
        match = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)(.*)$", part)
        if match is None:
            raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        path, op, value = match.groups()
        found.append(FieldRequirement(tuple(path.split(".")), op != "!=", _unescape(value.strip())))
    return tuple(found)


def matches_fields(selector: FieldSelector, obj: Obj) -> bool:
    return all(r.matches(obj) for r in selector)


def predicate(
    label_selector: str | Mapping[str, str] | None, field_selector: str | None
) -> Callable[[Obj], bool] | None:
    """One test for both selectors, or None when neither narrows anything."""
    labels = labels_selector(label_selector)
    fields = parse_fields(field_selector) if field_selector else ()
    if not labels and not fields:
        return None

    def test(obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        return matches_labels(labels, meta.get("labels")) and matches_fields(fields, obj)

    return test

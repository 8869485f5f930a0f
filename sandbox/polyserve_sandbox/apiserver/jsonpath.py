"""A small JSONPath evaluator: what CRD ``additionalPrinterColumns`` use.

Supported (the subset of kubectl's JSONPath that printer columns need): dotted fields
(``.spec.replicas``), bracketed names (``['app.kubernetes.io/name']``), escaped dots
(``.labels.app\\.kubernetes\\.io/name``), indexes (``[0]``, ``[-1]``), wildcards
(``[*]``, ``.*``) and filters on a relative path (``[?(@.type=="Ready")]``, with ``==``,
``!=``, ``<``, ``>``, ``<=``, ``>=``, or bare existence ``[?(@.name)]``). An optional
``{...}`` wrapper is accepted. A path that does not parse raises ``ValueError``.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

Step = tuple[Any, ...]

_FILTER = re.compile(r"^\?\(\s*@((?:\.[^=!<>\s]+)*)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*\)$")


def _literal(text: str) -> Any:
    text = text.strip()
    if text[:1] in ("'", '"') and text[-1:] == text[:1]:
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


@functools.lru_cache(maxsize=256)
def parse(path: str) -> tuple[Step, ...]:
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    steps: list[Step] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ".":
            j = i + 1
            name = ""
            while j < len(text) and text[j] not in ".[":
                if text[j] == "\\" and j + 1 < len(text):
                    name += text[j + 1]
                    j += 2
                    continue
                name += text[j]
                j += 1
            if name:
                steps.append(("all",) if name == "*" else ("field", name))
            i = j
        elif char == "[":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "[":
                    depth += 1
                elif text[j] == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= len(text):
                raise ValueError(f"unclosed [ in {path!r}")
            steps.append(_bracket(text[i + 1 : j].strip(), path))
            i = j + 1
        else:
            raise ValueError(f"unexpected {char!r} at {i} in {path!r}")
    return tuple(steps)


def _bracket(inner: str, path: str) -> Step:
    if inner == "*":
        return ("all",)
    if inner[:1] in ("'", '"'):
        return ("field", inner[1:-1])
    if inner.startswith("?"):
        match = _FILTER.match(inner)
        if match is None:
            raise ValueError(f"unsupported filter [{inner}] in {path!r}")
        sub, op, value = match.groups()
        relative = parse(sub) if sub else ()
        return ("filter", relative, op, _literal(value) if op else None)
    try:
        return ("index", int(inner))
    except ValueError:
        raise ValueError(f"unsupported [{inner}] in {path!r}") from None


_MISSING = object()


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "==":
        return bool(left == right or str(left) == str(right))
    if op == "!=":
        return not (left == right or str(left) == str(right))
    try:
        a, b = float(left), float(right)
    except (TypeError, ValueError):
        return False
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _step(values: list[Any], step: Step) -> list[Any]:
    found: list[Any] = []
    kind = step[0]
    for value in values:
        if kind == "field":
            if isinstance(value, dict) and step[1] in value:
                found.append(value[step[1]])
        elif kind == "index":
            if isinstance(value, list) and -len(value) <= step[1] < len(value):
                found.append(value[step[1]])
        elif kind == "all":
            if isinstance(value, dict):
                found.extend(value.values())
            elif isinstance(value, list):
                found.extend(value)
        elif kind == "filter" and isinstance(value, list):
            _, relative, op, expected = step
            for item in value:
                hits = evaluate_steps(item, relative)
                if op is None:
                    if hits:
                        found.append(item)
                elif any(_compare(hit, op, expected) for hit in hits):
                    found.append(item)
    return found


def evaluate_steps(obj: Any, steps: tuple[Step, ...]) -> list[Any]:
    values = [obj]
    for step in steps:
        values = _step(values, step)
        if not values:
            break
    return values


def evaluate(obj: Any, path: str) -> list[Any]:
    """Every value ``path`` selects in ``obj`` (empty when none)."""
    return evaluate_steps(obj, parse(path))

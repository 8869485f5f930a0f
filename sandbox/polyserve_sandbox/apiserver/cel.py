"""CEL as the API server evaluates ``x-kubernetes-validations`` rules, on cel-python.

``compile_rule`` parses a rule once (programs are cached by their text) and checks what the real
server's type-checker would refuse when the CRD is written: a syntax error, a call of a
function CEL and Kubernetes do not declare, an identifier other than ``self``, ``oldSelf``
and a macro's variable, and a field the schema does not declare on a path from ``self``
(``self.spec.replcas``). Messages follow cel-go's (``ERROR: <input>:1:8: undefined field
'replcas'`` and the source line with a caret), which the server prefixes with
``compilation failed:``.

Beyond cel-python's standard library, Kubernetes' extensions are here: the string library
(``charAt``, ``indexOf``, ``lastIndexOf``, ``lowerAscii``, ``upperAscii``, ``replace``,
``split``, ``substring``, ``trim``, ``join``, ``reverse``), the list library (``isSorted``,
``sum``, ``min``, ``max``, ``indexOf``, ``lastIndexOf``), regular expressions (``find``,
``findAll``) and, for ``optionalOldSelf``, ``oldSelf.hasValue()``/``value()``/``orValue()``.
Kubernetes' URL, IP, CIDR, quantity, semver and ``format`` libraries are declared but not
implemented, and cel-go's optional syntax (``self.?field``) does not parse in cel-python: a
rule that uses them is accepted and skipped with a warning, rather than refused or faked.
Values reach CEL typed by their schema (``number`` as double, as the server types them);
``self`` at a resource's root sees ``apiVersion``, ``kind`` and only ``metadata.name`` and
``metadata.generateName``. No cost budget is kept.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import celpy
import celpy.celtypes as ct
import lark

Obj = dict[str, Any]

MACROS = frozenset({"has", "all", "exists", "exists_one", "map", "filter"})
TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
VARIABLES = frozenset({"self", "oldSelf"})
#: Kubernetes CEL libraries the sandbox declares but does not evaluate.
UNEVALUATED = frozenset(
    {
        "url", "isURL", "getScheme", "getHost", "getHostname", "getPort", "getEscapedPath",
        "getQuery", "ip", "isIP", "cidr", "isCIDR", "family", "isUnspecified", "isLoopback",
        "isLinkLocalMulticast", "isLinkLocalUnicast", "isGlobalUnicast", "containsIP",
        "containsCIDR", "prefixLength", "masked", "quantity", "isQuantity", "sign", "isInteger",
        "asInteger", "asApproximateFloat", "add", "sub", "isGreaterThan", "isLessThan",
        "compareTo", "semver", "isSemver", "major", "minor", "patch", "format", "quote",
    }
)  # fmt: skip


class CompileError(Exception):
    """A rule the server would refuse when the CRD is written; ``detail`` in cel-go's words."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class EvalError(Exception):
    """A rule that could not be evaluated on a value (``no such key: x``...)."""


# -- Kubernetes' libraries ---------------------------------------------------------------


def _fail(message: str) -> celpy.evaluation.CELEvalError:
    return celpy.evaluation.CELEvalError(message)


def _char_at(text: ct.StringType, index: ct.IntType) -> Any:
    if not 0 <= index <= len(text):
        return _fail(f"index out of range: {index}")
    return ct.StringType(text[index : index + 1])


def _index_of(target: Any, wanted: Any, start: ct.IntType | None = None) -> Any:
    if isinstance(target, str):
        return ct.IntType(target.find(wanted, int(start or 0)))
    items = list(target)
    return ct.IntType(items.index(wanted) if wanted in items else -1)


def _last_index_of(target: Any, wanted: Any, end: ct.IntType | None = None) -> Any:
    if isinstance(target, str):
        return ct.IntType(target.rfind(wanted, 0, None if end is None else int(end) + len(wanted)))
    items = list(target)
    return ct.IntType(len(items) - 1 - items[::-1].index(wanted) if wanted in items else -1)


def _ascii(convert: Callable[[str], str]) -> Callable[[ct.StringType], ct.StringType]:
    def apply(text: ct.StringType) -> ct.StringType:
        return ct.StringType("".join(convert(c) if c.isascii() else c for c in text))

    return apply


def _replace(text: ct.StringType, old: Any, new: Any, count: Any = -1) -> ct.StringType:
    return ct.StringType(text.replace(old, new, int(count)))


def _split(text: ct.StringType, separator: Any, count: Any = -1) -> ct.ListType:
    if count == 0:
        return ct.ListType()
    parts = text.split(separator, int(count) - 1 if count > 0 else -1)
    return ct.ListType(ct.StringType(p) for p in parts)


def _substring(text: ct.StringType, start: Any, end: Any = None) -> Any:
    stop = len(text) if end is None else int(end)
    if not 0 <= start <= stop <= len(text):
        return _fail(f"index out of range: {start if start > len(text) else stop}")
    return ct.StringType(text[int(start) : stop])


def _join(items: ct.ListType, separator: Any = "") -> ct.StringType:
    return ct.StringType(str(separator).join(str(i) for i in items))


def _is_sorted(items: Any) -> ct.BoolType:
    values: list[Any] = list(items)
    return ct.BoolType(all(a <= b for a, b in itertools.pairwise(values)))


def _sum(items: Any) -> Any:
    values: list[Any] = list(items)
    if not values:
        return ct.IntType(0)
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def _max(items: Any) -> Any:
    values: list[Any] = list(items)
    return max(values) if values else _fail("max called on an empty list")


def _find(text: ct.StringType, pattern: Any) -> ct.StringType:
    found = re.search(str(pattern), text)
    return ct.StringType(found.group(0) if found else "")


def _find_all(text: ct.StringType, pattern: Any, count: Any = -1) -> ct.ListType:
    found = [m.group(0) for m in re.finditer(str(pattern), text)]
    return ct.ListType(ct.StringType(f) for f in (found if count < 0 else found[: int(count)]))


@dataclass(frozen=True)
class Optional:
    """``oldSelf`` of a rule with ``optionalOldSelf: true`` (cel-go's optional type)."""

    value: Any = None
    present: bool = False


def _has_value(optional: Any) -> ct.BoolType:
    return ct.BoolType(isinstance(optional, Optional) and optional.present)


def _value(optional: Any) -> Any:
    if isinstance(optional, Optional) and optional.present:
        return optional.value
    return _fail("optional.none() dereference")


def _or_value(optional: Any, default: Any) -> Any:
    return optional.value if isinstance(optional, Optional) and optional.present else default


def _unevaluated(name: str) -> Callable[..., Any]:
    def call(*_: Any) -> Any:
        return _fail(f"{name}() is not evaluated by the sandbox")

    return call


def _propagating(name: str) -> Callable[..., Any]:
    """An arithmetic operator that passes an operand's error on (cel-python reports a missing
    overload instead, losing the cause cel-go names: ``no such key: low``)."""
    operator = celpy.evaluation.base_functions[name]

    def apply(*operands: Any) -> Any:
        for operand in operands:
            if isinstance(operand, celpy.evaluation.CELEvalError):
                return operand
        return operator(*operands)

    return apply


LIBRARY: dict[str, Callable[..., Any]] = {
    **{name: _propagating(name) for name in ("_+_", "_-_", "_*_", "_/_", "_%_", "-_")},
    "charAt": _char_at,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    "lowerAscii": _ascii(str.lower),
    "upperAscii": _ascii(str.upper),
    "replace": _replace,
    "split": _split,
    "substring": _substring,
    "trim": lambda text: ct.StringType(text.strip()),
    "join": _join,
    "reverse": lambda text: ct.StringType(text[::-1]),
    "isSorted": _is_sorted,
    "sum": _sum,
    "max": _max,
    "find": _find,
    "findAll": _find_all,
    "hasValue": _has_value,
    "value": _value,
    "orValue": _or_value,
    **{name: _unevaluated(name) for name in UNEVALUATED},
}
KNOWN = frozenset({*celpy.evaluation.base_functions, *LIBRARY, *MACROS, "min", "reduce", "dyn"})


_OPTIONAL_SYNTAX = re.compile(r"\.\?[A-Za-z_]|\[\?")

# -- compiling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A compiled rule: evaluate it with ``run``."""

    text: str
    runner: Any
    uses_old_self: bool
    unevaluated: frozenset[str]


@functools.cache
def _environment() -> celpy.Environment:
    return celpy.Environment()  # raises the recursion limit: made on first use, not at import


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> tuple[lark.Tree[Any], Any]:
    env = _environment()
    try:
        tree = env.compile(text)
    except celpy.celparser.CELParseError as exc:
        raise CompileError(_syntax_error(text, exc)) from exc
    return tree, env.program(tree, functions=LIBRARY)


def _syntax_error(text: str, exc: celpy.celparser.CELParseError) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, lark.UnexpectedToken):
        token = "<EOF>" if cause.token.type == "$END" else str(cause.token)
        what = f"mismatched input '{token}'"
    elif isinstance(cause, lark.UnexpectedCharacters):
        at = cause.pos_in_stream or 0
        what = f"token recognition error at: '{text[at : at + 1]}'"
    else:
        what = "the expression does not parse"
    return _located(text, exc.line or 1, exc.column or 1, f"Syntax error: {what}")


def _located(text: str, line: int, column: int, message: str) -> str:
    source = text.splitlines()[line - 1] if text.splitlines() else ""
    return f"ERROR: <input>:{line}:{column}: {message}\n | {source}\n | {'.' * (column - 1)}^"


def _unescape(name: str) -> str:
    """A property name as CEL spells it (``x__dash__y``) back to the schema's (``x-y``)."""
    if name.startswith("__") and name.endswith("__") and len(name) > 4:
        inner = name[2:-2]
        if inner.isidentifier():
            return inner  # an escaped CEL keyword (``__namespace__``)
    for word, char in (
        ("__underscores__", "__"),
        ("__dot__", "."),
        ("__dash__", "-"),
        ("__slash__", "/"),
    ):
        name = name.replace(word, char)
    return name


def _position(tree: lark.Tree[Any] | lark.Token) -> tuple[int, int]:
    if isinstance(tree, lark.Token):
        return tree.line or 1, tree.column or 1
    for token in tree.scan_values(lambda v: isinstance(v, lark.Token)):
        return token.line or 1, token.column or 1
    return 1, 1


def _chain(tree: lark.Tree[Any]) -> tuple[str, list[tuple[str, lark.Token]]] | None:
    """``self.a.b`` as ("self", [a, b]); None when the member does not start at a name."""
    names: list[tuple[str, lark.Token]] = []
    node: Any = tree
    while isinstance(node, lark.Tree):
        if node.data == "member":
            node = node.children[0]
        elif node.data == "member_dot":
            token = node.children[1]
            assert isinstance(token, lark.Token)
            names.append((str(token), token))
            node = node.children[0]
        elif node.data == "primary" and isinstance(node.children[0], lark.Tree):
            ident = node.children[0]
            if ident.data != "ident":
                return None
            return str(ident.children[0]), names[::-1]
        else:
            return None
    return None


def _field_of(schema: Obj | None, name: str, root: bool) -> tuple[bool, Obj | None]:
    """(declared, its schema) of a field read with ``.name`` on a value of ``schema``; a
    field is undeclared only where the schema lists properties and says nothing of others."""
    if schema is None:
        return True, None
    if root and name in ("apiVersion", "kind"):
        return True, {"type": "string"}
    if root and name == "metadata":
        strings = {"type": "string"}
        return True, {"type": "object", "properties": {"name": strings, "generateName": strings}}
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    if schema.get("type") in ("string", "integer", "number", "boolean", "array"):
        return False, None
    if properties is not None and name in properties:
        return True, properties[name]
    if isinstance(extra, dict):
        return True, extra
    if extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
        return True, None
    return properties is None, None


_CEL_TYPES = {
    "string": "string",
    "integer": "int",
    "number": "double",
    "boolean": "bool",
    "array": "list(dyn)",
}


def _macro_variables(tree: lark.Tree[Any]) -> set[str]:
    """The variables macros bind (``x`` of ``self.items.all(x, ...)``)."""
    bound = set()
    for node in tree.find_data("member_dot_arg"):
        if str(node.children[1]) in MACROS and len(node.children) > 2 and node.children[2]:
            first = node.children[2].children[0]
            found = next(first.find_data("ident"), None)
            if found is not None:
                bound.add(str(found.children[0]))
    return bound


def _undeclared(text: str, token: lark.Token) -> CompileError:
    line, column = _position(token)
    message = f"undeclared reference to '{token}' (in container '')"
    return CompileError(_located(text, line, column, message))


def _top_down(tree: lark.Tree[Any]) -> list[lark.Tree[Any]]:
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        todo.extend(c for c in reversed(node.children) if isinstance(c, lark.Tree))
    return found


def _check(text: str, tree: lark.Tree[Any], schema: Obj | None, root: bool) -> frozenset[str]:
    """What the type-checker refuses (CompileError); returns the unevaluated functions used."""
    names = VARIABLES | _macro_variables(tree) | TYPE_NAMES | {"dyn"}
    used: set[str] = set()
    for node in _top_down(tree):
        if node.data in ("ident_arg", "member_dot_arg", "dot_ident_arg"):
            token = node.children[1] if node.data == "member_dot_arg" else node.children[0]
            assert isinstance(token, lark.Token)
            if str(token) not in KNOWN:
                raise _undeclared(text, token)
            if str(token) in UNEVALUATED:
                used.add(str(token))
        elif node.data == "ident" and str(node.children[0]) not in names:
            assert isinstance(node.children[0], lark.Token)
            raise _undeclared(text, node.children[0])
        elif node.data == "member_dot":
            chain = _chain(node)
            if chain is None or chain[0] not in VARIABLES:
                continue
            current, at_root = schema, root
            for name, token in chain[1]:
                kind = (current or {}).get("type")
                declared, current = _field_of(current, _unescape(name), at_root)
                at_root = False
                if not declared:
                    line, column = _position(token)
                    message = (
                        f"type '{_CEL_TYPES[kind]}' does not support field selection"
                        if kind in _CEL_TYPES
                        else f"undefined field '{name}'"
                    )
                    raise CompileError(_located(text, line, column, message))
    return frozenset(used)


def compile_rule(text: str, schema: Obj | None = None, *, root: bool = False) -> Program:
    """A rule compiled for values of ``schema`` (``root``: a resource's root), or
    ``CompileError`` in cel-go's words."""
    try:
        tree, runner = _parsed(text)
    except CompileError:
        if _OPTIONAL_SYNTAX.search(text):
            # cel-go's optional field syntax, which cel-python cannot parse: accepted, not
            # evaluated, rather than refusing a CRD a real server accepts.
            return Program(text, None, "oldSelf" in text, frozenset({"optional syntax (.?)"}))
        raise
    unevaluated = _check(text, tree, schema, root)
    uses_old_self = any(str(t.children[0]) == "oldSelf" for t in tree.find_data("ident"))
    return Program(text, runner, uses_old_self, unevaluated)


# -- evaluating --------------------------------------------------------------------------

_ERRORS = (
    (re.compile(r"^no such member in mapping: '(.*)'$"), r"no such key: \1"),
    (re.compile(r"^found no matching overload.*"), "no such overload"),
    (re.compile(r"^modulus or divide by zero$"), "division by zero"),
    (re.compile(r"^return error for overflow$"), "integer overflow"),
)


def _cel_go_words(message: str) -> str:
    for pattern, replacement in _ERRORS:
        if pattern.match(message):
            return pattern.sub(replacement, message)
    return message


def run(program: Program, variables: dict[str, Any]) -> Any:
    """The rule's value, or ``EvalError`` in cel-go's words."""
    try:
        result = program.runner.evaluate(variables)
    except celpy.evaluation.CELEvalError as exc:
        raise EvalError(_cel_go_words(str(exc.args[0]) if exc.args else str(exc))) from exc
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as exc:
        raise EvalError(str(exc)) from exc
    if isinstance(result, celpy.evaluation.CELEvalError):
        raise EvalError(_cel_go_words(str(result.args[0]) if result.args else str(result)))
    return result


def holds(program: Program, variables: dict[str, Any]) -> bool:
    """Whether a rule holds; ``EvalError`` when it fails to evaluate to a bool."""
    result = run(program, variables)
    if not isinstance(result, ct.BoolType):
        raise EvalError(f"expected a bool, the rule evaluated to {type(result).__name__}")
    return bool(result)


def value(data: Any, schema: Obj | None, *, root: bool = False) -> Any:
    """JSON data as CEL sees it under ``schema`` (``number`` always a double)."""
    if data is None:
        return None
    schema = schema or {}
    if isinstance(data, dict):
        if root:
            meta = data.get("metadata") or {}
            data = {
                **data,
                "metadata": {k: meta[k] for k in ("name", "generateName") if k in meta},
            }
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out = ct.MapType()
        for key, item in data.items():
            sub = properties.get(key) if key in properties else extra
            out[ct.StringType(key)] = value(item, sub if isinstance(sub, dict) else None)
        return out
    if isinstance(data, list):
        items = schema.get("items")
        return ct.ListType(value(item, items if isinstance(items, dict) else None) for item in data)
    if isinstance(data, bool):
        return ct.BoolType(data)
    if isinstance(data, int) and schema.get("type") != "number":
        return ct.IntType(data)
    if isinstance(data, int | float):
        return ct.DoubleType(data)
    return ct.StringType(str(data))

"""HTTPRoute and GRPCRoute rules as the proxies use them: parsed once, matched per request.

Pure data and functions. A route's ``spec`` is read the way the Gateway API CRDs default it
(the sandbox stores routes as written, without the CRDs' defaults): ``matches`` unset is one
``PathPrefix /`` match, a path match's type is ``PathPrefix``, header, query and method
matches are ``Exact``, a backendRef is a core ``Service`` with weight 1.

Supported: path (``Exact``, ``PathPrefix``, ``RegularExpression``), header, query parameter
and method matches; gRPC method (service and/or method, ``Exact`` or ``RegularExpression``)
and header matches; the ``RequestHeaderModifier`` and ``ResponseHeaderModifier`` filters;
``timeouts.request`` and ``timeouts.backendRequest``. Any other filter makes the route
``Accepted=False`` (``UnsupportedValue``) rather than silently skipped.

Precedence follows the spec: across every rule attached to a listener, the most specific
hostname, then (HTTP) an exact path, the longest prefix, a method match, the most header
and query matches, or (gRPC) the longest service and method and the most header matches;
then the oldest route, then ``namespace/name``, then rule and match order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE = "HTTPRoute"
GRPC_ROUTE = "GRPCRoute"
ROUTE_KINDS = (HTTP_ROUTE, GRPC_ROUTE)

_DURATION = re.compile(r"^(?:([0-9]{1,5})(h|ms|m|s))+$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
SUPPORTED_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier")


class RouteError(ValueError):
    """A route the sandbox's gateway cannot implement (``Accepted=False``, UnsupportedValue)."""


# -- hostnames ---------------------------------------------------------------------------


def host_matches(pattern: str, host: str) -> bool:
    """``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``, not
    ``example.com``; any other pattern matches itself only."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def intersect(listener: str | None, route: Sequence[str]) -> tuple[str, ...] | None:
    """The hostnames a route serves on a listener: ``()`` for any host, ``None`` when the
    two have no hostname in common (the route is then not accepted there)."""
    if not route:
        return (listener,) if listener else ()
    if not listener:
        return tuple(route)
    found: list[str] = []
    for name in route:
        if name == listener or host_matches(listener, name):
            found.append(name)  # the route's is the narrower (or the same)
        elif host_matches(name, listener):
            found.append(listener)  # the listener's is the narrower
    return tuple(dict.fromkeys(found)) or None


def host_rank(hostnames: Sequence[str], host: str) -> tuple[int, int] | None:
    """How specifically ``hostnames`` match ``host`` (characters of an exact match, then of
    any match; higher is more specific), or None when none matches. ``()`` matches all."""
    if not hostnames:
        return (0, 0)
    best: tuple[int, int] | None = None
    for name in hostnames:
        if host_matches(name, host):
            rank = (0, len(name)) if name.startswith("*.") else (len(name), len(name))
            best = rank if best is None or rank > best else best
    return best


def request_host(value: str | None) -> str:
    """A Host header without its port, lowercased."""
    host = (value or "").strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# -- durations and header edits ----------------------------------------------------------


def duration(text: Any, where: str) -> float | None:
    """A Gateway API duration (``1h``, ``500ms``, ``1m30s``) in seconds; ``0s`` is None."""
    if text is None:
        return None
    if not isinstance(text, str) or not _DURATION.match(text):
        raise RouteError(f"{where}: {text!r} is not a Gateway API duration (e.g. 10s, 500ms)")
    seconds = sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    return seconds or None


@dataclass(frozen=True)
class HeaderEdits:
    """A RequestHeaderModifier or ResponseHeaderModifier: set, add, then remove."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def apply(self, headers: Any) -> None:
        """Edit a ``CIMultiDict``-like mapping of headers (or gRPC metadata) in place."""
        for name, value in self.set:
            headers[name] = value
        for name, value in self.add:
            headers.add(name, value)
        for name in self.remove:
            headers.popall(name, None)


def _edits(spec: Any) -> HeaderEdits:
    spec = spec if isinstance(spec, dict) else {}

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        return tuple((str(h["name"]), str(h.get("value", ""))) for h in spec.get(key) or [])

    return HeaderEdits(pairs("set"), pairs("add"), tuple(str(n) for n in spec.get("remove") or []))


# -- matches -----------------------------------------------------------------------------


def _regex(value: Any, where: str) -> re.Pattern[str]:
    try:
        return re.compile(str(value))
    except re.error as exc:
        raise RouteError(f"{where}: {value!r} is not a valid regular expression: {exc}") from exc


@dataclass(frozen=True)
class ValueMatch:
    """One header or query parameter match (``Exact`` or ``RegularExpression``)."""

    name: str
    value: str
    regex: re.Pattern[str] | None = None

    def holds(self, values: Sequence[str]) -> bool:
        if self.regex is not None:
            return any(self.regex.fullmatch(v) for v in values)
        return self.value in values


def _value_matches(specs: Any, where: str, *, fold: bool) -> tuple[ValueMatch, ...]:
    found = []
    for i, spec in enumerate(specs or []):
        kind = spec.get("type", "Exact")
        name = str(spec.get("name", ""))
        name = name.lower() if fold else name
        value = str(spec.get("value", ""))
        if kind == "Exact":
            found.append(ValueMatch(name, value))
        elif kind == "RegularExpression":
            found.append(ValueMatch(name, value, _regex(value, f"{where}[{i}].value")))
        else:
            raise RouteError(f"{where}[{i}].type: {kind!r} is not supported")
    return tuple(found)


@dataclass(frozen=True)
class HttpMatch:
    """One ``HTTPRouteMatch``: every part present must hold."""

    path_type: str = "PathPrefix"
    path: str = "/"
    path_regex: re.Pattern[str] | None = None
    method: str | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()

    def holds(
        self,
        method: str,
        path: str,
        headers: Callable[[str], Sequence[str]],
        query: Callable[[str], Sequence[str]],
    ) -> bool:
        if self.method is not None and method.upper() != self.method:
            return False
        if self.path_type == "Exact":
            if path != self.path:
                return False
        elif self.path_type == "RegularExpression":
            if self.path_regex is None or not self.path_regex.fullmatch(path):
                return False
        elif self.path != "/" and path != self.path and not path.startswith(self.path + "/"):
            return False  # PathPrefix matches whole path elements: /v2 not /v2x
        return all(h.holds(headers(h.name)) for h in self.headers) and all(
            q.holds(query(q.name)) for q in self.query
        )

    def rank(self) -> tuple[int, ...]:
        """Precedence within a hostname (lower first): exact path, longest path, a method
        match, most header matches, most query matches."""
        kind = 0 if self.path_type == "Exact" else 1
        return (
            kind,
            -len(self.path),
            0 if self.method else 1,
            -len(self.headers),
            -len(self.query),
        )


def _http_match(spec: Obj, where: str) -> HttpMatch:
    path = spec.get("path") or {}
    kind = path.get("type", "PathPrefix")
    value = str(path.get("value", "/"))
    regex = None
    if kind == "PathPrefix":
        value = value.rstrip("/") or "/"
    elif kind == "RegularExpression":
        regex = _regex(value, f"{where}.path.value")
    elif kind != "Exact":
        raise RouteError(f"{where}.path.type: {kind!r} is not supported")
    method = spec.get("method")
    return HttpMatch(
        path_type=kind,
        path=value,
        path_regex=regex,
        method=str(method).upper() if method else None,
        headers=_value_matches(spec.get("headers"), f"{where}.headers", fold=True),
        query=_value_matches(spec.get("queryParams"), f"{where}.queryParams", fold=False),
    )


@dataclass(frozen=True)
class GrpcMatch:
    """One ``GRPCRouteMatch``: a service and/or method, and headers (metadata)."""

    service: str | None = None
    method: str | None = None
    regex: bool = False
    headers: tuple[ValueMatch, ...] = ()

    def holds(self, full_method: str, metadata: Callable[[str], Sequence[str]]) -> bool:
        service, _, method = full_method.lstrip("/").partition("/")
        for wanted, got in ((self.service, service), (self.method, method)):
            if wanted is None:
                continue
            if self.regex:
                if not re.fullmatch(wanted, got):
                    return False
            elif wanted != got:
                return False
        return all(h.holds(metadata(h.name)) for h in self.headers)

    def rank(self) -> tuple[int, ...]:
        return (-len(self.service or ""), -len(self.method or ""), -len(self.headers))


def _grpc_match(spec: Obj, where: str) -> GrpcMatch:
    method = spec.get("method") or {}
    kind = method.get("type", "Exact")
    if kind not in ("Exact", "RegularExpression"):
        raise RouteError(f"{where}.method.type: {kind!r} is not supported")
    service, name = method.get("service"), method.get("method")
    if kind == "RegularExpression":
        for part, value in (("service", service), ("method", name)):
            if value is not None:
                _regex(value, f"{where}.method.{part}")
    return GrpcMatch(
        service=str(service) if service else None,
        method=str(name) if name else None,
        regex=kind == "RegularExpression",
        headers=_value_matches(spec.get("headers"), f"{where}.headers", fold=True),
    )


# -- rules and backends ------------------------------------------------------------------


@dataclass(frozen=True)
class BackendRef:
    """A backendRef as written, with the CRD's defaults."""

    group: str
    kind: str
    namespace: str
    name: str
    port: int | None
    weight: int


@dataclass(frozen=True)
class Backend:
    """A backendRef resolved against the cluster: a Service port's key in
    ``services.Services.endpoints()``, or the reason it is invalid."""

    weight: int
    namespace: str
    name: str
    port: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Rule:
    """One route rule, parsed (its backends not yet resolved)."""

    index: int
    http: tuple[HttpMatch, ...] = ()
    grpc: tuple[GrpcMatch, ...] = ()
    refs: tuple[BackendRef, ...] = ()
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    timeout: float | None = None
    backend_timeout: float | None = None


@dataclass(frozen=True)
class Action:
    """What a matched rule does: its resolved backends and what it changes on the way."""

    backends: tuple[Backend, ...]
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    timeout: float | None = None
    backend_timeout: float | None = None


def _refs(rule: Obj, namespace: str, where: str) -> tuple[BackendRef, ...]:
    refs = []
    for i, ref in enumerate(rule.get("backendRefs") or []):
        if ref.get("filters"):
            raise RouteError(f"{where}.backendRefs[{i}].filters: backendRef filters unsupported")
        weight = ref.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise RouteError(f"{where}.backendRefs[{i}].weight: {weight!r} is not an integer >= 0")
        port = ref.get("port")
        refs.append(
            BackendRef(
                group=str(ref.get("group") or ""),
                kind=str(ref.get("kind") or "Service"),
                namespace=str(ref.get("namespace") or namespace),
                name=str(ref.get("name", "")),
                port=int(port) if isinstance(port, int) and not isinstance(port, bool) else None,
                weight=weight,
            )
        )
    return tuple(refs)


def _filters(rule: Obj, where: str) -> tuple[HeaderEdits | None, HeaderEdits | None]:
    request = response = None
    for i, spec in enumerate(rule.get("filters") or []):
        kind = spec.get("type")
        if kind == "RequestHeaderModifier":
            request = _edits(spec.get("requestHeaderModifier"))
        elif kind == "ResponseHeaderModifier":
            response = _edits(spec.get("responseHeaderModifier"))
        else:
            raise RouteError(
                f"{where}.filters[{i}].type: {kind} is not supported by the sandbox's gateway "
                f"(supported: {', '.join(SUPPORTED_FILTERS)})"
            )
    return request, response


def rules_of(route: Obj) -> list[Rule]:
    """The rules of an HTTPRoute or GRPCRoute; ``RouteError`` when one cannot be served."""
    kind = route.get("kind")
    namespace = str(route["metadata"].get("namespace", ""))
    parsed = []
    for index, spec in enumerate((route.get("spec") or {}).get("rules") or []):
        where = f"spec.rules[{index}]"
        request, response = _filters(spec, where)
        timeouts = spec.get("timeouts") or {}
        if kind == HTTP_ROUTE:
            matches = spec.get("matches") or [{}]
            http = tuple(_http_match(m, f"{where}.matches[{i}]") for i, m in enumerate(matches))
            grpc: tuple[GrpcMatch, ...] = ()
        else:
            http = ()
            matches = spec.get("matches") or [{}]
            grpc = tuple(_grpc_match(m, f"{where}.matches[{i}]") for i, m in enumerate(matches))
        parsed.append(
            Rule(
                index=index,
                http=http,
                grpc=grpc,
                refs=_refs(spec, namespace, where),
                request_headers=request,
                response_headers=response,
                timeout=duration(timeouts.get("request"), f"{where}.timeouts.request"),
                backend_timeout=duration(
                    timeouts.get("backendRequest"), f"{where}.timeouts.backendRequest"
                ),
            )
        )
    return parsed


def choose(backends: Sequence[Backend], rng: random.Random) -> Backend | None:
    """A backend by weight (weight 0: never); None when every weight is 0 (or none)."""
    total = sum(b.weight for b in backends)
    if total <= 0:
        return None
    point = rng.randrange(total)
    for backend in backends:
        if point < backend.weight:
            return backend
        point -= backend.weight
    return None  # unreachable: point < total

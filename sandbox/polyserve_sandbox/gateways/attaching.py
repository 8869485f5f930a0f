"""From the objects in the store to what the gateway serves and the statuses it writes.

Pure: ``plan(world, addresses, bindings)`` takes a snapshot of the cluster (our
GatewayClasses and their Gateways, the routes, Services, Namespaces and ReferenceGrants),
the address each Gateway got and how binding each (address, port) went, and returns the
tables the proxies route by and the conditions of every Gateway, listener and route parent,
as the Gateway API spec words them. No I/O, no clock: ``statuses`` adds the times.

Attachment: a route's parentRef names one of our Gateways, optionally a listener
(``sectionName``) and a ``port``; the route attaches to each such listener that is valid
(protocol HTTP, not conflicted), whose ``allowedRoutes`` admit the route's namespace
(``Same``, ``All`` or a label ``Selector``) and kind, and whose hostname intersects the
route's. An HTTPRoute and a GRPCRoute whose hostnames intersect on one listener cannot
both attach: the older route (then ``namespace/name`` order) wins, the other is
``Accepted=False``, as the GRPCRoute spec requires. Parents that are not ours (another
controller's class, a missing Gateway) get no status entry from us.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from polyserve_sandbox.apiserver import selectors
from polyserve_sandbox.gateways import conditions, listeners, routes, tables

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
RouteKey = tuple[str, str, str]  # (kind, namespace, name)
Parent = tuple[Obj, list[conditions.Condition]]  # (parentRef, conditions) of a route

CONTROLLER = "polyserve.io/sandbox-gateway-controller"


@dataclass(frozen=True)
class World:
    """What the plan is made from (every object read-only)."""

    gateways: list[Obj]
    routes: list[Obj]
    services: Mapping[Key, Obj]
    namespaces: Mapping[str, Mapping[str, str]]
    grants: list[Obj]


@dataclass
class Gateway:
    key: Key
    obj: Obj
    address: str | None
    listeners: list[listeners.Listener]
    conditions: list[conditions.Condition] = field(default_factory=list)


@dataclass
class Plan:
    gateways: dict[Key, Gateway] = field(default_factory=dict)
    #: Our entries of each route's ``status.parents``: (parentRef, conditions).
    parents: dict[RouteKey, list[Parent]] = field(default_factory=dict)
    #: What each (address, port) serves.
    tables: dict[tuple[str, int], tables.PortTable] = field(default_factory=dict)


def _key(obj: Obj) -> Key:
    return (str(obj["metadata"].get("namespace", "")), str(obj["metadata"]["name"]))


# -- routes ------------------------------------------------------------------------------


def _granted(grants: Iterable[Obj], route_kind: str, route_ns: str, ref: routes.BackendRef) -> bool:
    for grant in grants:
        if grant["metadata"].get("namespace") != ref.namespace:
            continue
        spec = grant.get("spec") or {}
        sources = any(
            f.get("group") == routes.GROUP
            and f.get("kind") == route_kind
            and f.get("namespace") == route_ns
            for f in spec.get("from") or []
        )
        targets = any(
            (t.get("group") or "") == ref.group
            and t.get("kind") == ref.kind
            and t.get("name") in (None, "", ref.name)
            for t in spec.get("to") or []
        )
        if sources and targets:
            return True
    return False


def _resolve(
    ref: routes.BackendRef, route_kind: str, route_ns: str, world: World
) -> tuple[routes.Backend, tuple[str, str] | None]:
    """A backend and, when it is invalid, (ResolvedRefs reason, message)."""

    def invalid(reason: str, message: str) -> tuple[routes.Backend, tuple[str, str]]:
        backend = routes.Backend(ref.weight, ref.namespace, ref.name, problem=message)
        return backend, (reason, message)

    if ref.group != "" or ref.kind != "Service":
        return invalid(
            "InvalidKind", f"backendRef {ref.name}: kind {ref.group}/{ref.kind} unsupported"
        )
    if ref.namespace != route_ns and not _granted(world.grants, route_kind, route_ns, ref):
        return invalid(
            "RefNotPermitted",
            f"backendRef to Service {ref.namespace}/{ref.name} is not permitted by any "
            "ReferenceGrant",
        )
    service = world.services.get((ref.namespace, ref.name))
    if service is None:
        return invalid("BackendNotFound", f"Service {ref.namespace}/{ref.name} not found")
    if ref.port is None:
        return invalid("BackendNotFound", f"backendRef to Service {ref.name} needs a port")
    for port in (service.get("spec") or {}).get("ports") or []:
        if port.get("port") == ref.port:
            name = str(port.get("name") or port["port"])
            return routes.Backend(ref.weight, ref.namespace, ref.name, port=name), None
    return invalid("BackendNotFound", f"Service {ref.namespace}/{ref.name} has no port {ref.port}")


def _allowed(listener: listeners.Listener, gateway_ns: str, route: Obj, world: World) -> bool:
    if route["kind"] not in listener.kinds:
        return False
    namespaces = (listener.spec.get("allowedRoutes") or {}).get("namespaces") or {}
    origin = namespaces.get("from", "Same")
    route_ns = str(route["metadata"].get("namespace", ""))
    if origin == "All":
        return True
    if origin == "Selector":
        selector = selectors.from_object(namespaces.get("selector") or {})
        return selectors.matches_labels(selector, world.namespaces.get(route_ns, {}))
    return route_ns == gateway_ns


def _parent_ref(ref: Obj) -> Obj:
    """A parentRef as the route's status echoes it (the CRD's defaults filled in)."""
    shown = {"group": ref.get("group", routes.GROUP), "kind": ref.get("kind", "Gateway")}
    for name in ("namespace", "name", "sectionName", "port"):
        if ref.get(name) is not None:
            shown[name] = ref[name]
    return shown


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if not a or not b:
        return True
    return any(routes.intersect(x, (y,)) is not None for x in a for y in b)


@dataclass
class _Attachment:
    route: Obj
    listener: listeners.Listener
    hostnames: tuple[str, ...]
    rules: list[tuple[routes.Rule, routes.Action]]
    rival: Obj | None = None  # the route of the other kind that keeps these hostnames


@dataclass
class _Parent:
    route: RouteKey
    ref: Obj
    accepted: conditions.Condition
    refs: conditions.Condition
    attachments: list[_Attachment]


def plan(
    world: World, addresses: Mapping[Key, str | None], bindings: Mapping[Any, str | None]
) -> Plan:
    """The whole picture (see the module docstring). ``addresses``: each Gateway's address
    (None when it has none); ``bindings``: (address, port) -> None when bound, the error
    when binding failed; absent: not tried yet."""
    result = Plan()
    for obj in world.gateways:
        key = _key(obj)
        address = addresses.get(key)
        result.gateways[key] = Gateway(key, obj, address, listeners.of(obj, address, bindings))
    parents = _attach(world, result)
    _settle_kinds([a for p in parents for a in p.attachments])
    entered: set[tuple[RouteKey, int]] = set()
    for parent in parents:
        served = [a for a in parent.attachments if a.rival is None]
        accepted = parent.accepted
        if parent.attachments and not served:
            rival = parent.attachments[0].rival or {}
            accepted = conditions.false(
                "Accepted",
                "NotAllowedByListeners",
                f"{rival.get('kind')} {'/'.join(_key(rival))} already serves these hostnames "
                "on this Gateway's listeners: an HTTPRoute and a GRPCRoute cannot share a "
                "hostname on one listener (the older route keeps it)",
            )
        for attachment in served:
            if (parent.route, id(attachment.listener)) not in entered:
                entered.add((parent.route, id(attachment.listener)))
                _enter(attachment)
        result.parents.setdefault(parent.route, []).append((parent.ref, [accepted, parent.refs]))
    for gateway in result.gateways.values():
        if gateway.address is None:
            problem = "no address could be assigned"
            gateway.conditions = [
                conditions.false("Accepted", "UnsupportedAddress", problem),
                conditions.false("Programmed", "AddressNotAssigned", problem),
            ]
        else:
            gateway.conditions = listeners.gateway_conditions(gateway.listeners, gateway.address)
        _tables(gateway, result.tables)
    return result


def _actions(
    route: Obj, world: World
) -> tuple[list[tuple[routes.Rule, routes.Action]], conditions.Condition, str | None]:
    """The route's rules with their backends resolved, its ResolvedRefs condition, and
    why it cannot be served at all (None when it can)."""
    kind = str(route["kind"])
    route_ns = _key(route)[0]
    try:
        rules = routes.rules_of(route)
    except routes.RouteError as exc:
        return [], conditions.true("ResolvedRefs", "ResolvedRefs", "Resolved"), str(exc)
    resolved: list[tuple[routes.Rule, routes.Action]] = []
    unresolved: list[tuple[str, str]] = []
    for rule in rules:
        backends = []
        for ref in rule.refs:
            backend, why = _resolve(ref, kind, route_ns, world)
            backends.append(backend)
            if why is not None:
                unresolved.append(why)
        action = routes.Action(
            tuple(backends),
            rule.request_headers,
            rule.response_headers,
            rule.timeout,
            rule.backend_timeout,
        )
        resolved.append((rule, action))
    if unresolved:
        message = "; ".join(m for _, m in unresolved)
        return resolved, conditions.false("ResolvedRefs", unresolved[0][0], message), None
    return resolved, conditions.true("ResolvedRefs", "ResolvedRefs", "Resolved all refs"), None


def _attach(world: World, result: Plan) -> list[_Parent]:
    parents: list[_Parent] = []
    for route in sorted(world.routes, key=_age):
        route_ns, name = _key(route)
        key = (str(route["kind"]), route_ns, name)
        rules, refs, problem = _actions(route, world)
        hostnames = [str(h) for h in (route.get("spec") or {}).get("hostnames") or []]
        result.parents.setdefault(key, [])
        for ref in (route.get("spec") or {}).get("parentRefs") or []:
            group, kind = ref.get("group", routes.GROUP), ref.get("kind", "Gateway")
            if group != routes.GROUP or kind != "Gateway":
                continue
            where = (str(ref.get("namespace") or route_ns), str(ref.get("name")))
            gateway = result.gateways.get(where)
            if gateway is None:
                continue  # not ours (or not there): no status from us
            if problem is not None:
                accepted = conditions.false("Accepted", "UnsupportedValue", problem)
                parents.append(_Parent(key, _parent_ref(ref), accepted, refs, []))
                continue
            accepted, found = _accept(route, ref, gateway, hostnames, world)
            attachments = [_Attachment(route, lst, eff, rules) for lst, eff in found]
            parents.append(_Parent(key, _parent_ref(ref), accepted, refs, attachments))
    return parents


def _age(obj: Obj) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (
        str(meta.get("creationTimestamp", "")),
        str(meta.get("namespace", "")),
        str(meta["name"]),
    )


def _accept(
    route: Obj, ref: Obj, gateway: Gateway, hostnames: list[str], world: World
) -> tuple[conditions.Condition, list[tuple[listeners.Listener, tuple[str, ...]]]]:
    section, port = ref.get("sectionName"), ref.get("port")
    candidates = [
        listener
        for listener in gateway.listeners
        if (section is None or listener.name == section) and (port is None or listener.port == port)
    ]
    if not candidates:
        what = f"listener {section!r}" if section else f"port {port}"
        return conditions.false("Accepted", "NoMatchingParent", f"Gateway has no {what}"), []
    allowed = [
        listener
        for listener in candidates
        if listener.usable and _allowed(listener, gateway.key[0], route, world)
    ]
    if not allowed:
        return (
            conditions.false(
                "Accepted", "NotAllowedByListeners", "no listener here admits this route"
            ),
            [],
        )
    found = []
    for listener in allowed:
        effective = routes.intersect(listener.hostname, hostnames)
        if effective is not None:
            found.append((listener, effective))
    if not found:
        return (
            conditions.false(
                "Accepted",
                "NoMatchinglisteners.ListenerHostname",
                "no listener's hostname matches the route's hostnames",
            ),
            [],
        )
    return conditions.true("Accepted", "Accepted", "Route is accepted"), found


def _settle_kinds(attachments: list[_Attachment]) -> None:
    """An HTTPRoute and a GRPCRoute may not share a hostname on one listener: the older
    route keeps it (attachments come oldest first)."""
    kept: dict[int, list[_Attachment]] = {}
    for attachment in attachments:
        others = kept.setdefault(id(attachment.listener), [])
        attachment.rival = next(
            (
                o.route
                for o in others
                if o.route["kind"] != attachment.route["kind"]
                and _overlap(o.hostnames, attachment.hostnames)
            ),
            None,
        )
        if attachment.rival is None:
            others.append(attachment)


def _enter(attachment: _Attachment) -> None:
    listener = attachment.listener
    route = attachment.route
    listener.attached += 1
    created, namespace, name = _age(route)
    for rule, action in attachment.rules:
        if route["kind"] == routes.HTTP_ROUTE:
            for i, match in enumerate(rule.http):
                order = (*match.rank(), created, namespace, name, rule.index, i)
                listener.http.append(tables.HttpEntry(attachment.hostnames, match, action, order))
        else:
            for i, grpc_match in enumerate(rule.grpc):
                order = (*grpc_match.rank(), created, namespace, name, rule.index, i)
                listener.grpc.append(tables.GrpcEntry(grpc_match, action, order))


def _tables(gateway: Gateway, served: dict[tuple[str, int], tables.PortTable]) -> None:
    if gateway.address is None:
        return
    ports: dict[int, list[listeners.Listener]] = {}
    for listener in gateway.listeners:
        if listener.usable:
            ports.setdefault(listener.port, []).append(listener)
    for port, on_port in ports.items():
        grpc = {id(e): e for lst in on_port for e in lst.grpc}.values()
        served[(gateway.address, port)] = tables.PortTable(
            listeners=tuple(
                tables.ListenerTable(
                    name=listener.name,
                    hostname=listener.hostname,
                    http=tuple(sorted(listener.http, key=lambda e: e.order)),
                    grpc=tuple(sorted(listener.grpc, key=lambda e: e.order)),
                )
                for listener in on_port
            ),
            grpc=tuple(sorted(grpc, key=lambda e: e.order)),
        )

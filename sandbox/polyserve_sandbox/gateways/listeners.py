"""The listeners of one Gateway: valid or not, and why, in the Gateway API's words.

Pure. A listener is served when its protocol is HTTP (which here serves HTTP/1.1 and gRPC
over h2c on one port), it conflicts with no other listener of its Gateway on the same port
(another protocol: ``ProtocolConflict``; the same hostname: ``HostnameConflict``) and its
port could be bound (else ``PortUnavailable``). ``allowedRoutes.kinds`` may only name
HTTPRoute and GRPCRoute; others are left out of ``supportedKinds`` with
``ResolvedRefs=False`` (``InvalidRouteKinds``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from polyserve_sandbox.gateways import conditions, routes, tables

Obj = dict[str, Any]

SUPPORTED_PROTOCOLS = ("HTTP",)


@dataclass
class Listener:
    """One listener of one of our Gateways, and its status."""

    name: str
    port: int
    protocol: str
    hostname: str | None
    spec: Obj
    kinds: list[str] = field(default_factory=list)
    conditions: list[conditions.Condition] = field(default_factory=list)
    attached: int = 0
    usable: bool = True  # accepted, so routes may attach and its port is served
    http: list[tables.HttpEntry] = field(default_factory=list)
    grpc: list[tables.GrpcEntry] = field(default_factory=list)


# -- listeners ---------------------------------------------------------------------------


def _kinds(spec: Obj) -> tuple[list[str], conditions.Condition]:
    wanted = ((spec.get("allowedRoutes") or {}).get("kinds")) or []
    if not wanted:
        return list(routes.ROUTE_KINDS), conditions.true("ResolvedRefs", "ResolvedRefs", "Resolved")
    kinds, invalid = [], []
    for kind in wanted:
        group = kind.get("group", routes.GROUP)
        if group == routes.GROUP and kind.get("kind") in routes.ROUTE_KINDS:
            kinds.append(str(kind["kind"]))
        else:
            invalid.append(f"{group or 'core'}/{kind.get('kind')}")
    if invalid:
        message = f"route kinds not supported here: {', '.join(invalid)}"
        return kinds, conditions.false("ResolvedRefs", "InvalidRouteKinds", message)
    return kinds, conditions.true("ResolvedRefs", "ResolvedRefs", "Resolved")


def of(gateway: Obj, address: str | None, bindings: Mapping[Any, str | None]) -> list[Listener]:
    found = []
    for spec in (gateway.get("spec") or {}).get("listeners") or []:
        hostname = spec.get("hostname") or None
        found.append(
            Listener(
                name=str(spec.get("name", "")),
                port=int(spec.get("port", 0)),
                protocol=str(spec.get("protocol", "")),
                hostname=str(hostname) if hostname else None,
                spec=spec,
            )
        )
    for listener in found:
        same_port = [o for o in found if o is not listener and o.port == listener.port]
        conflict: conditions.Condition | None = None
        if any(o.protocol != listener.protocol for o in same_port):
            conflict = conditions.true(
                "Conflicted",
                "ProtocolConflict",
                f"another listener on port {listener.port} uses another protocol",
            )
        elif any(o.hostname == listener.hostname for o in same_port):
            conflict = conditions.true(
                "Conflicted",
                "HostnameConflict",
                f"another listener on port {listener.port} uses the same hostname",
            )
        listener.kinds, refs = _kinds(listener.spec)
        accepted = conditions.true("Accepted", "Accepted", "Listener accepted")
        if listener.protocol not in SUPPORTED_PROTOCOLS:
            listener.kinds = []
            accepted = conditions.false(
                "Accepted",
                "UnsupportedProtocol",
                f"protocol {listener.protocol} is not supported by the sandbox's gateway "
                "(supported: HTTP, which serves HTTP/1.1 and gRPC over h2c)",
            )
        elif conflict is not None:
            accepted = conditions.false("Accepted", conflict[2], conflict[3])
        elif address is not None and bindings.get((address, listener.port)):
            accepted = conditions.false(
                "Accepted", "PortUnavailable", str(bindings[(address, listener.port)])
            )
        listener.usable = accepted[1] == "True"
        if not listener.usable:
            programmed = conditions.false("Programmed", "Invalid", accepted[3])
        elif address is None or (address, listener.port) not in bindings:
            programmed = conditions.false("Programmed", "Pending", "waiting for its port")
        else:
            programmed = conditions.true(
                "Programmed", "Programmed", f"listening on {address}:{listener.port}"
            )
        listener.conditions = [
            accepted,
            programmed,
            refs,
            conflict or conditions.false("Conflicted", "NoConflicts", "No conflicts"),
        ]
    return found


def gateway_conditions(listeners: list[Listener], address: str) -> list[conditions.Condition]:
    """A Gateway's own Accepted and Programmed, from its listeners'."""
    valid = [listener for listener in listeners if listener.usable]
    if len(valid) == len(listeners):
        accepted = conditions.true("Accepted", "Accepted", "Gateway accepted")
    elif valid:
        accepted = conditions.true("Accepted", "ListenersNotValid", "some listeners are not valid")
    else:
        accepted = conditions.false("Accepted", "ListenersNotValid", "no listener is valid")
    bound = [listener for listener in valid if conditions.holds(listener.conditions, "Programmed")]
    if not valid:
        programmed = conditions.false("Programmed", "Invalid", "no listener is valid")
    elif len(bound) < len(valid):
        programmed = conditions.false("Programmed", "Pending", "waiting for the listeners' ports")
    else:
        programmed = conditions.true("Programmed", "Programmed", f"Address assigned: {address}")
    return [accepted, programmed]

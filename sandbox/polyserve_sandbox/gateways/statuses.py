"""The status bodies of GatewayClasses, Gateways and routes, as the controllers write them.

Pure: the plan's conditions, stamped (``conditions.stamped``), in the shapes the Gateway API
gives each status. As the spec asks, route parents other controllers wrote are kept.
"""

from __future__ import annotations

from typing import Any

from polyserve_sandbox.gateways import attaching, conditions, routes

Obj = dict[str, Any]


def _generation(obj: Obj) -> int:
    return int(obj["metadata"].get("generation") or 1)


def gateway_class(obj: Obj, now: str) -> Obj:
    accepted = ("Accepted", "True", "Accepted", "handled by the polyserve sandbox's gateway")
    previous = (obj.get("status") or {}).get("conditions")
    return {"conditions": conditions.stamped([accepted], previous, _generation(obj), now)}


def gateway(plan: attaching.Gateway, now: str) -> Obj:
    obj = plan.obj
    status = obj.get("status") or {}
    generation = _generation(obj)
    before = {ls.get("name"): ls for ls in status.get("listeners") or []}
    return {
        "addresses": [{"type": "IPAddress", "value": plan.address}] if plan.address else [],
        "conditions": conditions.stamped(
            plan.conditions, status.get("conditions"), generation, now
        ),
        "listeners": [
            {
                "name": listener.name,
                "supportedKinds": [{"group": routes.GROUP, "kind": k} for k in listener.kinds],
                "attachedRoutes": listener.attached,
                "conditions": conditions.stamped(
                    listener.conditions,
                    (before.get(listener.name) or {}).get("conditions"),
                    generation,
                    now,
                ),
            }
            for listener in plan.listeners
        ],
    }


def route(obj: Obj, ours: list[tuple[Obj, list[conditions.Condition]]], now: str) -> Obj:
    """``status`` of a route: other controllers' parents kept, ours replaced."""
    parents = [
        p
        for p in (obj.get("status") or {}).get("parents") or []
        if p.get("controllerName") != attaching.CONTROLLER
    ]
    before = {
        _ref_key(p.get("parentRef") or {}): p
        for p in (obj.get("status") or {}).get("parents") or []
        if p.get("controllerName") == attaching.CONTROLLER
    }
    for ref, wanted in ours:
        previous = (before.get(_ref_key(ref)) or {}).get("conditions")
        parents.append(
            {
                "parentRef": ref,
                "controllerName": attaching.CONTROLLER,
                "conditions": conditions.stamped(wanted, previous, _generation(obj), now),
            }
        )
    return {"parents": parents}


def _ref_key(ref: Obj) -> tuple[Any, ...]:
    return tuple(ref.get(k) for k in ("group", "kind", "namespace", "name", "sectionName", "port"))

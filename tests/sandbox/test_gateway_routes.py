"""The gateway's pure parts: matching, precedence, hostnames, weights and attachment rules,
as the Gateway API spec states them (no sockets here; test_gateway.py runs the traffic)."""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest

from polyserve_sandbox.gateways import attaching, routes

Obj = dict[str, Any]
GW = "gateway.networking.k8s.io/v1"


def _route(
    name: str,
    rules: list[Obj],
    *,
    kind: str = "HTTPRoute",
    created: str = "2026-01-01T00:00:00Z",
    **spec: Any,
) -> Obj:
    return {
        "apiVersion": GW,
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": rules, **spec},
    }


def _gateway(*listeners: Obj) -> Obj:
    return {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "ns", "generation": 1},
        "spec": {"gatewayClassName": "polyserve-sandbox", "listeners": list(listeners)},
    }


def _service(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"ports": [{"name": "http", "port": 8000}]},
    }


def _plan(gateway: Obj, *objects: Obj, bound: bool = True) -> attaching.Plan:
    world = attaching.World(
        gateways=[gateway],
        routes=list(objects),
        services={("ns", s): _service(s) for s in ("a", "b", "c")},
        namespaces={"ns": {}},
        grants=[],
    )
    ports = (
        {("127.0.0.9", ls["port"]): None for ls in gateway["spec"]["listeners"]} if bound else {}
    )
    return attaching.plan(world, {("ns", "gw"): "127.0.0.9"}, ports)


def _to(service: str) -> list[Obj]:
    return [{"name": service, "port": 8000}]


def _served_by(
    plan: attaching.Plan,
    path: str,
    *,
    host: str = "x",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> str | None:
    table = plan.tables[("127.0.0.9", 80)]
    given = {k.lower(): [v] for k, v in (headers or {}).items()}
    action = table.http_action(host, method, path, lambda k: given.get(k, []), lambda k: [])
    return action.backends[0].name if action else None


HTTP = {"name": "web", "protocol": "HTTP", "port": 80}


def test_a_path_prefix_matches_whole_path_elements_only() -> None:
    plan = _plan(
        _gateway(HTTP),
        _route("r", [{"matches": [{"path": {"value": "/v2/models/"}}], "backendRefs": _to("a")}]),
    )
    assert _served_by(plan, "/v2/models") == "a"
    assert _served_by(plan, "/v2/models/x/infer") == "a"
    assert _served_by(plan, "/v2/modelsx") is None, "a prefix is whole path elements"
    assert _served_by(plan, "/") is None, "no rule matches: 404"


def test_the_most_specific_match_wins_whatever_the_rule_order() -> None:
    rules = [
        {"backendRefs": _to("a")},  # PathPrefix / (the default match)
        {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "backendRefs": _to("b")},
        {
            "matches": [{"path": {"type": "Exact", "value": "/v2/health/ready"}}],
            "backendRefs": _to("c"),
        },
        {
            "matches": [
                {"path": {"value": "/v2"}, "headers": [{"name": "X-Canary", "value": "yes"}]}
            ],
            "backendRefs": _to("c"),
        },
    ]
    plan = _plan(_gateway(HTTP), _route("r", rules))
    assert _served_by(plan, "/metrics") == "a"
    assert _served_by(plan, "/v2/models/m") == "b", "the longest prefix"
    assert _served_by(plan, "/v2/health/ready") == "c", "an exact path before any prefix"
    assert _served_by(plan, "/v2/models/m", headers={"x-canary": "yes"}) == "c", (
        "more header matches"
    )


def test_ties_go_to_the_oldest_route_then_to_namespace_and_name() -> None:
    older = _route("z-old", [{"backendRefs": _to("a")}], created="2026-01-01T00:00:00Z")
    newer = _route("a-new", [{"backendRefs": _to("b")}], created="2026-01-02T00:00:00Z")
    assert _served_by(_plan(_gateway(HTTP), newer, older), "/") == "a"
    twin = _route("a-twin", [{"backendRefs": _to("c")}], created="2026-01-01T00:00:00Z")
    assert _served_by(_plan(_gateway(HTTP), older, twin), "/") == "c"


def test_route_hostnames_narrow_to_the_listeners_and_the_most_specific_host_wins() -> None:
    assert routes.intersect("*.example.com", ["a.example.com", "b.example.net"]) == (
        "a.example.com",
    )
    assert routes.intersect("a.example.com", ["*.example.com"]) == ("a.example.com",)
    assert routes.intersect("*.example.com", ["*.a.example.com"]) == ("*.a.example.com",)
    assert routes.intersect(None, []) == ()
    assert routes.intersect("a.example.com", ["b.example.com"]) is None
    assert routes.host_matches("*.example.com", "a.b.example.com")
    assert not routes.host_matches("*.example.com", "example.com")
    wild = _route("wild", [{"backendRefs": _to("a")}], hostnames=["*.example.com"])
    exact = _route("exact", [{"backendRefs": _to("b")}], hostnames=["api.example.com"])
    plan = _plan(_gateway(HTTP), wild, exact)
    assert _served_by(plan, "/", host="api.example.com") == "b"
    assert _served_by(plan, "/", host="web.example.com") == "a"
    assert _served_by(plan, "/", host="example.org") is None


def test_weights_draw_in_proportion_and_weight_zero_never() -> None:
    backends = [routes.Backend(w, "ns", n, port="http") for n, w in (("a", 3), ("b", 1), ("c", 0))]
    rng = random.Random(7)
    counts = collections.Counter(b.name for _ in range(4000) if (b := routes.choose(backends, rng)))
    assert counts["c"] == 0
    assert abs(counts["b"] - 1000) < 5 * (4000 * 0.25 * 0.75) ** 0.5
    assert routes.choose([routes.Backend(0, "ns", "a")], rng) is None


def test_an_unsupported_filter_refuses_the_route_instead_of_skipping_it() -> None:
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "b", "port": 8000}}}
    plan = _plan(_gateway(HTTP), _route("r", [{"filters": [mirror], "backendRefs": _to("a")}]))
    ((ref, conditions),) = plan.parents[("HTTPRoute", "ns", "r")]
    assert conditions[0][:3] == ("Accepted", "False", "UnsupportedValue")
    assert "RequestMirror" in conditions[0][3]
    assert ref == {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}


@pytest.mark.parametrize(
    ("listeners", "reason"),
    [
        ([HTTP, {**HTTP, "name": "again"}], "HostnameConflict"),
        ([HTTP, {"name": "tls", "protocol": "HTTPS", "port": 80}], "ProtocolConflict"),
        ([{"name": "tls", "protocol": "TLS", "port": 443}], "UnsupportedProtocol"),
    ],
)
def test_invalid_listeners_say_why_and_take_no_routes(listeners: list[Obj], reason: str) -> None:
    plan = _plan(_gateway(*listeners), _route("r", [{"backendRefs": _to("a")}]))
    gateway = plan.gateways[("ns", "gw")]
    first = gateway.listeners[0]
    assert first.conditions[0][:3] == ("Accepted", "False", reason)
    assert first.attached == 0
    assert gateway.conditions[0][:3] == ("Accepted", "False", "ListenersNotValid")
    ((_, conditions),) = plan.parents[("HTTPRoute", "ns", "r")]
    assert conditions[0][:3] == ("Accepted", "False", "NotAllowedByListeners")


def test_a_listener_not_yet_bound_is_pending_and_one_that_cannot_bind_is_refused() -> None:
    pending = _plan(_gateway(HTTP), bound=False).gateways[("ns", "gw")]
    assert pending.listeners[0].conditions[1][:3] == ("Programmed", "False", "Pending")
    assert pending.conditions[1][:3] == ("Programmed", "False", "Pending")
    world = attaching.World([_gateway(HTTP)], [], {}, {}, [])
    busy = attaching.plan(world, {("ns", "gw"): "127.0.0.9"}, {("127.0.0.9", 80): "in use"})
    listener = busy.gateways[("ns", "gw")].listeners[0]
    assert listener.conditions[0][:3] == ("Accepted", "False", "PortUnavailable")


def test_grpc_methods_match_by_service_and_method_with_the_longest_first() -> None:
    rules = [
        {"backendRefs": _to("a")},
        {
            "matches": [{"method": {"service": "inference.GRPCInferenceService"}}],
            "backendRefs": _to("b"),
        },
        {
            "matches": [
                {"method": {"service": "inference.GRPCInferenceService", "method": "ModelInfer"}}
            ],
            "backendRefs": _to("c"),
        },
    ]
    table = _plan(_gateway(HTTP), _route("g", rules, kind="GRPCRoute")).tables[("127.0.0.9", 80)]

    def served(method: str) -> str | None:
        action = table.grpc_action(method, lambda k: [])
        return action.backends[0].name if action else None

    assert served("/inference.GRPCInferenceService/ModelInfer") == "c"
    assert served("/inference.GRPCInferenceService/ServerLive") == "b"
    assert served("/grpc.health.v1.Health/Check") == "a"

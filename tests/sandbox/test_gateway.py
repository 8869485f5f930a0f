"""The sandbox's Gateway API: real workers behind two Services, real clients in front.

Two polyserve workers run in this process on loopback addresses of their own, serving the
``scale`` model with factor 1 (stable) and 2 (canary), so every answer says which backend
served it. Their pods are marked Ready as a kubelet would (the kubelet is tested on its own);
the Services controller and the gateway controller run on the real store. Clients are the
standard library's ``http.client`` (one keep-alive connection, checked) and tritonclient's
gRPC client (one channel), on threads of their own so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import http.client
import io
import json
import random
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from polyserve_sandbox import cli as sandbox_cli
from polyserve_sandbox import defaults, services
from polyserve_sandbox.apiserver import store as apistore
from polyserve_sandbox.gateways import controller as gateway_controller
from polyserve_worker import server
from polyserve_worker.settings import WorkerSettings
from tests.sandbox import gateway_schemas
from tests.sandbox.apiserver_support import kubectl
from tests.worker import models

Obj = dict[str, Any]
NS = "gw"
GW = "gateway.networking.k8s.io/v1"
# 1,000 draws at p = 0.1: the canary's count is within 5 standard deviations of 100 unless
# something other than chance is at work (a false failure about once in 1.7 million runs).
DRAWS = 1000
TOLERANCE = 5 * (DRAWS * 0.1 * 0.9) ** 0.5
BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
)


async def until(what: str, probe: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(obj: Obj, kind: str) -> Obj:
    return next(c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind)


@dataclass
class Bed:
    """The store, its Services and Gateways controllers, and the backends' workers."""

    store: apistore.Store
    services: services.Services
    gateways: gateway_controller.Gateways
    octet: int
    workers: list[server.Worker] = field(default_factory=list)

    async def backend(
        self, tmp: Path, name: str, factor: float, index: int, service: str | None = None
    ) -> server.Worker:
        """A worker serving ``scale`` (x factor) as pod ``name``, behind Service ``service``
        (``name`` unless given; created when it does not exist)."""
        service = service or name
        ip = f"127.{self.octet}.0.{index}"
        models.scale_versions(tmp / name, {1: factor})
        settings = WorkerSettings(
            model_repository=tmp / name,
            host=ip,
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            exit_timeout_secs=5,
            exit_idle_secs=0.05,
        )
        worker = server.Worker(settings)
        await worker.start()
        self.workers.append(worker)
        ports = [
            {"name": "http", "containerPort": worker.http_port},
            {"name": "grpc", "containerPort": worker.grpc_port},
        ]
        self.store.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": {"rev": service}},
                "spec": {"containers": [{"name": "worker", "image": "w", "ports": ports}]},
            }
        )
        self.store.patch(
            "v1",
            "Pod",
            NS,
            name,
            {
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": _stamp()}
                    ],
                }
            },
            patch_type="merge",
            subresource="status",
        )
        if self.store.try_get("v1", "Service", NS, service) is not None:
            return worker
        self.store.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": service, "namespace": NS},
                "spec": {
                    "selector": {"rev": service},
                    "ports": [
                        {"name": "http", "port": 8000, "targetPort": "http"},
                        {"name": "grpc", "port": 8001, "targetPort": "grpc"},
                    ],
                },
            }
        )
        await until(f"{name}'s endpoints", lambda: self.services.endpoints(NS, name).get("http"))
        return worker

    def ready(self, pod: str, ready: bool) -> None:
        stamp = {"type": "Ready", "status": str(ready), "lastTransitionTime": _stamp()}
        self.store.patch(
            "v1",
            "Pod",
            NS,
            pod,
            {"status": {"conditions": [stamp]}},
            patch_type="merge",
            subresource="status",
        )

    def endpoint_pods(self, service: str) -> set[str]:
        return {e.pod for e in self.services.endpoints(NS, service).get("http", [])}

    def apply(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        current = self.store.try_get(
            obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]
        )
        if current is None:
            return self.store.create(obj)
        return self.store.patch(
            obj["apiVersion"],
            obj["kind"],
            meta.get("namespace"),
            meta["name"],
            obj,
            patch_type="merge",
        )

    def get(self, kind: str, name: str, namespace: str | None = NS) -> Obj:
        return self.store.get(GW, kind, namespace, name)

    async def programmed(self, name: str = "gw") -> str:
        """The address of a Gateway once it is Programmed."""
        await until(
            f"Gateway {name} Programmed",
            lambda: (
                (self.get("Gateway", name).get("status") or {}).get("conditions")
                and condition(self.get("Gateway", name), "Programmed")["status"] == "True"
            ),
        )
        address: str = self.get("Gateway", name)["status"]["addresses"][0]["value"]
        return address


@pytest.fixture
async def bed(tmp_path: Path) -> AsyncIterator[Bed]:
    store = apistore.Store()
    defaults.register(store)
    for name in (NS, "elsewhere"):
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    octet = random.randint(100, 250)
    svc = services.Services(store, f"127.{octet}.128.0/24")
    store.add_admission("v1", "Service", svc.admit)
    svc.start()
    gateways = gateway_controller.Gateways(store, svc, f"127.{octet}.192.0/24")
    gateways.start()
    bed = Bed(store, svc, gateways, octet)
    try:
        yield bed
    finally:
        await gateways.stop()
        await svc.stop()
        for worker in bed.workers:
            await worker.stop()


async def canary_bed(bed: Bed, tmp_path: Path) -> None:
    await bed.backend(tmp_path, "stable", 1.0, 1)
    await bed.backend(tmp_path, "canary", 2.0, 2)


def gateway(name: str = "gw", **listeners: int) -> Obj:
    return {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "gatewayClassName": "polyserve-sandbox",
            "listeners": [
                {"name": listener, "protocol": "HTTP", "port": port}
                for listener, port in (listeners or {"web": 80, "grpc": 81}).items()
            ],
        },
    }


def route(
    kind: str,
    weights: dict[str, int],
    *,
    name: str = "m",
    section: str | None = None,
    port: int | None = None,
    namespace: str = NS,
    **spec: Any,
) -> Obj:
    parent: Obj = {"name": "gw"}
    if section:
        parent["sectionName"] = section
    if namespace != NS:
        parent["namespace"] = NS
    backend_port = port or (8000 if kind == "HTTPRoute" else 8001)
    return {
        "apiVersion": GW,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "backendRefs": [
                        {"name": svc, "namespace": NS, "port": backend_port, "weight": w}
                        if namespace != NS
                        else {"name": svc, "port": backend_port, "weight": w}
                        for svc, w in weights.items()
                    ]
                }
            ],
            **spec,
        },
    }


GRANT: Obj = {
    "apiVersion": "gateway.networking.k8s.io/v1beta1",
    "kind": "ReferenceGrant",
    "metadata": {"name": "routes-from-elsewhere", "namespace": NS},
    "spec": {
        "from": [
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "elsewhere"}
        ],
        "to": [{"group": "", "kind": "Service"}],
    },
}


def test_the_objects_these_tests_build_are_valid_gateway_api_v1() -> None:
    gateway_schemas.validate(
        gateway(),
        gateway(web=80),
        route("HTTPRoute", {"stable": 90, "canary": 10}, section="web"),
        route("GRPCRoute", {"stable": 0, "canary": 100}, name="g", section="grpc"),
        route("HTTPRoute", {"canary": 1}, section="web", namespace="elsewhere"),
        route("HTTPRoute", {"stable": 1}, hostnames=["rest.example.com"]),
        route("GRPCRoute", {"canary": 1}, name="z-late", hostnames=["*.example.com"]),
        GRANT,
    )


def test_the_schema_helper_names_the_field_an_invalid_route_gets_wrong() -> None:
    broken = route("HTTPRoute", {"stable": -1})
    (error,) = gateway_schemas.errors(broken)
    assert error is not None and "weight" in error, error


# -- clients (blocking: run on threads) --------------------------------------------------


class RestClient:
    """One keep-alive HTTP/1.1 connection; it must stay the same socket throughout."""

    def __init__(self, address: str, port: int) -> None:
        self.connection = http.client.HTTPConnection(address, port, timeout=30)
        self.socket: Any = None

    def infer(self) -> tuple[int, float | None]:
        self.connection.request(
            "POST",
            "/v2/models/scale/infer",
            body=BODY,
            headers={"Content-Type": "application/json"},
        )
        answer = self.connection.getresponse()
        body = answer.read()
        if self.socket is None:
            self.socket = self.connection.sock
        assert self.connection.sock is self.socket, "the keep-alive connection was replaced"
        if answer.status != 200:
            return answer.status, None
        return 200, float(json.loads(body)["outputs"][0]["data"][0])

    def close(self) -> None:
        self.connection.close()


class GrpcClient:
    """tritonclient's gRPC client: one channel for every call."""

    def __init__(self, address: str, port: int) -> None:
        self.client = grpcclient.InferenceServerClient(f"{address}:{port}")

    def infer(self) -> tuple[str, float | None]:
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        try:
            result = self.client.infer("scale", [tensor], client_timeout=30)
        except InferenceServerException as exc:
            return str(exc.status()), None
        output = result.as_numpy("OUTPUT0")
        assert output is not None
        return "OK", float(output[0][0])

    def close(self) -> None:
        self.client.close()


def tally(call: Callable[[], tuple[Any, float | None]], count: int) -> collections.Counter[Any]:
    return collections.Counter(call()[1] for _ in range(count))


# -- splitting ---------------------------------------------------------------------------


async def test_an_httproute_splits_requests_on_one_keep_alive_connection_by_weight(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    objects = [gateway(), route("HTTPRoute", {"stable": 90, "canary": 10}, section="web")]
    for obj in objects:
        bed.apply(obj)
    address = await bed.programmed()
    client = RestClient(address, 80)
    try:
        counts = await asyncio.to_thread(tally, client.infer, DRAWS)
    finally:
        client.close()
    assert set(counts) == {1.0, 2.0}, counts
    assert abs(counts[2.0] - DRAWS * 0.1) <= TOLERANCE, counts


async def test_a_grpcroute_splits_calls_on_one_channel_by_weight(bed: Bed, tmp_path: Path) -> None:
    await canary_bed(bed, tmp_path)
    objects = [gateway(), route("GRPCRoute", {"stable": 90, "canary": 10}, section="grpc")]
    for obj in objects:
        bed.apply(obj)
    address = await bed.programmed()
    client = GrpcClient(address, 81)
    try:
        counts = await asyncio.to_thread(tally, client.infer, DRAWS)
    finally:
        client.close()
    assert set(counts) == {1.0, 2.0}, counts
    assert abs(counts[2.0] - DRAWS * 0.1) <= TOLERANCE, counts


async def test_weight_zero_never_gets_a_request_and_a_hundred_gets_them_all(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"stable": 0, "canary": 100}, section="web"))
    bed.apply(route("GRPCRoute", {"stable": 100, "canary": 0}, name="g", section="grpc"))
    address = await bed.programmed()
    rest, grpc = RestClient(address, 80), GrpcClient(address, 81)
    try:
        assert await asyncio.to_thread(tally, rest.infer, 200) == {2.0: 200}
        assert await asyncio.to_thread(tally, grpc.infer, 200) == {1.0: 200}
        bed.apply(route("HTTPRoute", {"stable": 0, "canary": 0}, section="web"))
        assert await asyncio.to_thread(rest.infer) == (500, None), "no weight above 0: 500"
    finally:
        rest.close()
        grpc.close()


async def test_moving_weights_under_load_drops_no_request_and_counts_from_the_next_one(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"stable": 90, "canary": 10}, section="web"))
    bed.apply(route("GRPCRoute", {"stable": 90, "canary": 10}, name="g", section="grpc"))
    address = await bed.programmed()
    rest, grpc = RestClient(address, 80), GrpcClient(address, 81)
    stop = threading.Event()
    answers: dict[str, list[tuple[Any, float | None]]] = {"rest": [], "grpc": []}

    def load(kind: str, call: Callable[[], tuple[Any, float | None]]) -> None:
        while not stop.is_set():
            answers[kind].append(call())

    loads = [
        asyncio.create_task(asyncio.to_thread(load, "rest", rest.infer)),
        asyncio.create_task(asyncio.to_thread(load, "grpc", grpc.infer)),
    ]
    try:
        marks = {}
        for step, (stable, canary) in enumerate([(50, 50), (10, 90), (0, 100)]):
            seen = {k: len(v) for k, v in answers.items()}
            await until("traffic", lambda s=seen: all(len(answers[k]) > s[k] + 50 for k in s))
            bed.apply(route("HTTPRoute", {"stable": stable, "canary": canary}, section="web"))
            bed.apply(
                route("GRPCRoute", {"stable": stable, "canary": canary}, name="g", section="grpc")
            )
            marks[step] = {k: len(v) for k, v in answers.items()}
        await until("traffic", lambda: all(len(answers[k]) > marks[2][k] + 100 for k in answers))
    finally:
        stop.set()
        await asyncio.gather(*loads)
        rest.close()
        grpc.close()
    assert {a[0] for a in answers["rest"]} == {200}, "every HTTP request answered"
    assert {a[0] for a in answers["grpc"]} == {"OK"}, "every gRPC call answered"
    for kind, seen in answers.items():
        # The one request in flight when the weights moved may go either way; every later
        # one follows the new weights (0/100: the canary only).
        after = [value for _, value in seen[marks[2][kind] + 1 :]]
        assert set(after) == {2.0}, (kind, collections.Counter(after))


async def test_pods_joining_and_leaving_a_backend_under_load_drop_no_request(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"stable": 0, "canary": 100}, section="web"))
    bed.apply(route("GRPCRoute", {"stable": 0, "canary": 100}, name="g", section="grpc"))
    address = await bed.programmed()
    rest, grpc = RestClient(address, 80), GrpcClient(address, 81)
    stop = threading.Event()
    answers: dict[str, list[tuple[Any, float | None]]] = {"rest": [], "grpc": []}

    def load(kind: str, call: Callable[[], tuple[Any, float | None]]) -> None:
        while not stop.is_set():
            answers[kind].append(call())

    async def traffic(more: int) -> None:
        seen = {k: len(v) for k, v in answers.items()}
        await until("traffic", lambda: all(len(answers[k]) >= seen[k] + more for k in seen))

    loads = [
        asyncio.create_task(asyncio.to_thread(load, "rest", rest.infer)),
        asyncio.create_task(asyncio.to_thread(load, "grpc", grpc.infer)),
    ]
    try:
        await traffic(30)
        await bed.backend(tmp_path, "canary-b", 3.0, 3, service="canary")
        await until(
            "two canary pods", lambda: bed.endpoint_pods("canary") == {"canary", "canary-b"}
        )
        await traffic(60)
        bed.ready("canary", False)  # it leaves the Service, then its process goes
        await until("one canary pod", lambda: bed.endpoint_pods("canary") == {"canary-b"})
        marks = {k: len(v) for k, v in answers.items()}
        first = bed.workers[1]
        await first.stop()
        bed.workers.remove(first)
        await traffic(60)
    finally:
        stop.set()
        await asyncio.gather(*loads)
        rest.close()
        grpc.close()
    assert {a[0] for a in answers["rest"]} == {200}, collections.Counter(answers["rest"])
    assert {a[0] for a in answers["grpc"]} == {"OK"}, collections.Counter(answers["grpc"])
    for kind, seen in answers.items():
        assert 3.0 in {v for _, v in seen}, f"{kind}: the new pod got traffic"
        after = {v for _, v in seen[marks[kind] + 1 :]}
        assert after == {3.0}, f"{kind}: only the remaining pod after the other left"


# -- what routes and Gateways say --------------------------------------------------------


async def test_a_missing_backend_answers_500_for_its_share_and_the_route_says_why(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"stable": 50, "missing": 50}, section="web"))
    bed.apply(route("GRPCRoute", {"missing": 1}, name="g", section="grpc"))
    address = await bed.programmed()
    parents = bed.get("HTTPRoute", "m")["status"]["parents"]
    resolved = next(c for c in parents[0]["conditions"] if c["type"] == "ResolvedRefs")
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    assert "gw/missing" in resolved["message"]
    accepted = next(c for c in parents[0]["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "True", "an invalid backend does not unaccept the route"
    rest, grpc = RestClient(address, 80), GrpcClient(address, 81)
    try:
        statuses = collections.Counter(
            [(await asyncio.to_thread(rest.infer))[0] for _ in range(400)]
        )
        assert set(statuses) == {200, 500}, statuses
        assert abs(statuses[500] - 200) <= 5 * (400 * 0.25) ** 0.5, statuses
        assert await asyncio.to_thread(grpc.infer) == ("StatusCode.UNAVAILABLE", None)
    finally:
        rest.close()
        grpc.close()


async def test_a_backend_service_created_after_its_route_resolves_the_route(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"later": 1}, section="web"))
    await bed.programmed()

    def resolved() -> Obj:
        parents = (bed.get("HTTPRoute", "m").get("status") or {}).get("parents") or [{}]
        return next(c for c in parents[0].get("conditions") or [] if c["type"] == "ResolvedRefs")

    assert resolved()["reason"] == "BackendNotFound"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "later", "namespace": NS},
        "spec": {"selector": {"rev": "later"}, "ports": [{"name": "http", "port": 8000}]},
    }
    bed.store.create(service)
    await until("the route resolved", lambda: resolved()["status"] == "True")


async def test_gateway_listener_and_route_statuses_are_written_as_the_spec_words_them(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"stable": 1}, section="web"))
    bed.apply(route("HTTPRoute", {"stable": 1}, name="nowhere", section="nope"))
    bed.apply(route("HTTPRoute", {"stable": 1}, name="foreign", namespace="elsewhere"))
    address = await bed.programmed()
    gw = bed.get("Gateway", "gw")
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": address}]
    assert address.startswith(f"127.{bed.octet}.192."), "from the Gateway block"
    assert condition(gw, "Accepted")["reason"] == "Accepted"
    web = next(ls for ls in gw["status"]["listeners"] if ls["name"] == "web")
    assert web["attachedRoutes"] == 1
    assert {k["kind"] for k in web["supportedKinds"]} == {"HTTPRoute", "GRPCRoute"}
    assert {c["type"]: c["status"] for c in web["conditions"]} == {
        "Accepted": "True",
        "Programmed": "True",
        "ResolvedRefs": "True",
        "Conflicted": "False",
    }
    assert all(c["observedGeneration"] == 1 for c in web["conditions"])

    def accepted(name: str, namespace: str = NS) -> tuple[str, str]:
        found = condition(
            {
                "status": {
                    "conditions": bed.get("HTTPRoute", name, namespace)["status"]["parents"][0][
                        "conditions"
                    ]
                }
            },
            "Accepted",
        )
        return found["status"], found["reason"]

    assert accepted("m") == ("True", "Accepted")
    assert accepted("nowhere") == ("False", "NoMatchingParent")
    assert accepted("foreign", "elsewhere") == ("False", "NotAllowedByListeners")
    parent = bed.get("HTTPRoute", "m")["status"]["parents"][0]
    assert parent["controllerName"] == "polyserve.io/sandbox-gateway-controller"
    assert parent["parentRef"] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": "gw",
        "sectionName": "web",
    }
    cls = bed.get("GatewayClass", "polyserve-sandbox", None)
    assert condition(cls, "Accepted")["status"] == "True"
    # A write that changes nothing keeps the statuses as they are (no churn of versions).
    version = bed.get("HTTPRoute", "m")["metadata"]["resourceVersion"]
    bed.apply(route("HTTPRoute", {"stable": 1}, section="web"))
    await asyncio.sleep(0.1)
    assert bed.get("HTTPRoute", "m")["metadata"]["resourceVersion"] == version


async def test_the_statuses_the_controller_writes_fit_the_gateway_api_schemas(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"stable": 1, "missing": 1}, section="web"))
    bed.apply(route("GRPCRoute", {"stable": 1}, name="g", section="nope"))
    await bed.programmed()
    await until("route statuses", lambda: bed.get("GRPCRoute", "g").get("status"))
    written = [
        bed.get("Gateway", "gw"),
        bed.get("HTTPRoute", "m"),
        bed.get("GRPCRoute", "g"),
        bed.get("GatewayClass", "polyserve-sandbox", None),
    ]
    assert await asyncio.to_thread(gateway_schemas.errors, *written) == [None] * len(written)


async def test_a_reference_grant_lets_a_route_reach_a_service_in_another_namespace(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    listeners = gateway()
    for listener in listeners["spec"]["listeners"]:
        listener["allowedRoutes"] = {"namespaces": {"from": "All"}}
    bed.apply(listeners)
    bed.apply(route("HTTPRoute", {"canary": 1}, section="web", namespace="elsewhere"))
    address = await bed.programmed()

    def resolved() -> str:
        parents = (bed.get("HTTPRoute", "m", "elsewhere").get("status") or {}).get("parents") or []
        return str(parents and condition({"status": parents[0]}, "ResolvedRefs")["reason"])

    await until("RefNotPermitted", lambda: resolved() == "RefNotPermitted")
    rest = RestClient(address, 80)
    try:
        assert await asyncio.to_thread(rest.infer) == (500, None)
        bed.store.create(GRANT)
        await until("ResolvedRefs", lambda: resolved() == "ResolvedRefs")
        assert await asyncio.to_thread(rest.infer) == (200, 2.0)
    finally:
        rest.close()


async def test_http_and_grpc_routes_share_one_listener_when_their_hostnames_differ(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway(web=80))
    rest_route = route("HTTPRoute", {"stable": 1}, hostnames=["rest.example.com"])
    grpc_route = route("GRPCRoute", {"canary": 1}, name="g", hostnames=["grpc.example.com"])
    clash = route("GRPCRoute", {"canary": 1}, name="z-late", hostnames=["*.example.com"])
    bed.apply(rest_route)
    bed.apply(grpc_route)
    address = await bed.programmed()
    web = bed.get("Gateway", "gw")["status"]["listeners"][0]
    await until(
        "both attached",
        lambda: bed.get("Gateway", "gw")["status"]["listeners"][0]["attachedRoutes"] == 2,
    )
    bed.apply(clash)
    await until(
        "the newer, clashing route refused",
        lambda: (bed.get("GRPCRoute", "z-late").get("status") or {}).get("parents"),
    )
    refused = bed.get("GRPCRoute", "z-late")["status"]["parents"][0]["conditions"]
    assert condition({"status": {"conditions": refused}}, "Accepted")["status"] == "False"
    rest = http.client.HTTPConnection(address, 80, timeout=30)
    grpc = GrpcClient(address, 80)
    try:

        def call(host: str) -> int:
            rest.request("GET", "/v2/health/ready", headers={"Host": host})
            answer = rest.getresponse()
            answer.read()
            return answer.status

        assert await asyncio.to_thread(call, "rest.example.com") == 200
        assert await asyncio.to_thread(call, "other.example.com") == 404, "no route for it"
        assert await asyncio.to_thread(grpc.infer) == ("OK", 2.0)
    finally:
        rest.close()
        grpc.close()
    assert web["name"] == "web"


async def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"canary": 1}, section="web"))
    address = await bed.programmed()

    def exchange() -> tuple[bytes, bytes]:
        with socket.create_connection((address, 80), timeout=10) as sock:
            head = (
                "POST /v2/models/scale/infer HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nExpect: 100-continue\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n"
            )
            sock.sendall(head.encode())
            interim = sock.recv(64)  # sent before the body, or the client would wait
            sock.sendall(BODY.encode())
            answer = b""
            while b'"data"' not in answer:
                answer += sock.recv(65536)
            return interim, answer

    interim, answer = await asyncio.to_thread(exchange)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer.startswith(b"HTTP/1.1 200")


async def test_deleting_a_gateway_closes_its_ports_and_clears_its_routes_parents(
    bed: Bed, tmp_path: Path
) -> None:
    await canary_bed(bed, tmp_path)
    bed.apply(gateway())
    bed.apply(route("HTTPRoute", {"canary": 1}, section="web"))
    address = await bed.programmed()
    await until("the route's parent", lambda: bed.get("HTTPRoute", "m").get("status"))
    bed.store.delete(GW, "Gateway", NS, "gw")
    await until("no parents", lambda: bed.get("HTTPRoute", "m")["status"]["parents"] == [])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 80), timeout=1).close()
    bed.apply(gateway())
    await bed.programmed()
    await until("attached again", lambda: bed.get("HTTPRoute", "m")["status"]["parents"])


# -- the fleet and its command line -----------------------------------------------------


def test_a_fleet_serves_gateways_that_kubectl_creates_and_endpoints_lists(tmp_path: Path) -> None:
    folder = tmp_path / "fleet"
    folder.mkdir()
    (folder / "sandbox.yaml").write_text(
        json.dumps({"operator": {"enabled": False}, "machineNode": False})
    )
    out = io.StringIO()
    sandbox_cli.up(folder, operator=False, log=out)
    try:
        kubeconfig = folder / "kubeconfig"
        classes = kubectl(kubeconfig, "get", "gatewayclass", "polyserve-sandbox").stdout
        assert "polyserve.io/sandbox-gateway-controller" in classes and "True" in classes
        gw = gateway()
        gw["metadata"]["namespace"] = "default"
        kubectl(kubeconfig, "apply", "--validate=false", "-f", "-", stdin=json.dumps(gw))
        kubectl(
            kubeconfig,
            "wait",
            "--for=condition=Programmed",
            "gateway/gw",
            "--timeout=30s",
        )
        assert "PROGRAMMED" in kubectl(kubeconfig, "get", "gateways").stdout
        listed = io.StringIO()
        sandbox_cli.endpoints(folder, "json", log=listed)
        rows = [r for r in json.loads(listed.getvalue()) if r["kind"] == "Gateway"]
        assert {(r["gateway"], r["listener"], r["programmed"]) for r in rows} == {
            ("gw", "web", True),
            ("gw", "grpc", True),
        }
        web = next(r for r in rows if r["listener"] == "web")
        host, port = web["address"].rsplit(":", 1)
        assert port == "80"
        connection = http.client.HTTPConnection(host, 80, timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().status == 404, "listening, no route yet"
        connection.close()
        table = io.StringIO()
        sandbox_cli.endpoints(folder, "table", log=table)
        assert "GATEWAY" in table.getvalue() and web["address"] in table.getvalue()
    finally:
        sandbox_cli.down(folder, log=out)

"""The kubelet against the sandbox's real store: pods bound to its node run, their statuses
and events reach the API, deletion waits for the processes, ``pods/log`` works."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from polyserve_sandbox.apiserver import store as apistore
from polyserve_sandbox.kubelet import node
from tests.sandbox.kubelet_harness import FAST, IMAGES, container, processes_with

Obj = dict[str, Any]
NODE = "node-a"


class Addresses:
    """Hands out 127.78.0.x, and records what came back."""

    def __init__(self) -> None:
        self.taken: list[str] = []
        self.returned: list[str] = []
        self._next = 2

    def take(self, wanted: str | None = None) -> str:
        address = wanted or f"127.78.{(self._next // 250) % 250}.{self._next % 250 + 2}"
        self._next += 1
        self.taken.append(address)
        return address

    def give_back(self, address: str) -> None:
        self.returned.append(address)


class Cluster:
    def __init__(self, store: apistore.Store, kubelet: node.Kubelet, addresses: Addresses):
        self.store, self.kubelet, self.addresses = store, kubelet, addresses
        self._changed = asyncio.Event()
        store.listen(lambda _: self._changed.set())

    def pod(self, name: str) -> Obj | None:
        return self.store.try_get("v1", "Pod", "default", name)

    def events(self, name: str) -> list[Obj]:
        return [
            e
            for e in self.store.list("v1", "Event", "default")
            if e["involvedObject"]["name"] == name
        ]

    async def until(self, predicate: Callable[[], bool], deadline: float = 20) -> None:
        end = time.monotonic() + deadline
        while True:
            self._changed.clear()
            if predicate():
                return
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not met in {deadline}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    store = apistore.Store()
    addresses = Addresses()
    kubelet = node.Kubelet(
        store,
        NODE,
        tmp_path,
        images=IMAGES,
        claims=lambda namespace, claim: None,
        backoff=FAST,
        ip_allocator=addresses,
        enforce_limits=False,
    )
    await kubelet.start()
    yield Cluster(store, kubelet, addresses)
    await kubelet.stop(grace_cap=5)


def pod_object(name: str, *containers: Obj, node_name: str = NODE, **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node_name, "containers": list(containers), **spec},
    }


SERVE = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "print('hello', flush=True); time.sleep(600)"
)


async def up(cluster: Cluster, name: str) -> None:
    """Until the pod's program printed hello: running, its SIGTERM handler in place."""

    def said_hello() -> bool:
        try:
            return cluster.store.read_log("default", name, None, False, None) == b"hello\n"
        except apistore.ApiError:
            return False

    await cluster.until(said_hello)


def phase(cluster: Cluster, name: str) -> str | None:
    pod = cluster.pod(name)
    return None if pod is None else (pod.get("status") or {}).get("phase")


async def test_a_pod_bound_to_the_node_runs_and_its_status_and_events_reach_the_api(
    cluster: Cluster,
) -> None:
    cluster.store.create(pod_object("web", container("main", SERVE)))
    await cluster.until(lambda: phase(cluster, "web") == "Running")
    await up(cluster, "web")
    pod = cluster.pod("web")
    assert pod is not None
    status = pod["status"]
    assert status["podIP"] == cluster.addresses.taken[0]
    assert status["containerStatuses"][0]["state"]["running"]["startedAt"]
    await cluster.until(lambda: any(e["reason"] == "Started" for e in cluster.events("web")))
    started = next(e for e in cluster.events("web") if e["reason"] == "Started")
    assert started["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert started["source"] == {"component": "kubelet", "host": NODE}
    assert started["type"] == "Normal" and started["count"] == 1
    assert started["message"] == "Started container main"


async def test_a_pod_bound_to_another_node_is_left_alone(cluster: Cluster) -> None:
    cluster.store.create(pod_object("elsewhere", container("main", SERVE), node_name="node-b"))
    cluster.store.create(pod_object("here", container("main", SERVE)))
    await cluster.until(lambda: phase(cluster, "here") == "Running")
    await up(cluster, "here")
    elsewhere = cluster.pod("elsewhere") or {}
    assert not (elsewhere.get("status") or {}).get("podIP")
    assert len(cluster.addresses.taken) == 1


async def test_deleting_a_pod_stops_its_processes_then_removes_it(cluster: Cluster) -> None:
    marker = "node-delete-marker"
    cluster.store.create(
        pod_object("web", container("main", SERVE, args=[marker]), terminationGracePeriodSeconds=5)
    )
    await up(cluster, "web")
    assert processes_with(marker)
    cluster.store.delete("v1", "Pod", "default", "web")
    deleting = cluster.pod("web")
    assert deleting is not None and deleting["metadata"]["deletionGracePeriodSeconds"] == 5
    await cluster.until(lambda: cluster.pod("web") is None)
    assert processes_with(marker) == []
    assert cluster.addresses.returned == cluster.addresses.taken
    assert any(e["reason"] == "Killing" for e in cluster.events("web"))


async def test_logs_are_read_through_the_api(cluster: Cluster) -> None:
    cluster.store.create(pod_object("web", container("main", SERVE)))
    await up(cluster, "web")
    with pytest.raises(apistore.ApiError, match="previous terminated container"):
        cluster.store.read_log("default", "web", "main", True, None)


async def test_a_config_map_that_appears_unblocks_a_waiting_pod(cluster: Cluster) -> None:
    cluster.store.create(
        pod_object(
            "web",
            container("main", SERVE, envFrom=[{"configMapRef": {"name": "settings"}}]),
        )
    )

    def waiting_reason() -> str | None:
        pod = cluster.pod("web") or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        reason = (statuses[0].get("state") or {}).get("waiting", {}).get("reason")
        return None if reason is None else str(reason)

    await cluster.until(lambda: waiting_reason() == "CreateContainerConfigError")
    failed = next(e for e in cluster.events("web") if e["reason"] == "Failed")
    assert failed["message"] == 'Error: configmap "settings" not found'
    cluster.store.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default"},
            "data": {"LEVEL": "debug"},
        }
    )
    await up(cluster, "web")


async def test_repeated_events_are_counted_on_one_event(cluster: Cluster) -> None:
    cluster.store.create(pod_object("crash", container("main", "raise SystemExit(1)")))

    def back_offs() -> list[Obj]:
        return [e for e in cluster.events("crash") if e["reason"] == "BackOff"]

    await cluster.until(lambda: bool(back_offs()) and back_offs()[0]["count"] >= 2)
    assert len(back_offs()) == 1
    assert back_offs()[0]["type"] == "Warning"


async def test_stop_terminates_every_pod(tmp_path: Path) -> None:
    store = apistore.Store()
    addresses = Addresses()
    kubelet = node.Kubelet(
        store,
        NODE,
        tmp_path,
        images=IMAGES,
        claims=lambda namespace, claim: None,
        backoff=FAST,
        ip_allocator=addresses,
        enforce_limits=False,
    )
    await kubelet.start()
    marker = "node-stop-marker"
    for name in ("a", "b"):
        store.create(pod_object(name, container("main", SERVE, args=[marker])))
    cluster = Cluster(store, kubelet, addresses)
    await cluster.until(lambda: phase(cluster, "a") == phase(cluster, "b") == "Running")
    for name in ("a", "b"):
        await up(cluster, name)
    await kubelet.stop(grace_cap=2)
    assert processes_with(marker) == []
    assert sorted(addresses.returned) == sorted(addresses.taken)
    assert phase(cluster, "a") == "Succeeded"  # the processes exited 0 on SIGTERM


async def test_a_readiness_gate_set_by_another_controller_counts_for_ready(
    cluster: Cluster,
) -> None:
    cluster.store.create(
        pod_object(
            "web",
            container("main", SERVE),
            readinessGates=[{"conditionType": "example.com/load-balancer"}],
        )
    )

    def ready() -> Obj:
        pod = cluster.pod("web") or {}
        conditions = (pod.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Ready"), {})

    await up(cluster, "web")
    await cluster.until(lambda: ready().get("reason") == "ReadinessGatesNotReady")
    assert ready()["message"] == (
        'corresponding condition of pod readiness gate "example.com/load-balancer" does not exist.'
    )
    pod = cluster.pod("web")
    assert pod is not None
    gate = {"type": "example.com/load-balancer", "status": "True"}
    cluster.store.patch(
        "v1",
        "Pod",
        "default",
        "web",
        {"status": {"conditions": [*pod["status"]["conditions"], gate]}},
        patch_type="merge",
        subresource="status",
    )
    await cluster.until(lambda: ready().get("status") == "True")
    kept = (cluster.pod("web") or {})["status"]["conditions"]
    assert any(c["type"] == "example.com/load-balancer" for c in kept)

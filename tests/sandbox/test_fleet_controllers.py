"""The sandbox's scheduler, Deployment controller and Services, on the real store.

Pods here are not run (that is the kubelet's part, tested on its own):
``_kubelet_marks_ready`` plays the kubelet's one visible act, a Ready condition, where a
test needs it. Unscheduled pods go at once when deleted, as on a real API server.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from polyserve_sandbox import defaults, deployments, jobs, nodes, quantities, scheduling, services
from polyserve_sandbox.apiserver import store as apistore

Obj = dict[str, Any]
NS = "fleet"


@pytest.fixture
async def store() -> AsyncIterator[apistore.Store]:
    s = apistore.Store()
    defaults.register(s)
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield s


async def until(what: str, probe: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _deployment(name: str, replicas: int, image: str = "app:1", **spec: Any) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "resources": {"requests": {"cpu": "100m"}},
                            "ports": [{"name": "http", "containerPort": 8000}],
                        }
                    ]
                },
            },
            **spec,
        },
    }


def _pod(name: str, template: Obj) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def _kubelet_marks_ready(store: apistore.Store, pod: Obj, ip: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "phase": "Running",
        "podIP": ip,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
            {"type": "Ready", "status": "True", "lastTransitionTime": stamp},
        ],
    }
    store.patch(
        "v1",
        "Pod",
        NS,
        pod["metadata"]["name"],
        {"status": status},
        patch_type="merge",
        subresource="status",
    )


def _pods(store: apistore.Store, app: str) -> list[Obj]:
    return store.list("v1", "Pod", NS, label_selector={"app": app})


def test_nfd_labels_use_nfds_names_for_the_cpus_real_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n"
    )
    labels = nodes.nfd_labels(nodes.cpu_flags(cpuinfo))
    assert labels["feature.node.kubernetes.io/cpu-cpuid.AVX512BF16"] == "true"
    assert labels["feature.node.kubernetes.io/cpu-cpuid.AMXBF16"] == "true"
    assert "feature.node.kubernetes.io/cpu-cpuid.AVX512_BF16" not in labels
    assert nodes.cpu_vendor(cpuinfo) == "Intel"


def test_the_machine_node_reflects_this_machine() -> None:
    node = nodes.node_object(nodes.xeon_node())
    allocatable = node["status"]["allocatable"]
    assert quantities.amount("cpu", allocatable["cpu"]) == nodes.machine_cpus() * 1000
    assert quantities.amount("memory", allocatable["memory"]) > 0
    flags = nodes.cpu_flags()
    labels = node["metadata"]["labels"]
    assert ("feature.node.kubernetes.io/cpu-cpuid.AVX512BF16" in labels) == ("avx512_bf16" in flags)
    assert "nvidia.com/gpu" not in allocatable, "no GPU is pretended"
    assert nodes.gpu_node([]) is None


def test_quantities_parse_as_kubernetes_writes_them() -> None:
    assert quantities.amount("cpu", "500m") == 500
    assert quantities.amount("cpu", 2) == 2000
    assert quantities.amount("memory", "4Gi") == 4 * 2**30
    assert quantities.amount("memory", "1e3") == 1000
    with pytest.raises(quantities.QuantityError):
        quantities.parse("lots")


async def test_a_pod_that_fits_nowhere_stays_pending_with_kube_schedulers_words(
    store: apistore.Store,
) -> None:
    store.create(
        nodes.node_object(nodes.NodeSpec("small", allocatable={"cpu": "1", "memory": "1Gi"}))
    )
    store.create(
        nodes.node_object(
            nodes.NodeSpec(
                "tainted",
                labels={"pool": "gpu"},
                taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
                allocatable={"cpu": "64", "memory": "64Gi"},
            )
        )
    )
    scheduler = scheduling.Scheduler(store)
    big = _deployment("big", 1)["spec"]["template"]
    big["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "2"}}
    store.create(_pod("big", big))
    scheduler.schedule_pending()
    pod = store.get("v1", "Pod", NS, "big")
    assert "nodeName" not in pod["spec"]
    (cond,) = pod["status"]["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert cond["message"].startswith(
        "0/2 nodes are available: 1 Insufficient cpu, "
        "1 node(s) had untolerated taint {nvidia.com/gpu: }. preemption:"
    )
    events = store.list("v1", "Event", NS, field_selector="involvedObject.name=big")
    assert [e["reason"] for e in events] == ["FailedScheduling"]

    tolerant = _deployment("tolerant", 1)["spec"]["template"]
    tolerant["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    tolerant["spec"]["nodeSelector"] = {"pool": "gpu"}
    store.create(_pod("tolerant", tolerant))
    scheduler.schedule_pending()
    assert store.get("v1", "Pod", NS, "tolerant")["spec"]["nodeName"] == "tainted"


async def test_required_node_affinity_terms_are_ored_and_their_expressions_anded(
    store: apistore.Store,
) -> None:
    store.create(
        nodes.node_object(
            nodes.NodeSpec(
                "amx", labels={"AMXBF16": "true"}, allocatable={"cpu": "8", "memory": "8Gi"}
            )
        )
    )
    scheduler = scheduling.Scheduler(store)
    spec = _deployment("bf16", 1)["spec"]["template"]
    spec["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "AVX512BF16", "operator": "In", "values": ["true"]}
                        ]
                    },
                    {
                        "matchExpressions": [
                            {"key": "AMXBF16", "operator": "In", "values": ["true"]}
                        ]
                    },
                ]
            }
        }
    }
    store.create(_pod("bf16", spec))
    scheduler.schedule_pending()
    assert store.get("v1", "Pod", NS, "bf16")["spec"]["nodeName"] == "amx"


async def test_a_missing_claim_keeps_a_pod_pending_as_the_scheduler_says(
    store: apistore.Store,
) -> None:
    store.create(nodes.node_object(nodes.NodeSpec("n", allocatable={"cpu": "8", "memory": "8Gi"})))
    scheduler = scheduling.Scheduler(store, claim_exists=lambda ns, claim: claim == "models")
    spec = _deployment("claims", 1)["spec"]["template"]
    spec["spec"]["volumes"] = [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]
    store.create(_pod("c", spec))
    scheduler.schedule_pending()
    (cond,) = store.get("v1", "Pod", NS, "c")["status"]["conditions"]
    assert 'persistentvolumeclaim "data" not found' in cond["message"]


async def test_a_running_scheduler_gives_a_pods_place_to_the_next_when_it_goes(
    store: apistore.Store,
) -> None:
    store.create(
        nodes.node_object(
            nodes.NodeSpec("one", allocatable={"cpu": "1", "memory": "1Gi", "pods": "2"})
        )
    )
    scheduler = scheduling.Scheduler(store)
    scheduler.start()
    try:
        template = _deployment("p", 1)["spec"]["template"]
        template["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "600m"}}
        store.create(_pod("first", template))
        await until(
            "first bound", lambda: store.get("v1", "Pod", NS, "first")["spec"].get("nodeName")
        )
        store.create(_pod("second", template))
        await until(
            "second unschedulable",
            lambda: (store.get("v1", "Pod", NS, "second").get("status") or {}).get("conditions"),
        )
        assert "nodeName" not in store.get("v1", "Pod", NS, "second")["spec"]
        store.delete("v1", "Pod", NS, "first", grace_period_seconds=0)
        assert (
            await until(
                "second bound", lambda: store.get("v1", "Pod", NS, "second")["spec"].get("nodeName")
            )
            == "one"
        )
        # Two pods at once for the one place: the pass counts the first it binds.
        store.delete("v1", "Pod", NS, "second", grace_period_seconds=0)
        store.create(_pod("third", template))
        store.create(_pod("fourth", template))
        await until(
            "both decided",
            lambda: all(
                pod["spec"].get("nodeName") or (pod.get("status") or {}).get("conditions")
                for pod in (store.get("v1", "Pod", NS, n) for n in ("third", "fourth"))
            ),
        )
        bound = [
            n for n in ("third", "fourth") if store.get("v1", "Pod", NS, n)["spec"].get("nodeName")
        ]
        assert bound == ["fourth"], "one place, one pod: the first in name order"
    finally:
        await scheduler.stop()


async def test_a_rolling_update_keeps_every_replica_available_and_keeps_history(
    store: apistore.Store,
) -> None:
    controllers = deployments.Controllers(store)
    controllers.start()
    try:
        store.create(
            _deployment(
                "web",
                3,
                revisionHistoryLimit=1,
                strategy={
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
            )
        )
        first = await until("3 pods", lambda: len(_pods(store, "web")) == 3 and _pods(store, "web"))
        for i, pod in enumerate(first):
            _kubelet_marks_ready(store, pod, f"127.9.0.{i + 1}")
        await until(
            "Available",
            lambda: (
                store.get("apps/v1", "Deployment", NS, "web")
                .get("status", {})
                .get("availableReplicas")
                == 3
            ),
        )
        for version in (2, 3):
            store.patch(
                "apps/v1",
                "Deployment",
                NS,
                "web",
                {
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "main",
                                        "image": f"app:{version}",
                                        "resources": {"requests": {"cpu": "100m"}},
                                    }
                                ]
                            }
                        }
                    }
                },
                patch_type="strategic",
            )
            lowest = 3
            deadline = asyncio.get_running_loop().time() + 15
            while asyncio.get_running_loop().time() < deadline:
                pods = [
                    p for p in _pods(store, "web") if not p["metadata"].get("deletionTimestamp")
                ]
                for pod in pods:
                    image = pod["spec"]["containers"][0]["image"]
                    if image == f"app:{version}" and not deployments.pod_ready(pod):
                        _kubelet_marks_ready(store, pod, "127.9.1.1")
                ready = [p for p in pods if deployments.pod_ready(p)]
                lowest = min(lowest, len(ready))
                assert len(pods) <= 4, "maxSurge 1: never more than 4 pods"
                status = store.get("apps/v1", "Deployment", NS, "web").get("status", {})
                images = {p["spec"]["containers"][0]["image"] for p in pods}
                done = (
                    images == {f"app:{version}"}
                    and len(ready) == 3
                    and status.get("updatedReplicas") == 3
                    and status.get("replicas") == 3
                )
                if done:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"rollout to app:{version} did not complete: {status}")
            assert lowest >= 3, "maxUnavailable 0: never fewer than 3 ready pods"
        replica_sets = store.list("apps/v1", "ReplicaSet", NS)
        revisions = sorted(
            int(r["metadata"]["annotations"][deployments.REVISION]) for r in replica_sets
        )
        assert revisions == [2, 3], "revisionHistoryLimit 1 keeps one old ReplicaSet"
    finally:
        await controllers.stop()


def _status(store: apistore.Store, name: str) -> Obj:
    return store.get("apps/v1", "Deployment", NS, name).get("status") or {}


def _progressing(store: apistore.Store, name: str) -> Obj:
    found = [c for c in _status(store, name).get("conditions") or [] if c["type"] == "Progressing"]
    return found[0] if found else {}


async def test_a_ready_pod_becomes_available_after_min_ready_seconds_with_no_other_change(
    store: apistore.Store,
) -> None:
    controllers = deployments.Controllers(store)
    controllers.start()
    try:
        store.create(_deployment("slow", 1, minReadySeconds=1))
        pods = await until("a pod", lambda: _pods(store, "slow"))
        _kubelet_marks_ready(store, pods[0], "127.9.2.1")
        await until("ready", lambda: _status(store, "slow").get("readyReplicas") == 1)
        assert _status(store, "slow").get("availableReplicas", 0) == 0
        # Nothing changes from here on: only the clock makes the pod available.
        await until("available", lambda: _status(store, "slow").get("availableReplicas") == 1)
    finally:
        await controllers.stop()


async def test_a_rollout_that_makes_no_progress_passes_its_deadline(
    store: apistore.Store,
) -> None:
    controllers = deployments.Controllers(store)
    controllers.start()
    try:
        store.create(_deployment("stuck", 1, progressDeadlineSeconds=1))
        await until("a pod", lambda: _pods(store, "stuck"))
        condition = await until(
            "ProgressDeadlineExceeded",
            lambda: (
                _progressing(store, "stuck").get("reason") == "ProgressDeadlineExceeded"
                and _progressing(store, "stuck")
            ),
        )
        assert condition["status"] == "False"
    finally:
        await controllers.stop()


async def test_controllers_started_after_a_deployment_was_stored_roll_it_out(
    store: apistore.Store,
) -> None:
    store.create(_deployment("early", 2))
    controllers = deployments.Controllers(store)
    controllers.start()
    try:
        await until("2 pods", lambda: len(_pods(store, "early")) == 2)
    finally:
        await controllers.stop()


async def test_recreate_waits_for_the_old_pods_to_go_before_starting_new_ones(
    store: apistore.Store,
) -> None:
    controllers = deployments.Controllers(store)
    controllers.start()
    try:
        store.create(_deployment("batch", 2, strategy={"type": "Recreate"}))
        await until("2 pods", lambda: len(_pods(store, "batch")) == 2)
        for pod in _pods(store, "batch"):
            store.patch(
                "v1",
                "Pod",
                NS,
                pod["metadata"]["name"],
                {"spec": {"nodeName": "n"}},
                patch_type="merge",
            )
        store.patch(
            "apps/v1",
            "Deployment",
            NS,
            "batch",
            {"spec": {"template": {"metadata": {"labels": {"app": "batch", "v": "2"}}}}},
            patch_type="merge",
        )
        await until(
            "the old pods to terminate",
            lambda: all(p["metadata"].get("deletionTimestamp") for p in _pods(store, "batch")),
        )
        await asyncio.sleep(0.3)
        assert all(p["metadata"]["labels"].get("v") != "2" for p in _pods(store, "batch")), (
            "no new pod while old ones terminate"
        )
        for pod in _pods(store, "batch"):
            store.delete("v1", "Pod", NS, pod["metadata"]["name"], grace_period_seconds=0)
        await until(
            "2 new pods",
            lambda: (
                len([p for p in _pods(store, "batch") if p["metadata"]["labels"].get("v") == "2"])
                == 2
            ),
        )
    finally:
        await controllers.stop()


async def test_a_service_gets_a_cluster_ip_and_proxies_connections_round_robin(
    store: apistore.Store,
) -> None:
    fleet = services.Services(store, "127.91.128.0/24")
    store.add_admission("v1", "Service", fleet.admit)
    fleet.start()
    backends = []

    async def answer(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.write(name.encode())
        await writer.drain()
        writer.close()

    try:
        for i in (1, 2):
            server = await asyncio.start_server(
                lambda r, w, n=f"pod{i}": answer(n, r, w), host=f"127.91.0.{i}", port=0
            )
            backends.append(server)
            port = server.sockets[0].getsockname()[1]
            pod = _deployment("svc", 1)["spec"]["template"]
            pod["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": port}]
            store.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"pod{i}", "namespace": NS, "labels": {"app": "svc"}},
                    "spec": pod["spec"],
                }
            )
            _kubelet_marks_ready(store, store.get("v1", "Pod", NS, f"pod{i}"), f"127.91.0.{i}")
        store.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "svc", "namespace": NS},
                "spec": {
                    "selector": {"app": "svc"},
                    "ports": [{"name": "http", "port": 8000, "targetPort": "http"}],
                },
            }
        )
        address = store.get("v1", "Service", NS, "svc")["spec"]["clusterIP"]
        assert address.startswith("127.91.128.")
        await until("both endpoints", lambda: len(fleet.endpoints(NS, "svc").get("http", [])) == 2)

        async def call() -> str:
            reader, writer = await asyncio.open_connection(address, 8000)
            writer.write(b"ping")
            await writer.drain()
            data = await reader.read()
            writer.close()
            return data.decode()

        answers = [await call() for _ in range(4)]
        assert sorted(answers) == ["pod1", "pod1", "pod2", "pod2"]
        endpoints = store.get("v1", "Endpoints", NS, "svc")
        assert len(endpoints["subsets"][0]["addresses"]) == 2
        store.delete("v1", "Pod", NS, "pod2")
        await until("one endpoint", lambda: len(fleet.endpoints(NS, "svc").get("http", [])) == 1)
        assert {await call() for _ in range(3)} == {"pod1"}
    finally:
        await fleet.stop()
        for server in backends:
            server.close()


async def test_endpoints_follow_the_pods_a_selector_matches_as_labels_and_selectors_change(
    store: apistore.Store,
) -> None:
    template = _deployment("x", 1)["spec"]["template"]

    def ready_pod(name: str, labels: dict[str, str], ip: str) -> None:
        store.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": labels},
                "spec": template["spec"],
            }
        )
        _kubelet_marks_ready(store, store.get("v1", "Pod", NS, name), ip)

    def service(name: str, selector: dict[str, str]) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 8000}]},
        }

    def pods_of(name: str) -> list[str]:
        return [e.pod for e in services_.endpoints(NS, name).get("http", [])]

    ready_pod("early", {"app": "a", "tier": "one"}, "127.92.0.1")  # before the controller
    services_ = services.Services(store, "127.92.128.0/24")
    store.add_admission("v1", "Service", services_.admit)
    services_.start()
    try:
        store.create(service("a", {"app": "a"}))
        store.create(service("one", {"app": "a", "tier": "one"}))
        ready_pod("late", {"app": "a", "tier": "two"}, "127.92.0.2")
        await until("a: both", lambda: pods_of("a") == ["early", "late"])
        await until("one: early", lambda: pods_of("one") == ["early"])
        patch = {"metadata": {"labels": {"tier": "one"}}}
        store.patch("v1", "Pod", NS, "late", patch, patch_type="merge")
        await until("one: both", lambda: pods_of("one") == ["early", "late"])
        patch = {"metadata": {"labels": {"app": "b"}}}
        store.patch("v1", "Pod", NS, "early", patch, patch_type="merge")
        await until("a: late", lambda: pods_of("a") == ["late"])
        await until("one: late", lambda: pods_of("one") == ["late"])
        patch = {"spec": {"selector": {"app": "b"}}}
        store.patch("v1", "Service", NS, "a", patch, patch_type="merge")
        await until("a: early", lambda: pods_of("a") == ["early"])
        store.delete("v1", "Service", NS, "one")
        await until("one: none", lambda: not services_.endpoints(NS, "one"))
    finally:
        await services_.stop()


async def test_stop_ends_each_controller_even_when_a_change_arrives_with_the_cancellation(
    store: apistore.Store,
) -> None:
    # Python 3.11's wait_for returns the event's result instead of raising when the
    # cancellation and the wake-up land in the same tick: the loop must end all the same.
    for controller in (
        deployments.Controllers(store),
        jobs.JobController(store),
        scheduling.Scheduler(store),
    ):
        controller.start()
        await asyncio.sleep(0.05)  # waiting on its event
        controller._wake.set()  # a change comes in as it stops
        began = asyncio.get_running_loop().time()
        await asyncio.wait_for(controller.stop(), 30)
        took = asyncio.get_running_loop().time() - began
        assert took < 1.0, f"{type(controller).__name__} took {took:.1f} s to stop"

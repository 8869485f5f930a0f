"""The operator end to end: InferenceModels in, workers and trustworthy status out."""

from __future__ import annotations

from typing import Any

from e2e.conftest import Cluster, Operator, example, wait_for
from polyserve_operator import api


def _ready(status: dict[str, Any] | None) -> dict[str, Any]:
    conds = {c["type"]: c for c in (status or {}).get("conditions") or []}
    return conds.get("Ready") or {}


def _pod_status(c: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Play the kubelet: set a pod's status through the status subresource."""
    c.patch("v1", "Pod", namespace, name, {"status": status}, subresource="status")


def test_a_created_model_gets_a_configmap_deployment_and_service_on_the_gpu_pool(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    (doc,) = example("bert-gpu.yaml", namespace)
    cluster.client.apply(doc)
    c = cluster.client
    dep = wait_for("the Deployment", lambda: c.get("apps/v1", "Deployment", namespace, "bert-trt"))
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-L4",
    }
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    cm = wait_for("the ConfigMap", lambda: c.get("v1", "ConfigMap", namespace, "bert-trt"))
    assert 'platform: "tensorrt_plan"' in cm["data"]["bert-trt.pbtxt"]
    svc = wait_for("the Service", lambda: c.get("v1", "Service", namespace, "bert-trt"))
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000, 8001, 8002]
    im = wait_for(
        "a status",
        lambda: (c.get(api.API_VERSION, "InferenceModel", namespace, "bert-trt") or {}).get(
            "status"
        ),
    )
    assert _ready(im)["status"] == "False"


def _get_model(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.client.get(api.API_VERSION, "InferenceModel", namespace, name) or {}


def _ready_is(cluster: Cluster, namespace: str, name: str, status: str, reason: str | None = None):
    def probe() -> dict[str, Any] | None:
        ready = _ready(_get_model(cluster, namespace, name).get("status"))
        if ready.get("status") == status and (reason is None or ready.get("reason") == reason):
            return ready
        return None

    return probe


def test_a_spec_change_updates_the_deployment_and_adds_a_disruption_budget(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    (doc,) = example("resnet-xeon.yaml", namespace)
    doc["spec"]["replicas"] = 1
    c = cluster.client
    c.apply(doc)
    wait_for("the Deployment", lambda: c.get("apps/v1", "Deployment", namespace, "resnet50"))
    assert c.get("policy/v1", "PodDisruptionBudget", namespace, "resnet50") is None

    doc["spec"]["replicas"] = 3
    doc["spec"]["hardware"]["precision"] = "fp32"
    c.apply(doc)
    dep = wait_for(
        "3 replicas",
        lambda: (
            (d := c.get("apps/v1", "Deployment", namespace, "resnet50"))
            and d["spec"]["replicas"] == 3
            and d
        ),
    )
    pdb = wait_for(
        "the PodDisruptionBudget",
        lambda: c.get("policy/v1", "PodDisruptionBudget", namespace, "resnet50"),
    )
    assert pdb["spec"]["maxUnavailable"] == 1
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == 4


def test_conditions_follow_the_deployment_and_pod_state(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.require_emulated("a real cluster runs real pods; here the test plays the kubelet")
    (doc,) = example("bert-gpu.yaml", namespace)
    c = cluster.client
    c.apply(doc)
    dep = wait_for("the Deployment", lambda: c.get("apps/v1", "Deployment", namespace, "bert-trt"))
    wait_for("RollingOut", _ready_is(cluster, namespace, "bert-trt", "False", "ReplicasNotReady"))

    # The scheduler finds no GPU node: Pending must say so, with what the pod needs.
    labels = dep["spec"]["selector"]["matchLabels"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bert-trt-abc12", "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "worker", "image": "worker"}]},
    }
    c.apply(pod)
    _pod_status(
        c,
        namespace,
        "bert-trt-abc12",
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    )
    ready = wait_for(
        "Unschedulable", _ready_is(cluster, namespace, "bert-trt", "False", "Unschedulable")
    )
    assert "nvidia.com/gpu.product=NVIDIA-L4" in ready["message"]
    status = _get_model(cluster, namespace, "bert-trt")["status"]
    assert status["lastFailure"]["reason"] == "Unschedulable"
    degraded = {x["type"]: x for x in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True"

    # Scheduled, but the worker crash-loops: never Ready, whatever the Deployment says.
    _pod_status(
        c,
        namespace,
        "bert-trt-abc12",
        {
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "worker",
                    "ready": False,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ],
        },
    )
    generation = dep["metadata"].get("generation", 1)
    c.patch(
        "apps/v1",
        "Deployment",
        namespace,
        "bert-trt",
        {
            "status": {
                "observedGeneration": generation,
                "replicas": 1,
                "updatedReplicas": 1,
                "readyReplicas": 1,
                "availableReplicas": 1,
            }
        },
        subresource="status",
    )
    crash = wait_for(
        "CrashLoopBackOff", _ready_is(cluster, namespace, "bert-trt", "False", "CrashLoopBackOff")
    )
    assert "OOMKilled" in crash["message"]

    # The pod recovers: Ready, and the failure is cleared.
    _pod_status(
        c,
        namespace,
        "bert-trt-abc12",
        {
            "containerStatuses": [
                {"name": "worker", "ready": True, "restartCount": 4, "state": {"running": {}}}
            ]
        },
    )
    wait_for("Ready", _ready_is(cluster, namespace, "bert-trt", "True", "AllReplicasReady"))
    status = _get_model(cluster, namespace, "bert-trt")["status"]
    assert "lastFailure" not in status
    assert status["readyReplicas"] == 1
    assert (
        status["observedGeneration"]
        == _get_model(cluster, namespace, "bert-trt")["metadata"]["generation"]
    )
    assert status["endpoints"]["http"] == f"http://bert-trt.{namespace}.svc:8000"


def test_a_deleted_model_leaves_its_children_to_owner_reference_garbage_collection(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    (doc,) = example("bert-gpu.yaml", namespace)
    c = cluster.client
    c.apply(doc)
    dep = wait_for("the Deployment", lambda: c.get("apps/v1", "Deployment", namespace, "bert-trt"))
    uid = _get_model(cluster, namespace, "bert-trt")["metadata"]["uid"]
    for kind, version in [("Deployment", "apps/v1"), ("ConfigMap", "v1"), ("Service", "v1")]:
        child = c.get(version, kind, namespace, "bert-trt") or {}
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("InferenceModel", uid, True)
    assert dep

    c.delete(api.API_VERSION, "InferenceModel", namespace, "bert-trt")
    wait_for("the model to go", lambda: not _get_model(cluster, namespace, "bert-trt"))
    if not cluster.emulated:  # the emulator has no garbage collector; a cluster must clean up
        wait_for(
            "the Deployment to go",
            lambda: c.get("apps/v1", "Deployment", namespace, "bert-trt") is None,
            timeout=60,
        )


def test_an_invalid_model_reports_invalid_spec_in_status(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.require_emulated("a real API server refuses this spec with its CEL rules first")
    (doc,) = example("bert-gpu.yaml", namespace)
    doc["spec"]["hardware"]["pool"] = "xeon"
    doc["spec"]["hardware"].pop("gpu")
    cluster.client.apply(doc)
    ready = wait_for(
        "InvalidSpec", _ready_is(cluster, namespace, "bert-trt", "False", "InvalidSpec")
    )
    assert "need a GPU" in ready["message"]
    assert cluster.client.get("apps/v1", "Deployment", namespace, "bert-trt") is None

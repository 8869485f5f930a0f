"""The operator end to end: InferenceModels in, workers and trustworthy status out."""

from __future__ import annotations

from typing import Any

from e2e.conftest import Cluster, Operator, example, wait_for
from polyserve_operator import api


def _ready(status: dict[str, Any] | None) -> dict[str, Any]:
    conds = {c["type"]: c for c in (status or {}).get("conditions") or []}
    return conds.get("Ready") or {}


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

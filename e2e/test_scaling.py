"""spec.scaling through the operator: the autoscaler it asks for is applied on the Deployment
that serves, its status read into the model's, and it goes when the spec changes engine or
stops asking. KEDA is not installed in the sandbox: its ScaledObject CRD is registered here
(the sandbox stores what KEDA would act on), which a real cluster must not get from a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2e.conftest import Cluster, Operator, wait_for
from polyserve_operator import api

KEDA_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: scaledobjects.keda.sh
spec:
  group: keda.sh
  names: {kind: ScaledObject, plural: scaledobjects, singular: scaledobject,
          listKind: ScaledObjectList}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    subresources: {status: {}}
"""
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
KEDA = ("keda.sh/v1alpha1", "ScaledObject")
METRIC = {"type": "InferenceRate", "target": 50}


def _model(cluster: Cluster, namespace: str, scaling: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "scaled", "namespace": namespace},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": cluster.artifacts["double"].as_uri()},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            },
            "scaling": scaling,
        },
    }


def _autoscaler_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    body = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "scaled") or {}
    found: dict[str, Any] = (body.get("status") or {}).get("autoscaler") or {}
    return found


def test_the_autoscaler_follows_spec_scaling_from_hpa_to_keda_to_none(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    cluster.require_sandbox("registers a stand-in KEDA CRD")
    crd = tmp_path / "keda-crd.yaml"
    crd.write_text(KEDA_CRD)
    cluster.kubectl("apply", "--validate=false", "-f", str(crd))
    hpa_scaling = {"minReplicas": 1, "maxReplicas": 3, "metric": METRIC}
    cluster.client.apply(_model(cluster, namespace, hpa_scaling))
    hpa = wait_for("the HPA", lambda: cluster.client.get(*HPA, namespace, "scaled"), timeout=60)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "scaled")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    wait_for(
        "the HPA's status in the model's",
        lambda: _autoscaler_status(cluster, namespace).get("kind") == HPA[1],
        timeout=60,
    )

    keda_scaling = {
        "minReplicas": 0,
        "maxReplicas": 2,
        "metric": METRIC,
        "engine": "KEDA",
        "keda": {"serverAddress": "http://prometheus.monitoring:9090"},
    }
    cluster.client.patch(
        api.API_VERSION, "InferenceModel", namespace, "scaled", {"spec": {"scaling": keda_scaling}}
    )
    scaled = wait_for(
        "the ScaledObject", lambda: cluster.client.get(*KEDA, namespace, "scaled"), timeout=60
    )
    assert scaled["spec"]["scaleTargetRef"]["name"] == "scaled"
    wait_for("the HPA to go", lambda: cluster.client.get(*HPA, namespace, "scaled") is None)
    wait_for(
        "the ScaledObject's status in the model's",
        lambda: _autoscaler_status(cluster, namespace).get("kind") == KEDA[1],
        timeout=60,
    )

    cluster.client.patch(
        api.API_VERSION, "InferenceModel", namespace, "scaled", {"spec": {"scaling": None}}
    )
    wait_for(
        "the ScaledObject to go",
        lambda: cluster.client.get(*KEDA, namespace, "scaled") is None,
        timeout=60,
    )

"""Autoscalers: the HPA and the KEDA ScaledObject a spec renders, and the files shipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from polyserve_operator import api, render, settings, validating
from polyserve_operator.render import scaling
from tests import crd_schemas

ROOT = Path(__file__).resolve().parents[2]
CFG = settings.Settings(prometheus=settings.Prometheus(url="http://prometheus.monitoring:9090"))


def _model(**fields: Any) -> api.InferenceModel:
    (doc,) = yaml.safe_load_all((ROOT / "manifests/examples/resnet-xeon.yaml").read_text())
    doc["spec"].update(fields)
    return api.InferenceModel.model_validate(doc)


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def test_an_hpa_scales_the_deployment_on_a_pods_metric_and_the_apply_leaves_replicas_alone() -> (
    None
):
    im = _model(
        scaling={
            "minReplicas": 2,
            "maxReplicas": 8,
            "metric": {"type": "InferenceRate", "target": 150},
        }
    )
    objects = _by_kind(render.objects(render.model_workload(im), CFG))
    hpa = objects["HorizontalPodAutoscaler"]
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(hpa, version, strict=True)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "resnet50",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "polyserve_inference_rate"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "150"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in objects["Deployment"]["spec"], "the autoscaler owns them"


def test_a_scaled_object_queries_the_deployments_pods_and_passes_kedas_schema() -> None:
    im = _model(
        scaling={
            "minReplicas": 0,
            "maxReplicas": 4,
            "engine": "KEDA",
            "metric": {"type": "QueueTimeP95", "target": 20},
            "keda": {"activationThreshold": 1, "fallbackReplicas": 2},
        }
    )
    assert validating.model(im) == []
    objects = _by_kind(render.objects(render.model_workload(im), CFG))
    scaled = objects["ScaledObject"]
    crd_schemas.validate(scaled)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["serverAddress"] == "http://prometheus.monitoring:9090"
    assert 'pod=~"resnet50-[a-z0-9]+-[a-z0-9]+"' in trigger["metadata"]["query"]
    assert trigger["metricType"] == "Value", "a p95 is not divided among replicas"
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}


def test_keda_without_prometheus_says_where_to_set_it() -> None:
    im = _model(
        scaling={"maxReplicas": 4, "engine": "KEDA", "metric": {"type": "InFlight", "target": 8}}
    )
    with pytest.raises(ValueError, match="POLYSERVE_OPERATOR_PROMETHEUS__URL"):
        render.objects(render.model_workload(im), settings.Settings())


def test_scaling_to_zero_with_an_hpa_is_refused_with_the_fix() -> None:
    im = _model(
        scaling={"minReplicas": 0, "maxReplicas": 4, "metric": {"type": "InFlight", "target": 8}}
    )
    assert any("needs engine KEDA" in p for p in validating.model(im))


def test_a_canarys_autoscaler_targets_the_stable_revisions_deployment() -> None:
    (doc,) = yaml.safe_load_all((ROOT / "manifests/examples/canary-xeon.yaml").read_text())
    doc["spec"]["scaling"] = {"maxReplicas": 6, "metric": {"type": "InferenceRate", "target": 100}}
    im = api.InferenceModel.model_validate(doc)
    objects = _by_kind(render.objects(render.model_workload(im), CFG))
    deployment = objects["Deployment"]["metadata"]["name"]
    assert objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment


def test_the_shipped_prometheus_adapter_rules_are_the_ones_the_hpas_name() -> None:
    shipped = yaml.safe_load(
        (ROOT / "manifests/autoscaling/prometheus-adapter-rules.yaml").read_text()
    )
    assert shipped["rules"]["custom"] == scaling.ADAPTER_RULES, (
        "regenerate manifests/autoscaling/prometheus-adapter-rules.yaml from "
        "polyserve_operator.render.scaling.ADAPTER_RULES"
    )
    served = {rule["name"]["as"] for rule in shipped["rules"]["custom"]}
    assert served == set(scaling.HPA_METRICS.values())


def test_the_karpenter_node_pools_pass_karpenters_schema() -> None:
    pools = list(
        yaml.safe_load_all(
            (ROOT / "manifests/examples/autoscaling/karpenter-nodepools.yaml").read_text()
        )
    )
    assert [p["metadata"]["name"] for p in pools] == ["gpu", "xeon-amx"]
    crd_schemas.validate(*pools)

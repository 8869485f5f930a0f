"""Autoscalers: the HPA and the KEDA ScaledObject a spec renders, and the files shipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from polyserve_operator import api, observe, render, settings, validating
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


def _hpa_status(conditions: list[dict[str, str]], **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ranker"},
        "status": {"conditions": conditions, **fields},
    }


def test_an_hpa_that_cannot_read_its_metric_says_why_and_where_the_metric_comes_from() -> None:
    # What kube-controller-manager writes when Prometheus Adapter serves no such metric.
    hpa = _hpa_status(
        [
            {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
            {
                "type": "ScalingActive",
                "status": "False",
                "reason": "FailedGetPodsMetric",
                "message": "the HPA was unable to compute the replica count: unable to get metric "
                "polyserve_inference_rate: unable to fetch metrics from custom metrics API: the "
                "server could not find the metric polyserve_inference_rate for pods",
            },
        ],
        currentReplicas=1,
        desiredReplicas=0,
    )
    out = observe.autoscaler(hpa)
    assert out["active"] is False and out["currentReplicas"] == 1
    assert out["message"].startswith("ScalingActive: FailedGetPodsMetric the HPA was unable")
    assert "Prometheus Adapter" in out["message"] and "manifests/autoscaling" in out["message"]


def test_a_working_hpa_reports_its_replicas_and_the_metric_it_reads() -> None:
    hpa = _hpa_status(
        [
            {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"},
            {
                "type": "ScalingLimited",
                "status": "True",
                "reason": "TooManyReplicas",
                "message": "the desired replica count is more than the maximum replica count",
            },
        ],
        currentReplicas=4,
        desiredReplicas=4,
        currentMetrics=[
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "polyserve_inference_rate"},
                    "current": {"averageValue": "183500m"},
                },
            }
        ],
    )
    assert observe.autoscaler(hpa) == {
        "kind": "HorizontalPodAutoscaler",
        "name": "ranker",
        "active": True,
        "currentReplicas": 4,
        "desiredReplicas": 4,
        "metric": "183500m",
        "message": "ScalingLimited: TooManyReplicas the desired replica count is more than the "
        "maximum replica count",
    }


def test_a_scaled_object_on_its_fallback_says_so() -> None:
    scaled = {
        "kind": "ScaledObject",
        "metadata": {"name": "ranker"},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "TriggerError",
                    "message": "prometheus query failed",
                },
                {"type": "Active", "status": "False"},
                {
                    "type": "Fallback",
                    "status": "True",
                    "reason": "FallbackExists",
                    "message": "At least one trigger is falling back on this scaled object",
                },
            ]
        },
    }
    out = observe.autoscaler(scaled)
    assert out["active"] is False
    assert out["message"].startswith("Fallback: FallbackExists")


def test_an_autoscaler_that_has_said_nothing_yet_is_neither_active_nor_inactive() -> None:
    assert observe.autoscaler({"kind": "ScaledObject", "metadata": {"name": "x"}}) == {
        "kind": "ScaledObject",
        "name": "x",
    }

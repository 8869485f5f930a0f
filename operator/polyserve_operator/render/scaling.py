"""Autoscalers of a workload: an HPA on a Prometheus Adapter metric, or a KEDA ScaledObject.

Both scale the Deployment that serves (the RollingUpdate Deployment, a canary's stable
revision, a tiered model's current tier) between ``spec.scaling``'s bounds on one of the
workers' own metrics. The operator leaves such a Deployment's ``spec.replicas`` to the
autoscaler (it is left out of the server-side apply). The metric names the HPA reads are
served by the Prometheus Adapter rules shipped in ``manifests/autoscaling/`` (``ADAPTER_RULES``
here is their source). Pure functions.
"""

from __future__ import annotations

from typing import Any

from polyserve_operator import api
from polyserve_operator.render import workloads

Obj = dict[str, Any]

#: Scaling.engine -> (apiVersion, kind) of the autoscaler it renders.
ENGINES = {
    "HPA": ("autoscaling/v2", "HorizontalPodAutoscaler"),
    "KEDA": ("keda.sh/v1alpha1", "ScaledObject"),
}

#: ScalingMetric.type -> the custom metric Prometheus Adapter serves per pod.
HPA_METRICS = {
    "InferenceRate": "polyserve_inference_rate",
    "QueueTimeP95": "polyserve_queue_p95_milliseconds",
    "InFlight": "polyserve_inflight_requests",
}

#: Prometheus Adapter rules (the chart's ``rules.custom``) that serve HPA_METRICS per pod.
ADAPTER_RULES: list[Obj] = [
    {
        "seriesQuery": 'nv_inference_request_success{namespace!="",pod!=""}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {"matches": "^nv_inference_request_success$", "as": HPA_METRICS["InferenceRate"]},
        "metricsQuery": "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)",
    },
    {
        "seriesQuery": 'polyserve_queue_duration_seconds_bucket{namespace!="",pod!=""}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {
            "matches": "^polyserve_queue_duration_seconds_bucket$",
            "as": HPA_METRICS["QueueTimeP95"],
        },
        "metricsQuery": (
            "1000 * histogram_quantile(0.95, sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) "
            "by (le, <<.GroupBy>>))"
        ),
    },
    {
        "seriesQuery": 'nv_inference_pending_request_count{namespace!="",pod!=""}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {"matches": "^nv_inference_pending_request_count$", "as": HPA_METRICS["InFlight"]},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    },
]


def _pods(w: workloads.Workload, deployment: str) -> str:
    return f'namespace="{w.owner.namespace}",pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"'


def keda_query(w: workloads.Workload, deployment: str, metric: api.ScalingMetric) -> str:
    """The PromQL a ScaledObject's trigger runs for the Deployment's pods."""
    pods = _pods(w, deployment)
    model = f'model="{w.entry}"'
    if metric.type == "InferenceRate":
        return f"sum(rate(nv_inference_request_success{{{pods},{model}}}[1m]))"
    if metric.type == "InFlight":
        return f"sum(nv_inference_pending_request_count{{{pods},{model}}})"
    return (
        "1000 * histogram_quantile(0.95, sum(rate("
        f"polyserve_queue_duration_seconds_bucket{{{pods},{model}}}[1m])) by (le))"
    )


def _target(deployment: str) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}


def hpa(w: workloads.Workload, scaling: api.Scaling, deployment: str) -> Obj:
    """An autoscaling/v2 HPA on the Pods metric of ``scaling.metric``."""
    return {
        "apiVersion": ENGINES["HPA"][0],
        "kind": ENGINES["HPA"][1],
        "metadata": workloads.metadata(w),
        "spec": {
            "scaleTargetRef": _target(deployment),
            "minReplicas": max(scaling.min_replicas, 1),
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": HPA_METRICS[scaling.metric.type]},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": _quantity(scaling.metric.target),
                        },
                    },
                }
            ],
        },
    }


def scaled_object(
    w: workloads.Workload, scaling: api.Scaling, deployment: str, prometheus: str | None
) -> Obj:
    """A KEDA ScaledObject with a Prometheus trigger on the Deployment's pods."""
    keda = scaling.keda or api.Keda()
    address = keda.server_address or prometheus
    if not address:
        raise ValueError(
            "scaling.engine KEDA needs Prometheus: set scaling.keda.serverAddress or the "
            "operator's POLYSERVE_OPERATOR_PROMETHEUS__URL"
        )
    per_replica = scaling.metric.type != "QueueTimeP95"  # a p95 is not shared out
    spec: Obj = {
        "scaleTargetRef": _target(deployment),
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "triggers": [
            {
                "type": "prometheus",
                "metricType": "AverageValue" if per_replica else "Value",
                "metadata": {
                    "serverAddress": address,
                    "query": keda_query(w, deployment, scaling.metric),
                    "threshold": _number(scaling.metric.target),
                    "activationThreshold": _number(keda.activation_threshold),
                },
            }
        ],
    }
    if keda.fallback_replicas is not None:
        spec["fallback"] = {"failureThreshold": 3, "replicas": keda.fallback_replicas}
    return {
        "apiVersion": ENGINES["KEDA"][0],
        "kind": ENGINES["KEDA"][1],
        "metadata": workloads.metadata(w),
        "spec": spec,
    }


def objects(
    w: workloads.Workload, scaling: api.Scaling, deployment: str, prometheus: str | None
) -> list[Obj]:
    if scaling.engine == "KEDA":
        return [scaled_object(w, scaling, deployment, prometheus)]
    return [hpa(w, scaling, deployment)]


def _number(value: float) -> str:
    return f"{value:g}"


def _quantity(value: float) -> str:
    """A Kubernetes quantity; fractions as milli-units (0.5 -> 500m)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"

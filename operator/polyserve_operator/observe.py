"""What the operator knows of the world: kopf's in-memory indexes, not API reads.

kopf watches the operator's own resources and every object the operator owns (selected on
the server by the ``app.kubernetes.io/managed-by`` label) and keeps them in indexes keyed by
``(namespace, name)`` of the workload. A reconcile reads a ``World`` built from those
indexes, so observing a resource costs no API request: at rest, API traffic follows what
changes in the cluster, not the number of resources times a polling interval. This module
turns the index contents into plain data; it does no I/O itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
from prometheus_client import parser as prometheus_parser

from polyserve_operator import analysis, api, conditions, settings

Obj = dict[str, Any]
logger = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)

#: The label every owned object carries, by which kopf watches select them on the server.
MANAGED_BY = "app.kubernetes.io/managed-by"
#: The label naming the workload (the resource) an owned object belongs to.
INSTANCE = "app.kubernetes.io/instance"

#: kind -> (group, version, plural) of every object the operator owns or reads for status.
CHILDREN: dict[str, tuple[str, str, str]] = {
    "Deployment": ("apps", "v1", "deployments"),
    "ReplicaSet": ("apps", "v1", "replicasets"),
    "Pod": ("", "v1", "pods"),
    "ConfigMap": ("", "v1", "configmaps"),
    "Service": ("", "v1", "services"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "Job": ("batch", "v1", "jobs"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}

#: An index as handlers see it: key -> the objects stored under it.
Index = Mapping[Any, Iterable[Obj]]


def child_key(namespace: str | None, labels: Mapping[str, str]) -> Key | None:
    """The index key of an owned object, or None for objects of no workload."""
    name = labels.get(INSTANCE)
    return (namespace or "", name) if name else None


@dataclass(frozen=True)
class Children:
    """The objects of one workload, as last seen."""

    name: str = ""
    deployments: list[Obj] = field(default_factory=list)
    replica_sets: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    config_maps: list[Obj] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    disruption_budgets: list[Obj] = field(default_factory=list)
    jobs: list[Obj] = field(default_factory=list)
    network_policies: list[Obj] = field(default_factory=list)

    @property
    def deployment(self) -> Obj | None:
        """The workload's own Deployment (named after it: the RollingUpdate strategy's)."""
        return _named(self.deployments, self.name)

    @property
    def service(self) -> Obj | None:
        return _named(self.services, self.name)

    @property
    def disruption_budget(self) -> Obj | None:
        return _named(self.disruption_budgets, self.name)

    def observation(self, deployment: Obj | None = None) -> conditions.Observation:
        return conditions.Observation(deployment=deployment or self.deployment, pods=self.pods)

    def present(self, kind: str, name: str) -> Obj | None:
        """The owned object of ``kind`` named ``name``, if it exists."""
        candidates: list[Obj] = {
            "Deployment": self.deployments,
            "ReplicaSet": self.replica_sets,
            "Pod": self.pods,
            "ConfigMap": self.config_maps,
            "Service": self.services,
            "PodDisruptionBudget": self.disruption_budgets,
            "Job": self.jobs,
            "NetworkPolicy": self.network_policies,
        }.get(kind, [])
        return _named(candidates, name)

    def deployment_of(self, revision: str) -> Obj | None:
        """The Deployment whose pods run ``revision``."""
        for deployment in self.deployments:
            if revision_of(deployment) == revision and not deployment["metadata"].get(
                "deletionTimestamp"
            ):
                return deployment
        return None

    def pods_of(self, revision: str) -> list[Obj]:
        return [p for p in self.pods if pod_revision(p) == revision]


REVISION = "polyserve.io/revision"


def revision_of(deployment: Obj) -> str | None:
    template = (deployment.get("spec") or {}).get("template") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(REVISION)
    return str(value) if value else None


def pod_revision(pod: Obj) -> str | None:
    meta = pod.get("metadata") or {}
    value = (meta.get("labels") or {}).get(REVISION) or (meta.get("annotations") or {}).get(
        REVISION
    )
    return str(value) if value else None


def pod_ready(pod: Obj) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _named(objects: list[Obj], name: str) -> Obj | None:
    return next((o for o in objects if o.get("metadata", {}).get("name") == name), None)


def children(indexes: Mapping[str, Index], namespace: str, name: str) -> Children:
    """The owned objects of the workload ``namespace/name`` from the per-kind indexes."""

    def of(kind: str) -> list[Obj]:
        index = indexes.get(kind) or {}
        key = (namespace, name)
        return [dict(o) for o in index[key]] if key in index else []

    return Children(
        name=name,
        deployments=of("Deployment"),
        replica_sets=of("ReplicaSet"),
        pods=of("Pod"),
        config_maps=of("ConfigMap"),
        services=of("Service"),
        disruption_budgets=of("PodDisruptionBudget"),
        jobs=of("Job"),
        network_policies=of("NetworkPolicy"),
    )


def members(
    models: Index,
    namespace: str,
    names: set[str],
    read: Callable[[str], Obj | None] | None = None,
) -> dict[str, api.InferenceModel | None]:
    """The InferenceModels an ensemble references; None for a missing or invalid one.

    ``read`` looks up a model the index does not hold yet (the index trails the API by the
    watch's delay: admission, which answers a user who just created the members, reads)."""
    found: dict[str, api.InferenceModel | None] = {}
    for name in sorted(names):
        bodies = list(models.get((namespace, name), ())) if (namespace, name) in models else []
        if not bodies and read is not None and (body := read(name)) is not None:
            bodies = [body]
        try:
            found[name] = api.InferenceModel.model_validate(bodies[0]) if bodies else None
        except pydantic.ValidationError:
            found[name] = None
    return found


def exists(resources: Index, namespace: str, name: str) -> bool:
    """Whether the index of a kind of resource holds ``namespace/name``."""
    return (namespace, name) in resources and bool(list(resources[(namespace, name)]))


def fingerprint(
    indexes: Mapping[str, Index],
    body: Mapping[str, Any],
    related: Iterable[tuple[str, str]] = (),
) -> str:
    """What a reconcile of ``body`` reads from the indexes, in one digest: the resource's
    own resourceVersion (its spec, annotations and status all move it), the kind, name and
    resourceVersion of every object it owns, and those of ``related`` resources, given as
    (index kind, name) in its namespace (an ensemble's members). The same digest twice: the
    same inputs, so the same result. Reads the indexes in place (no copies)."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta.get("name") or ""
    parts = [str(meta.get("resourceVersion"))]

    def versions(kind: str, key: Key) -> None:
        index = indexes.get(kind) or {}
        if key not in index:
            return
        found = []
        for obj in index[key]:
            child = obj.get("metadata") or {}
            found.append(f"{kind}/{child.get('name')}@{child.get('resourceVersion')}")
        parts.extend(sorted(found))

    for kind in sorted(CHILDREN):
        versions(kind, (namespace, name))
    for kind, other in sorted(related):
        versions(kind, (namespace, other))
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


METRICS_TIMEOUT_SECONDS = 2.0


def scrape(
    pods: Iterable[Obj],
    model: str,
    port: int,
    *,
    ready_only: bool = True,
    mirror_revision: str | None = None,
) -> dict[str, analysis.Sample]:
    """The metrics of ``model`` on each ready pod (each pod with an IP when not
    ``ready_only``) (pod name -> sample), read from the worker's own ``/metrics`` at the pod's
    IP, with the mirror's counts for copies sent to ``mirror_revision``. A pod that does not
    answer is left out (its traffic is counted again when it answers next time)."""
    found: dict[str, analysis.Sample] = {}
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip or (ready_only and not pod_ready(pod)):
            continue
        url = f"http://{ip}:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_SECONDS) as response:
                text = response.read().decode()
        except OSError as exc:
            logger.info("metrics of pod %s unread: %s", pod["metadata"]["name"], exc)
            continue
        families = prometheus_parser.text_string_to_metric_families(text)
        found[pod["metadata"]["name"]] = analysis.from_families(families, model, mirror_revision)
    return found


class PromQL:
    """Canary traffic from Prometheus: the same counters and histograms the pod scrape reads,
    as ``increase()`` over the interval, per revision (the pods of its Deployment)."""

    def __init__(self, cfg: settings.Prometheus) -> None:
        assert cfg.url, "PromQL needs prometheus.url"
        self.url = cfg.url.rstrip("/")
        self.cfg = cfg

    def _query(self, expression: str) -> list[Obj]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        try:
            with urllib.request.urlopen(url, timeout=self.cfg.timeout_seconds) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: Prometheus says why in the body
            try:
                why = json.loads(exc.read()).get("error") or exc
            except ValueError:
                why = exc
            raise ApiUnavailable(f"Prometheus refused {expression!r}: {why}") from exc
        except (OSError, ValueError) as exc:
            raise ApiUnavailable(f"Prometheus at {self.url} did not answer: {exc}") from exc
        if body.get("status") != "success":
            raise ApiUnavailable(f"Prometheus refused {expression!r}: {body.get('error')}")
        result: list[Obj] = body["data"]["result"]
        return result

    def _selector(
        self, namespace: str, deployments: Sequence[str], model: str, **labels: str
    ) -> str:
        """The series of ``model`` on the pods of ``deployments`` (``<deployment>-<replica
        set hash>-<suffix>``), with ``labels`` too."""
        owners = "|".join(re.escape(d) for d in deployments)
        pods = f"({owners})-[a-z0-9]+-[a-z0-9]+"
        matchers = [
            f"{self.cfg.namespace_label}={_string(namespace)}",
            f"{self.cfg.pod_label}=~{_string(pods)}",
            f"model={_string(model)}",
            *(f"{k}={_string(v)}" for k, v in labels.items()),
        ]
        return "{" + ",".join(matchers) + "}"

    def sample(
        self,
        namespace: str,
        deployments: str | Sequence[str],
        model: str,
        seconds: float,
        mirror_revision: str | None = None,
    ) -> analysis.Sample:
        """What the pods of ``deployments`` (one name or several) served of ``model`` in the
        last ``seconds``, with the mirror's counts for copies sent to ``mirror_revision``
        (none without it)."""
        named = [deployments] if isinstance(deployments, str) else list(deployments)
        where = self._selector(namespace, named, model)
        window = f"[{max(int(seconds), 1)}s]"

        def scalar(metric: str) -> float:
            found = self._query(f"sum(increase({metric}{where}{window}))")
            return float(found[0]["value"][1]) if found else 0.0

        def histogram(metric: str) -> analysis.Histogram:
            found = self._query(f"sum by (le) (increase({metric}_bucket{where}{window}))")
            buckets = sorted((float(r["metric"]["le"]), float(r["value"][1])) for r in found)
            return analysis.Histogram(tuple(buckets))

        mirror: dict[str, float] = {}
        if mirror_revision is not None:
            copies = self._selector(namespace, named, model, revision=mirror_revision)
            mirror = {
                r["metric"].get("result", ""): float(r["value"][1])
                for r in self._query(
                    f"sum by (result) (increase({analysis.MIRROR}{copies}{window}))"
                )
            }
        return analysis.Sample(
            success=scalar(analysis.SUCCESS),
            failure=scalar(analysis.FAILURE),
            request_duration=histogram(analysis.REQUEST_DURATION),
            queue_duration=histogram(analysis.QUEUE_DURATION),
            mirror=mirror,
        )


def _string(value: str) -> str:
    """``value`` as a PromQL string literal (a Go double-quoted string: a regular
    expression's backslashes are doubled)."""
    return json.dumps(value)


class ApiUnavailable(Exception):
    """A metrics source did not answer; the measurement waits for the next reconcile."""


def autoscaler(obj: Mapping[str, Any]) -> Obj:
    """``status.autoscaler`` from an HPA's or a KEDA ScaledObject's own status.

    An HPA says ``ScalingActive`` False when it cannot read its metric (for a Pods metric:
    Prometheus Adapter is missing or has no rule for it) and ``ScalingLimited`` True at its
    bounds; a ScaledObject says ``Ready`` False when its trigger fails and ``Fallback`` True
    while it runs its fallback replicas."""
    kind = str(obj.get("kind") or "")
    status = obj.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    out: Obj = {"kind": kind, "name": (obj.get("metadata") or {}).get("name", "")}

    def said(kind: str) -> tuple[bool | None, str]:
        cond = conds.get(kind) or {}
        state = {"True": True, "False": False}.get(str(cond.get("status")))
        words = " ".join(str(cond.get(k) or "") for k in ("reason", "message")).strip()
        return state, f"{kind}: {words}" if words else ""

    if kind == "HorizontalPodAutoscaler":
        active, why = said("ScalingActive")
        limited, limit = said("ScalingLimited")
        out["active"] = active
        out["currentReplicas"] = status.get("currentReplicas")
        out["desiredReplicas"] = status.get("desiredReplicas")
        for metric in status.get("currentMetrics") or []:
            current = ((metric.get("pods") or metric.get("object") or {}).get("current")) or {}
            value = current.get("averageValue") or current.get("value")
            if value is not None:
                out["metric"] = str(value)
                break
        message = why if active is False else (limit if limited else "")
        if active is False and not status.get("currentMetrics"):
            message += (
                " (a Pods metric comes from Prometheus Adapter: install it with the rules in "
                "manifests/autoscaling/prometheus-adapter-rules.yaml)"
            )
        out["message"] = message or None
    else:
        ready, why = said("Ready")
        fallback, fell = said("Fallback")
        out["active"] = ready
        out["message"] = (fell if fallback else why if ready is False else "") or None
    return {k: v for k, v in out.items() if v is not None}

"""The objects of a canary rollout: one Deployment per revision, the Services that select
them, the Gateway API route whose weights split traffic, and the stable pods' mirror config.

Under the Canary strategy each revision runs in a Deployment of its own
(``<workload>-<revision>``, selecting only that revision's pods), so promoting a canary is
scaling, never a second rollout. The main Service selects what the rollout says (the stable
pods, both revisions for a replica-ratio split, or the canary while it is promoted); the
``-stable`` Service selects the stable revision and ``-canary-<revision>`` one canary's, for a
route's backendRefs, for the mirror, and for people who want to call one side. The canary
Service is per revision, so a new canary's Service never has an older canary's pods behind
it (a rolled-back canary still serves for ``abortScaleDownDelaySeconds``: a connection the
mirror opened to a reused Service could reach it, and the new release would be judged on the
old one's answers). Pure functions.
"""

from __future__ import annotations

from typing import Any

from polyserve_operator import api, settings
from polyserve_operator.render import scaling, workloads
from polyserve_worker import mirror_config as worker_mirror

Obj = dict[str, Any]

ROUTES_API = "gateway.networking.k8s.io/v1"


def stable_service_name(w: workloads.Workload) -> str:
    return f"{w.name}-stable"


#: The label that marks a canary's Service (its value: the revision it selects).
CANARY_SERVICE_LABEL = "polyserve.io/canary-of"


def canary_service_name(w: workloads.Workload, revision: str) -> str:
    """One canary revision's Service: ``<workload>-canary-<revision>``."""
    return workloads.dns_label(f"{w.name}-canary", revision)


def canary_service(w: workloads.Workload, revision: str) -> Obj:
    service = workloads.service(w, name=canary_service_name(w, revision), revision_=revision)
    service["metadata"]["labels"][CANARY_SERVICE_LABEL] = revision
    return service


def is_canary_service(w: workloads.Workload, service: Obj) -> bool:
    """Whether ``service`` is one of ``w``'s canary Services (of any revision; also the
    single ``<workload>-canary`` that earlier operators rendered for every revision)."""
    meta = service.get("metadata") or {}
    return CANARY_SERVICE_LABEL in (meta.get("labels") or {}) or meta.get("name") == (
        f"{w.name}-canary"
    )


def mirror_config_name(w: workloads.Workload) -> str:
    return f"{w.name}-mirror"


def canary_of(w: workloads.Workload) -> api.Canary | None:
    rollout = w.rollout
    if rollout is None or rollout.strategy != "Canary":
        return None
    return rollout.canary


def routing(w: workloads.Workload) -> api.GatewayRouting | None:
    canary = canary_of(w)
    if canary is None or canary.traffic_routing is None:
        return None
    return canary.traffic_routing.gateway_api


def route(
    w: workloads.Workload,
    gateway: api.GatewayRouting,
    canary_revision: str | None,
    canary_weight: int,
) -> Obj:
    """The HTTPRoute or GRPCRoute that splits traffic between the stable Service and
    ``canary_revision``'s: ``canary_weight`` percent to the canary. With no canary, one
    backendRef: the stable Service, every request."""
    grpc = gateway.route_kind == "GRPCRoute"
    port = workloads.GRPC_PORT if grpc else workloads.HTTP_PORT
    parents = []
    for ref in gateway.parent_refs:
        parent: Obj = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": ref.name}
        if ref.namespace:
            parent["namespace"] = ref.namespace
        if ref.section_name:
            parent["sectionName"] = ref.section_name
        parents.append(parent)
    backends = [{"name": stable_service_name(w), "port": port, "weight": 100 - canary_weight}]
    if canary_revision is not None:
        backends.append(
            {
                "name": canary_service_name(w, canary_revision),
                "port": port,
                "weight": canary_weight,
            }
        )
    rule: Obj = {"backendRefs": [{"kind": "Service", "group": "", **b} for b in backends]}
    meta = workloads.metadata(w)
    return {
        "apiVersion": ROUTES_API,
        "kind": gateway.route_kind,
        "metadata": meta,
        "spec": {"parentRefs": parents, "rules": [rule]},
    }


def mirror_config(
    w: workloads.Workload, mirror: api.Mirror | None, target: str | None, revision: str | None
) -> Obj:
    """The stable pods' mirror settings (``polyserve-worker --mirror-config``, the worker's
    own format: ``polyserve_worker.mirror_config``): copy a share of each served model's
    requests to the canary at ``target`` (host:port of its gRPC Service) and compare; an
    empty config turns mirroring off."""
    models: dict[str, worker_mirror.ModelMirror] = {}
    if mirror is not None and target and revision:
        compare = {
            name: tolerance.model_dump(by_alias=True, exclude_none=True)
            for name, tolerance in (
                mirror.compare or {"*": api.Tolerance(max_abs_diff=1e-4, max_rel_diff=1e-3)}
            ).items()
        }
        tls = None
        if w.tls is not None:
            # Both revisions serve spec.tls's certificate, whose names cover the Service's;
            # the worker verifies it with the Secret's ca.crt beside its own.
            tls = {"serverName": f"{w.name}.{w.owner.namespace}.svc"}
        for served in w.models:
            models[served.name] = worker_mirror.ModelMirror.model_validate(
                {
                    "target": target,
                    "revision": revision,
                    "percent": mirror.percent,
                    "rate": mirror.rate,
                    "queue": mirror.queue,
                    "compare": compare,
                    "tls": tls,
                }
            )
    text = worker_mirror.render(worker_mirror.MirrorConfig(models=models))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": workloads.metadata(w, mirror_config_name(w)),
        "data": {workloads.MIRROR_KEY: text},
    }


def steady(w: workloads.Workload, cfg: settings.Settings) -> list[Obj]:
    """What a canary workload runs with no rollout under way (``polyserve render`` shows
    this): its revision's Deployment, the Services, the route with all weight on stable."""
    rev = workloads.revision(w, cfg)
    name = workloads.revision_name(w, rev)
    objects = [
        workloads.config_map(w, cfg),
        workloads.deployment(w, cfg, name=name, per_revision=True),
        workloads.service(w, revision_=rev),
        workloads.service(w, name=stable_service_name(w), revision_=rev),
        mirror_config(w, None, None, None),
    ]
    gateway = routing(w)
    if gateway is not None:
        objects.append(route(w, gateway, None, 0))
    budget = workloads.disruption_budget(w)
    if budget is not None:
        objects.append(budget)
    if w.scaling is not None:
        objects += scaling.objects(w, w.scaling, name, cfg.prometheus.url)
    return objects

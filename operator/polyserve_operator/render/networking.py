"""A workload's NetworkPolicy: who may connect to its worker pods.

One policy per workload, named after it, selecting every revision's pods (the selector
labels, not the revision), ingress only: egress stays open, since fetch init containers
reach object stores and registries the operator cannot know. What it lets in:

- HTTP (8000) and gRPC (8001): ``spec.network.allowFrom``, or every pod of the workload's
  namespace when unset; always the workload's own pods, because the stable pods of a canary
  copy requests to the canary's gRPC port; always the namespaces of the Gateways a canary's
  route attaches to (a route's parentRef without a namespace is in the route's namespace);
- metrics (8002): the operator's namespace (canary analysis and tiers read the pods'
  ``/metrics``) and the monitoring namespaces of the settings (Prometheus).

The kubelet's probes come from the node and are not subject to NetworkPolicies in the
common CNIs. Pure functions: no I/O.
"""

from __future__ import annotations

from typing import Any

from polyserve_operator import api, settings
from polyserve_operator.render import canaries, workloads

Obj = dict[str, Any]

API_VERSION = "networking.k8s.io/v1"
#: The label the API server puts on every namespace (Kubernetes 1.22+): its own name.
NAMESPACE_NAME = "kubernetes.io/metadata.name"


def _namespaces(names: list[str]) -> Obj:
    return {
        "namespaceSelector": {
            "matchExpressions": [{"key": NAMESPACE_NAME, "operator": "In", "values": names}]
        }
    }


def _peer(peer: api.NetworkPeer) -> Obj:
    return peer.model_dump(mode="json", by_alias=True, exclude_none=True)


def _gateway_namespaces(w: workloads.Workload) -> list[str]:
    """The namespaces of the Gateways a canary's route attaches to, other than its own."""
    gateway = canaries.routing(w)
    if gateway is None:
        return []
    found = {ref.namespace for ref in gateway.parent_refs if ref.namespace}
    return sorted(found - {w.owner.namespace})


def _ports(*numbers: int) -> list[Obj]:
    return [{"protocol": "TCP", "port": number} for number in numbers]


def clients(w: workloads.Workload) -> list[Obj]:
    """The peers allowed on the serving ports (see the module docstring)."""
    network = w.network or api.Network()
    if network.allow_from is None:
        peers: list[Obj] = [{"podSelector": {}}]  # this namespace, the workload's pods too
    else:
        peers = [_peer(p) for p in network.allow_from]
        peers.append({"podSelector": {"matchLabels": workloads.labels(w)}})
    gateways = _gateway_namespaces(w)
    if gateways:
        peers.append(_namespaces(gateways))
    return peers


def scrapers(cfg: settings.Settings) -> list[Obj]:
    """The peers allowed on the metrics port: the operator's and monitoring namespaces."""
    names = list(cfg.network_policy.metrics_namespaces)
    if cfg.operator_namespace and cfg.operator_namespace not in names:
        names.append(cfg.operator_namespace)
    return [_namespaces(sorted(names))] if names else []


def network_policy(w: workloads.Workload, cfg: settings.Settings) -> Obj | None:
    """The workload's NetworkPolicy; None when the settings turn them off."""
    if not cfg.network_policy.enabled:
        return None
    ingress: list[Obj] = [
        {"from": clients(w), "ports": _ports(workloads.HTTP_PORT, workloads.GRPC_PORT)}
    ]
    metrics = scrapers(cfg)
    if metrics:
        ingress.append({"from": metrics, "ports": _ports(workloads.METRICS_PORT)})
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": workloads.metadata(w),
        "spec": {
            "podSelector": {"matchLabels": workloads.labels(w)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }

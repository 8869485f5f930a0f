"""The built-in kinds the sandbox serves, with the names, scopes and subresources of a real
Kubernetes 1.3x server (what ``kubectl api-resources`` shows there).

Served with behaviour: Namespace, Pod (+status, log, binding), Service (+status), Deployment
and ReplicaSet (+status, scale), ConfigMap and Secret (immutable, stringData), Node,
CustomResourceDefinition. Stored only (no controller acts on them here): Endpoints,
EndpointSlice, ServiceAccount, Events, PodDisruptionBudget, Lease, RBAC, webhook
configurations, HorizontalPodAutoscaler, Gateway API routes.
"""

from __future__ import annotations

from typing import Any

from polyserve_sandbox.apiserver.resources import Resource

STATUS = frozenset({"status"})
ALL = ("all",)


def _core(kind: str, plural: str, **kw: Any) -> Resource:
    return Resource(group="", version="v1", kind=kind, plural=plural, singular=kind.lower(), **kw)


def _of(group: str, version: str, kind: str, plural: str, **kw: Any) -> Resource:
    return Resource(
        group=group, version=version, kind=kind, plural=plural, singular=kind.lower(), **kw
    )


RESOURCES: tuple[Resource, ...] = (
    _core(
        "Namespace",
        "namespaces",
        namespaced=False,
        short_names=("ns",),
        subresources=STATUS,
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    _core("Node", "nodes", namespaced=False, short_names=("no",), subresources=STATUS),
    _core(
        "Pod",
        "pods",
        short_names=("po",),
        categories=ALL,
        subresources=frozenset({"status", "log", "binding"}),
    ),
    _core(
        "Service",
        "services",
        short_names=("svc",),
        categories=ALL,
        subresources=STATUS,
        verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"),
    ),
    _core("Endpoints", "endpoints", short_names=("ep",)),
    _core("ConfigMap", "configmaps", short_names=("cm",)),
    _core("Secret", "secrets"),
    _core("ServiceAccount", "serviceaccounts", short_names=("sa",)),
    _core("Event", "events", short_names=("ev",)),
    _of(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        short_names=("deploy",),
        categories=ALL,
        subresources=frozenset({"status", "scale"}),
    ),
    _of(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        short_names=("rs",),
        categories=ALL,
        subresources=frozenset({"status", "scale"}),
    ),
    _of("events.k8s.io", "v1", "Event", "events", short_names=("ev",)),
    _of("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    _of(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        short_names=("pdb",),
        subresources=STATUS,
    ),
    _of("coordination.k8s.io", "v1", "Lease", "leases"),
    _of(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        short_names=("hpa",),
        categories=ALL,
        subresources=STATUS,
    ),
    _of("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    _of("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False),
    _of("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
    _of(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        namespaced=False,
    ),
    _of(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        namespaced=False,
    ),
    _of(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        namespaced=False,
    ),
    _of(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        namespaced=False,
        short_names=("crd", "crds"),
        subresources=STATUS,
    ),
    _of(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
        "httproutes",
        categories=("gateway-api",),
        subresources=STATUS,
    ),
    _of(
        "gateway.networking.k8s.io",
        "v1",
        "GRPCRoute",
        "grpcroutes",
        categories=("gateway-api",),
        subresources=STATUS,
    ),
)

NAMESPACE = RESOURCES[0]
CRD = next(r for r in RESOURCES if r.kind == "CustomResourceDefinition")

# Namespaces present from the start, as on a fresh cluster; the real server refuses to
# delete these ("this namespace may not be deleted").
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})

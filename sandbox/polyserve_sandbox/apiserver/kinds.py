"""The built-in kinds the sandbox serves, with the names, scopes and subresources of a real
Kubernetes 1.3x server (what ``kubectl api-resources`` shows there).

Served with behaviour: Namespace, Pod (+status, log, binding), Service (+status), Deployment
and ReplicaSet (+status, scale), Job (+status), ConfigMap and Secret (immutable, stringData),
Node, CustomResourceDefinition. Stored only (no controller acts on them here): Endpoints,
EndpointSlice, ServiceAccount, Events, PodDisruptionBudget, NetworkPolicy (not enforced),
Lease, RBAC, webhook configurations, HorizontalPodAutoscaler, ReferenceGrants. The Gateway
API's GatewayClass, Gateway, HTTPRoute and GRPCRoute are served as their CRDs serve them
(names, categories, printer columns, ``status``) and acted on by
``polyserve_sandbox.gateways``; they are stored as written, without the CRDs' schema
defaults or validation.
"""

from __future__ import annotations

from typing import Any

from polyserve_sandbox.apiserver.resources import Resource

STATUS = frozenset({"status"})
ALL = ("all",)
GATEWAY_API = "gateway.networking.k8s.io"


def _column(name: str, path: str, kind: str = "string", priority: int = 0) -> dict[str, Any]:
    """A printer column as the Gateway API CRDs declare theirs."""
    column: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        column["priority"] = priority
    return column


_ROUTE_COLUMNS = (
    _column("Hostnames", ".spec.hostnames"),
    _column("Age", ".metadata.creationTimestamp", "date"),
)


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
    _of("batch", "v1", "Job", "jobs", categories=ALL, subresources=STATUS),
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
    # Stored, never enforced: the sandbox's pods share this machine's loopback network.
    _of("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", short_names=("netpol",)),
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
        GATEWAY_API,
        "v1",
        "GatewayClass",
        "gatewayclasses",
        namespaced=False,
        short_names=("gc",),
        categories=("gateway-api",),
        subresources=STATUS,
        printer_columns=(
            _column("Controller", ".spec.controllerName"),
            _column("Accepted", '.status.conditions[?(@.type=="Accepted")].status'),
            _column("Age", ".metadata.creationTimestamp", "date"),
            _column("Description", ".spec.description", priority=1),
        ),
    ),
    _of(
        GATEWAY_API,
        "v1",
        "Gateway",
        "gateways",
        short_names=("gtw",),
        categories=("gateway-api",),
        subresources=STATUS,
        printer_columns=(
            _column("Class", ".spec.gatewayClassName"),
            _column("Address", ".status.addresses[*].value"),
            _column("Programmed", '.status.conditions[?(@.type=="Programmed")].status'),
            _column("Age", ".metadata.creationTimestamp", "date"),
        ),
    ),
    _of(
        GATEWAY_API,
        "v1",
        "HTTPRoute",
        "httproutes",
        categories=("gateway-api",),
        subresources=STATUS,
        printer_columns=_ROUTE_COLUMNS,
    ),
    _of(
        GATEWAY_API,
        "v1",
        "GRPCRoute",
        "grpcroutes",
        categories=("gateway-api",),
        subresources=STATUS,
        printer_columns=_ROUTE_COLUMNS,
    ),
    *(
        _of(
            GATEWAY_API,
            version,
            "ReferenceGrant",
            "referencegrants",
            short_names=("refgrant",),
            categories=("gateway-api",),
            printer_columns=(_column("Age", ".metadata.creationTimestamp", "date"),),
        )
        for version in ("v1", "v1beta1")
    ),
)

NAMESPACE = RESOURCES[0]
CRD = next(r for r in RESOURCES if r.kind == "CustomResourceDefinition")

# Namespaces present from the start, as on a fresh cluster; the real server refuses to
# delete these ("this namespace may not be deleted").
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})

"""What the operator knows of the world: kopf's in-memory indexes, not API reads.

kopf watches the operator's own resources and every object the operator owns (selected on
the server by the ``app.kubernetes.io/managed-by`` label) and keeps them in indexes keyed by
``(namespace, name)`` of the workload. A reconcile reads a ``World`` built from those
indexes, so observing a resource costs no API request: at rest, API traffic follows what
changes in the cluster, not the number of resources times a polling interval. This module
turns the index contents into plain data; it does no I/O itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from polyserve_operator import api, conditions

Obj = dict[str, Any]
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

    deployment: Obj | None = None
    replica_sets: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    config_maps: list[Obj] = field(default_factory=list)
    service: Obj | None = None
    disruption_budget: Obj | None = None

    def observation(self) -> conditions.Observation:
        return conditions.Observation(deployment=self.deployment, pods=self.pods)

    def present(self, kind: str, name: str) -> Obj | None:
        """The owned object of ``kind`` named ``name``, if it exists."""
        candidates: list[Obj] = {
            "Deployment": [self.deployment] if self.deployment else [],
            "ReplicaSet": self.replica_sets,
            "Pod": self.pods,
            "ConfigMap": self.config_maps,
            "Service": [self.service] if self.service else [],
            "PodDisruptionBudget": [self.disruption_budget] if self.disruption_budget else [],
        }[kind]
        return next((o for o in candidates if o["metadata"]["name"] == name), None)


def _named(objects: list[Obj], name: str) -> Obj | None:
    return next((o for o in objects if o.get("metadata", {}).get("name") == name), None)


def children(indexes: Mapping[str, Index], namespace: str, name: str) -> Children:
    """The owned objects of the workload ``namespace/name`` from the per-kind indexes."""

    def of(kind: str) -> list[Obj]:
        index = indexes.get(kind) or {}
        key = (namespace, name)
        return [dict(o) for o in index[key]] if key in index else []

    deployments = of("Deployment")
    services = of("Service")
    budgets = of("PodDisruptionBudget")
    return Children(
        deployment=_named(deployments, name),
        replica_sets=of("ReplicaSet"),
        pods=of("Pod"),
        config_maps=of("ConfigMap"),
        service=_named(services, name),
        disruption_budget=_named(budgets, name),
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

"""Reads the world: a workload's Deployment and pods, and an ensemble's member models.

Worker metrics (for canary analysis and query tiers) will be read here too; the rest of the
operator sees only ``conditions.Observation`` and parsed resources.
"""

from __future__ import annotations

import pydantic

from polyserve_operator import api, conditions, k8s
from polyserve_operator.render import workloads


def workload(client: k8s.Client, w: workloads.Workload) -> conditions.Observation:
    """The Deployment of a workload and its pods (selected by the workload's labels)."""
    namespace = w.owner.namespace
    deployment = client.get("apps/v1", "Deployment", namespace, w.name)
    pods = client.list("v1", "Pod", namespace, workloads.labels(w))
    return conditions.Observation(deployment=deployment, pods=pods)


def members(
    client: k8s.Client, namespace: str, names: set[str]
) -> dict[str, api.InferenceModel | None]:
    """The InferenceModels an ensemble references; None for a missing or invalid one."""
    found: dict[str, api.InferenceModel | None] = {}
    for name in sorted(names):
        body = client.get(api.API_VERSION, "InferenceModel", namespace, name)
        try:
            found[name] = api.InferenceModel.model_validate(body) if body else None
        except pydantic.ValidationError:
            found[name] = None
    return found


def exists(client: k8s.Client, kind: str, namespace: str, name: str) -> bool:
    """Whether a resource of ``kind`` named ``name`` is in ``namespace``."""
    return client.get(api.API_VERSION, kind, namespace, name) is not None

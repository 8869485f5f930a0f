"""Pure rendering: a custom resource (and what it references) -> desired Kubernetes objects.

No I/O, no kopf, no Kubernetes client: ``polyserve render`` and the unit tests call the
same functions the handlers call, so what a reviewer sees is what the operator applies.
"""

from __future__ import annotations

from typing import Any

from polyserve_operator import api, settings
from polyserve_operator.render import canaries, modelconfigs, networking, scaling, workloads

Obj = dict[str, Any]


def _owner(kind: str, meta: api.Metadata) -> workloads.Owner:
    return workloads.Owner(kind=kind, name=meta.name, namespace=meta.namespace, uid=meta.uid)


def model_workload(im: api.InferenceModel) -> workloads.Workload:
    """The workload of one InferenceModel."""
    spec = im.spec
    served = workloads.Served(
        name=im.metadata.name,
        pbtxt=modelconfigs.for_model(im.metadata.name, spec).to_pbtxt(),
        artifact=spec.artifact,
        builds_engines=modelconfigs.builds_engines(spec),
    )
    return workloads.Workload(
        owner=_owner("InferenceModel", im.metadata),
        hardware=spec.hardware,
        models=[served],
        replicas=spec.replicas,
        resources=spec.resources,
        shm_size=spec.shm_size,
        engine_cache=spec.engine_cache,
        rollout=spec.rollout,
        scaling=spec.scaling,
        backend=modelconfigs.chosen_backend(spec),
        network=spec.network,
        tls=spec.tls,
    )


def ensemble_workload(
    ie: api.InferenceEnsemble, members: dict[str, api.InferenceModel]
) -> workloads.Workload:
    """The workload of an InferenceEnsemble: every member plus the ensemble's own config.

    ``members`` must hold every step's model (the caller validated the graph first).
    """
    served: list[workloads.Served] = []
    for name in sorted({step.model_ref for step in ie.spec.steps}):
        member = members[name]
        served.append(
            workloads.Served(
                name=name,
                pbtxt=modelconfigs.for_model(name, member.spec).to_pbtxt(),
                artifact=member.spec.artifact,
                builds_engines=modelconfigs.builds_engines(member.spec),
            )
        )
    served.append(
        workloads.Served(
            name=ie.metadata.name,
            pbtxt=modelconfigs.for_ensemble(ie.metadata.name, ie.spec).to_pbtxt(),
        )
    )
    return workloads.Workload(
        owner=_owner("InferenceEnsemble", ie.metadata),
        hardware=ie.spec.hardware,
        models=served,
        replicas=ie.spec.replicas,
        resources=ie.spec.resources,
        shm_size=ie.spec.shm_size,
        backend=None if ie.spec.hardware.backend == "auto" else ie.spec.hardware.backend,
        network=ie.spec.network,
        tls=ie.spec.tls,
        rollout=ie.spec.rollout,
    )


def objects(workload: workloads.Workload, cfg: settings.Settings) -> list[Obj]:
    """The workload's objects in apply order (its NetworkPolicy before the pods it guards);
    for the Canary strategy, its steady state (no rollout under way: every weight on the
    stable revision)."""
    if canaries.canary_of(workload) is not None:
        found = canaries.steady(workload, cfg)
    else:
        found = workloads.objects(workload, cfg)
        if workload.scaling is not None:
            found += scaling.objects(workload, workload.scaling, workload.name, cfg.prometheus.url)
    policy = networking.network_policy(workload, cfg)
    return [policy, *found] if policy is not None else found

"""Defaulting, as the API server does it for the built-in kinds the sandbox runs.

Registered as admission hooks on the store, so objects written by kubectl, the operator or a
controller read back as they would from a real cluster: a Deployment has its strategy,
revision history limit and progress deadline; a Pod its restart policy, grace period,
termination message path and phase; a Job its counts, selector and pod labels. Only the
fields something here reads are defaulted.
"""

from __future__ import annotations

from typing import Any

from polyserve_sandbox import jobs
from polyserve_sandbox.apiserver import errors
from polyserve_sandbox.apiserver import store as apistore

Obj = dict[str, Any]


def _container(container: Obj) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    image = str(container.get("image", ""))
    latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
    container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")


def pod_spec(spec: Obj) -> None:
    """Defaults of a pod spec (also inside Deployment and ReplicaSet templates)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        _container(container)


def pod(operation: str, new: Obj, old: Obj | None) -> None:
    if operation != "CREATE":
        return
    pod_spec(new.setdefault("spec", {}))
    status = new.setdefault("status", {})
    status.setdefault("phase", "Pending")


def deployment(operation: str, new: Obj, old: Obj | None) -> None:
    if operation not in ("CREATE", "UPDATE"):
        return
    spec = new.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault("minReadySeconds", 0)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", "25%")
        rolling.setdefault("maxUnavailable", "25%")
    pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))


def replica_set(operation: str, new: Obj, old: Obj | None) -> None:
    if operation not in ("CREATE", "UPDATE"):
        return
    spec = new.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))


def job(operation: str, new: Obj, old: Obj | None) -> None:
    """A Job's counts, its selector and its pods' labels. The selector matches the job-name
    label: a real server selects by controller-uid, which this one assigns only after
    admission (the Job controller puts it on every pod it creates)."""
    if operation != "CREATE":
        return
    spec = new.setdefault("spec", {})
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    name = new["metadata"].get("name", "")
    template = spec.setdefault("template", {})
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    labels.setdefault(jobs.JOB_NAME, name)
    labels.setdefault(jobs.LEGACY_JOB_NAME, name)
    spec.setdefault("selector", {"matchLabels": {jobs.JOB_NAME: name}})
    restart = template.setdefault("spec", {}).get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        raise errors.invalid(
            "Job",
            "batch",
            name,
            [
                errors.Cause(
                    "spec.template.spec.restartPolicy",
                    f'Unsupported value: "{restart or "Always"}": supported values: '
                    '"OnFailure", "Never"',
                    "FieldValueNotSupported",
                )
            ],
        )
    pod_spec(template["spec"])


def register(store: apistore.Store) -> None:
    """Add every defaulting hook to ``store``."""
    store.add_admission("v1", "Pod", pod)
    store.add_admission("apps/v1", "Deployment", deployment)
    store.add_admission("apps/v1", "ReplicaSet", replica_set)
    store.add_admission("batch/v1", "Job", job)

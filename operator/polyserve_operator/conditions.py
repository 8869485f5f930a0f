"""Status that can be trusted: conditions computed from the real Deployment and pods.

``Ready`` is True only when every desired replica of the current revision passes its
readiness probe (which the worker passes only once its models are loaded) and no pod is
crash-looping, failing to pull, or unschedulable; ``Degraded`` names what is wrong, with the
fix; ``Progressing`` says a rollout is under way. Conditions keep their
``lastTransitionTime`` while their status stays the same. Pure functions.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

# Container waiting reasons that will not fix themselves.
BAD_WAITING = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass(frozen=True)
class Observation:
    """What the operator saw of a workload: its Deployment (None if absent) and pods."""

    deployment: Obj | None
    pods: list[Obj] = field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def rfc3339(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def last_line(message: str, limit: int = 400) -> str:
    """The last non-empty line of a termination message (with FallbackToLogsOnError, the tail
    of the container's log: the worker and the fetch end theirs with the reason)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _exit(terminated: Obj) -> str:
    text = f"{terminated.get('reason', 'Error')}, code {terminated.get('exitCode')}"
    message = last_line(str(terminated.get("message") or ""))
    return f"{text}: {message}" if message else text


def _container_problems(pod: Obj) -> list[Problem]:
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status", {}) or {}
    found = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            terminated = state.get("terminated") or {}
            reason = waiting.get("reason")
            if reason in BAD_WAITING:
                message = f"pod {name}, container {cs.get('name')}: {reason}"
                if waiting.get("message"):
                    message += f": {last_line(str(waiting['message']))}"
                last = (cs.get("lastState") or {}).get("terminated") or {}
                if last:
                    message += f" (last exit: {_exit(last)})"
            elif terminated and terminated.get("exitCode") not in (None, 0):
                # Exited with an error, not yet restarted: already say why.
                reason = str(terminated.get("reason") or "Error")
                message = f"pod {name}, container {cs.get('name')} exited: {_exit(terminated)}"
            elif _retrying(cs):
                # Between two back-offs the kubelet runs it again: still the same crash loop
                # until it becomes ready (or an init container exits 0), so Degraded does not
                # flap with every retry.
                last = (cs.get("lastState") or {}).get("terminated") or {}
                reason = "CrashLoopBackOff"
                message = (
                    f"pod {name}, container {cs.get('name')}: restarted "
                    f"{cs.get('restartCount')} time(s), trying again (last exit: {_exit(last)})"
                )
            else:
                continue
            if cs.get("name", "").startswith("fetch-"):
                message += "; the artifact fetch fails: check artifact.uri and its secretRef"
            found.append(Problem(reason, message))
    return found


def _retrying(cs: Obj) -> bool:
    """Running again after an error exit, and not ready yet."""
    last = (cs.get("lastState") or {}).get("terminated") or {}
    running = "running" in (cs.get("state") or {})
    failed_before = last.get("exitCode") not in (None, 0)
    return running and failed_before and not cs.get("ready") and cs.get("restartCount", 0) > 0


def pod_problems(pods: list[Obj], placement_hint: str) -> list[Problem]:
    """Pods that will not become Ready by themselves, and why."""
    found: list[Problem] = []
    for pod in pods:
        meta = pod.get("metadata", {})
        if meta.get("deletionTimestamp"):
            continue
        name = meta.get("name", "?")
        status = pod.get("status", {}) or {}
        phase = status.get("phase")
        if phase == "Failed":
            found.append(
                Problem(
                    "PodFailed",
                    f"pod {name} failed: {status.get('message') or status.get('reason', '')}",
                )
            )
            continue
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                found.append(
                    Problem(
                        "Unschedulable",
                        f"pod {name} is Pending: {cond.get('message', 'no node fits')}. "
                        f"It needs a {placement_hint}.",
                    )
                )
        found += _container_problems(pod)
    return found


def _deployment_problems(dep: Obj) -> list[Problem]:
    found = []
    for cond in (dep.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            found.append(Problem("ProgressDeadlineExceeded", cond.get("message", "")))
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            found.append(Problem("ReplicaFailure", cond.get("message", "")))
    return found


def _condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int | None,
    previous: dict[str, Obj],
    now: str,
) -> Obj:
    value = "True" if status else "False"
    before = previous.get(kind)
    since = before["lastTransitionTime"] if before and before.get("status") == value else now
    cond: Obj = {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def compute(
    *,
    generation: int | None,
    desired_replicas: int,
    observation: Observation | None,
    previous: Obj | None,
    now: datetime.datetime,
    placement_hint: str = "matching node",
    failure: Problem | None = None,
) -> Obj:
    """The status fields (camelCase, as in the CRD) for one resource.

    ``failure`` is a problem found before looking at pods (an invalid spec, a failed apply);
    ``previous`` is the resource's current status, for transition times and lastFailure.
    """
    previous = previous or {}
    prior = {c["type"]: c for c in previous.get("conditions") or [] if "type" in c}
    stamp = rfc3339(now)
    dep = observation.deployment if observation else None
    dep_status = (dep or {}).get("status") or {}
    ready = int(dep_status.get("readyReplicas") or 0)
    updated = int(dep_status.get("updatedReplicas") or 0)
    total = int(dep_status.get("replicas") or 0)
    dep_generation = int(((dep or {}).get("metadata") or {}).get("generation") or 0)
    dep_observed = int(dep_status.get("observedGeneration") or 0)

    problems: list[Problem] = []
    if failure is not None:
        problems.append(failure)
    if observation is not None:
        if dep is not None:
            problems += _deployment_problems(dep)
        problems += pod_problems(observation.pods, placement_hint)

    caught_up = dep is not None and dep_observed >= dep_generation
    complete = caught_up and updated >= desired_replicas and ready >= desired_replicas
    counts = f"{ready}/{desired_replicas} replicas ready, {updated} updated"
    if problems:
        first = problems[0]
        ready_cond = (False, first.reason, first.message)
    elif desired_replicas == 0:
        ready_cond = (False, "ScaledToZero", "replicas is 0: no pod serves")
    elif dep is None:
        ready_cond = (False, "Creating", "the Deployment does not exist yet")
    elif complete:
        ready_cond = (True, "AllReplicasReady", counts)
    else:
        ready_cond = (False, "ReplicasNotReady", counts + "; models load before pods are Ready")
    rolling = dep is None or not complete or total > desired_replicas
    if failure is not None:
        progressing = (False, failure.reason, failure.message)
    elif rolling and desired_replicas > 0:
        progressing = (True, "RollingOut", counts)
    else:
        progressing = (False, "RolloutComplete" if desired_replicas else "ScaledToZero", counts)
    degraded = (
        (True, problems[0].reason, "; ".join(p.message for p in problems[:3]))
        if problems
        else (False, "AsExpected", "no problem seen")
    )
    conds = [
        _condition("Ready", *ready_cond, generation=generation, previous=prior, now=stamp),
        _condition("Progressing", *progressing, generation=generation, previous=prior, now=stamp),
        _condition("Degraded", *degraded, generation=generation, previous=prior, now=stamp),
    ]
    result: Obj = {
        "observedGeneration": generation,
        "conditions": conds,
        "replicas": total,
        "readyReplicas": ready,
    }
    old_failure = previous.get("lastFailure")
    if problems:
        first = problems[0]
        same = (
            old_failure
            and old_failure.get("reason") == first.reason
            and old_failure.get("message") == first.message
        )
        result["lastFailure"] = (
            old_failure
            if same
            else {"reason": first.reason, "message": first.message, "time": stamp}
        )
    elif ready_cond[0]:
        result["lastFailure"] = None  # a merge patch with null removes it
    return result

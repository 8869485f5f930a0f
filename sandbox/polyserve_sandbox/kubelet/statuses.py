"""A pod's ``status`` from its containers' statuses, by the kubelet's rules.

The phase follows ``getPhase`` (kubelet_pods.go): init containers still to succeed keep a
pod Pending, a failed one fails it under ``restartPolicy: Never``; then waiting containers
mean Pending, running ones Running, and stopped ones Succeeded or Failed once the pod is
terminal (or Running while they restart). Conditions follow ``status/generate.go``:
PodReadyToStartContainers, Initialized, Ready, ContainersReady and PodScheduled, with the
kubelet's reasons and messages (``containers with unready status: [worker]``); a
condition's ``lastTransitionTime`` moves only when its status does. Restartable init
containers (sidecars) count as the kubelet counts them: started before the next init
container, ready like a container, not holding the phase once they stop.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")


def _go_list(names: list[str]) -> str:
    return "[" + " ".join(names) + "]"


def sidecars(spec: Obj) -> set[str]:
    """The restartable init containers (``restartPolicy: Always``) of a pod."""
    return {
        c["name"] for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"
    }


def _started(regular: list[Obj]) -> bool:
    return any("running" in s["state"] or "terminated" in s["state"] for s in regular)


def phase(spec: Obj, init: list[Obj], regular: list[Obj], *, terminal: bool) -> str:
    policy = spec.get("restartPolicy", "Always")
    restartable = sidecars(spec)
    pending_init = failed_init = 0
    running = waiting = stopped = succeeded = 0
    for status in init:
        state, last = status["state"], status.get("lastState") or {}
        if status["name"] in restartable:
            if "running" in state:
                pending_init += not status.get("started")
                running += 1
            elif "waiting" in state and "terminated" not in last:
                pending_init += 1
                waiting += 1
            continue
        if "running" in state:
            pending_init += 1
        elif "terminated" in state:
            failed_init += state["terminated"]["exitCode"] != 0
        elif "terminated" in last:
            failed_init += last["terminated"]["exitCode"] != 0
        else:
            pending_init += 1
    for status in regular:
        state, last = status["state"], status.get("lastState") or {}
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"]["exitCode"] == 0
        elif "terminated" in last:
            stopped += 1
        else:
            waiting += 1
    if failed_init and policy == "Never":
        return "Failed"
    if (pending_init and not _started(regular)) or waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if policy == "Never" else "Running"
    return "Pending"


def _initialized(spec: Obj, init: list[Obj], regular: list[Obj], pod_phase: str) -> Obj:
    if pod_phase == "Succeeded":
        return {"type": "Initialized", "status": "True", "reason": "PodCompleted"}
    if _started(regular):
        return {"type": "Initialized", "status": "True"}
    restartable = sidecars(spec)
    incomplete = [
        s["name"]
        for s in init
        if not (s.get("started") if s["name"] in restartable else s["ready"])
    ]
    if incomplete:
        return {
            "type": "Initialized",
            "status": "False",
            "reason": "ContainersNotInitialized",
            "message": f"containers with incomplete status: {_go_list(incomplete)}",
        }
    return {"type": "Initialized", "status": "True"}


def _containers_ready(spec: Obj, init: list[Obj], regular: list[Obj], pod_phase: str) -> Obj:
    if pod_phase in ("Succeeded", "Failed"):
        reason = "PodCompleted" if pod_phase == "Succeeded" else "PodFailed"
        return {"type": "ContainersReady", "status": "False", "reason": reason}
    restartable = sidecars(spec)
    side = [s for s in init if s["name"] in restartable]
    unready = [s["name"] for s in [*side, *regular] if not s["ready"]]
    if unready:
        return {
            "type": "ContainersReady",
            "status": "False",
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: {_go_list(unready)}",
        }
    return {"type": "ContainersReady", "status": "True"}


def _ready(spec: Obj, containers_ready: Obj, conditions: dict[str, Obj]) -> Obj:
    if containers_ready["status"] != "True":
        return {**containers_ready, "type": "Ready"}
    unready = []
    for gate in spec.get("readinessGates") or []:
        kind = gate["conditionType"]
        condition = conditions.get(kind)
        if condition is None:
            unready.append(
                f'corresponding condition of pod readiness gate "{kind}" does not exist.'
            )
        elif condition.get("status") != "True":
            unready.append(
                f'the status of pod readiness gate "{kind}" is not "True", but '
                f"{condition.get('status')}"
            )
    if unready:
        return {
            "type": "Ready",
            "status": "False",
            "reason": "ReadinessGatesNotReady",
            "message": ", ".join(unready),
        }
    return {"type": "Ready", "status": "True"}


def conditions(
    spec: Obj,
    init: list[Obj],
    regular: list[Obj],
    pod_phase: str,
    *,
    sandbox_ready: bool,
    others: list[Obj],
) -> list[Obj]:
    """The kubelet's conditions (without times), after the ones others own (``others``)."""
    by_type = {c["type"]: c for c in others}
    ready_to_start: Obj = {"type": "PodReadyToStartContainers", "status": "True"}
    if not sandbox_ready:
        ready_to_start = {"type": "PodReadyToStartContainers", "status": "False"}
    containers_ready = _containers_ready(spec, init, regular, pod_phase)
    kept = [c for c in others if c["type"] not in (*KUBELET_CONDITIONS, "PodScheduled")]
    scheduled = by_type.get("PodScheduled") or {"type": "PodScheduled", "status": "True"}
    return [
        *kept,
        ready_to_start,
        _initialized(spec, init, regular, pod_phase),
        _ready(spec, containers_ready, by_type),
        containers_ready,
        scheduled,
    ]


def stamp(current: list[Obj], previous: list[Obj], now: str) -> list[Obj]:
    """Give each condition ``lastProbeTime`` and a ``lastTransitionTime`` that moves only
    when its status changes."""
    before = {c["type"]: c for c in previous}
    result = []
    for condition in current:
        old = before.get(condition["type"])
        moment = condition.get("lastTransitionTime")
        if moment is None:
            same = old is not None and old.get("status") == condition["status"]
            moment = old.get("lastTransitionTime") if same and old is not None else now
        result.append({**condition, "lastProbeTime": None, "lastTransitionTime": moment})
    return result


def qos_class(spec: Obj) -> str:
    """Guaranteed, Burstable or BestEffort, from the containers' requests and limits."""
    containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
    requests_any = limits_all = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if requests or limits:
            requests_any = True
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
        limits_all = limits_all or bool(limits)
    if not requests_any:
        return "BestEffort"
    return "Guaranteed" if guaranteed and limits_all else "Burstable"

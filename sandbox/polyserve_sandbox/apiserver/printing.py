"""The cells of the built-in kinds' table rows, by the rules of the real server's printers
(``pkg/printers/internalversion/printers.go``): Pod status and restarts, Deployment
readiness, Service ports and addresses, Node status and roles, Event summaries, ages.
"""

from __future__ import annotations

import datetime
from typing import Any

from polyserve_sandbox.apiserver import selectors

Obj = dict[str, Any]


def human_duration(seconds: float) -> str:
    """``duration.HumanDuration``: 45s, 3m20s, 12m, 5h30m, 30h, 3d4h, 20d, 2y30d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, (hours // 24) % 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_time(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def since(text: Any, now: datetime.datetime) -> str:
    """``translateTimestampSince``: the age of an RFC 3339 time, "<unknown>" without one."""
    moment = parse_time(text)
    if moment is None:
        return "<unknown>"
    return human_duration((now - moment).total_seconds())


def _selector(selector: Obj | None) -> str:
    text = selectors.format_labels(selectors.from_object(selector)) if selector else ""
    return text or "<none>"


def _containers(spec: Obj) -> tuple[str, str]:
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    return (
        ",".join(str(c.get("name", "")) for c in containers),
        ",".join(str(c.get("image", "")) for c in containers),
    )


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _age(obj: Obj, now: datetime.datetime) -> str:
    return since(_meta(obj).get("creationTimestamp"), now)


def pod(obj: Obj, now: datetime.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}
    sidecars = {n for n, c in init_specs.items() if c.get("restartPolicy") == "Always"}
    total, ready, restarts = len(spec.get("containers") or []) + len(sidecars), 0, 0
    sidecar_restarts = 0
    last_restart = sidecar_last = ""
    reason = status.get("reason") or status.get("phase") or ""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"
    initializing = False
    init_statuses = status.get("initContainerStatuses") or []
    for index, container in enumerate(init_statuses):
        restarts += int(container.get("restartCount") or 0)
        finished = ((container.get("lastState") or {}).get("terminated") or {}).get(
            "finishedAt"
        ) or ""
        last_restart = max(last_restart, finished)
        if container.get("name") in sidecars:
            sidecar_restarts += int(container.get("restartCount") or 0)
            sidecar_last = max(sidecar_last, finished)
        state = container.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        if container.get("name") in sidecars and container.get("started"):
            ready += 1 if container.get("ready") else 0
            continue
        if terminated:
            if terminated.get("reason"):
                reason = "Init:" + terminated["reason"]
            elif terminated.get("signal"):
                reason = f"Init:Signal:{terminated['signal']}"
            else:
                reason = f"Init:ExitCode:{terminated.get('exitCode', 0)}"
        elif waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{len(spec.get('initContainers') or [])}"
        initializing = True
        break
    initialized = any(
        c.get("type") == "Initialized" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not initializing or initialized:
        restarts, last_restart = sidecar_restarts, sidecar_last
        running = False
        for container in reversed(status.get("containerStatuses") or []):
            restarts += int(container.get("restartCount") or 0)
            finished = ((container.get("lastState") or {}).get("terminated") or {}).get(
                "finishedAt"
            ) or ""
            last_restart = max(last_restart, finished)
            state = container.get("state") or {}
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated:
                signal = terminated.get("signal")
                reason = (
                    f"Signal:{signal}" if signal else f"ExitCode:{terminated.get('exitCode', 0)}"
                )
            elif container.get("ready") and state.get("running") is not None:
                running = True
                ready += 1
        if reason == "Completed" and running:
            ready_condition = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            reason = "Running" if ready_condition else "NotReady"
    if _meta(obj).get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif status.get("phase") not in ("Succeeded", "Failed"):
            reason = "Terminating"
    restart_text = str(restarts)
    if restarts and last_restart:
        restart_text = f"{restarts} ({since(last_restart, now)} ago)"
    ips = status.get("podIPs") or []
    ip = (ips[0] or {}).get("ip") if ips else status.get("podIP")
    gates = spec.get("readinessGates") or []
    gate_text = "<none>"
    if gates:
        true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        gate_text = f"{sum(1 for g in gates if g.get('conditionType') in true)}/{len(gates)}"
    return [
        _meta(obj).get("name", ""),
        f"{ready}/{total}",
        reason,
        restart_text,
        _age(obj, now),
        ip or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gate_text,
    ]


def deployment(obj: Obj, now: datetime.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers((spec.get("template") or {}).get("spec") or {})
    return [
        _meta(obj).get("name", ""),
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        int(status.get("updatedReplicas", 0)),
        int(status.get("availableReplicas", 0)),
        _age(obj, now),
        names,
        images,
        _selector(spec.get("selector")),
    ]


def replica_set(obj: Obj, now: datetime.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers((spec.get("template") or {}).get("spec") or {})
    return [
        _meta(obj).get("name", ""),
        int(spec.get("replicas", 1)),
        int(status.get("replicas", 0)),
        int(status.get("readyReplicas", 0)),
        _age(obj, now),
        names,
        images,
        _selector(spec.get("selector")),
    ]


def service(obj: Obj, now: datetime.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    kind = spec.get("type", "ClusterIP")
    external = ",".join(spec.get("externalIPs") or []) or "<none>"
    if kind == "LoadBalancer":
        ingress = [
            i.get("ip") or i.get("hostname")
            for i in (status.get("loadBalancer") or {}).get("ingress") or []
        ]
        external = ",".join(sorted(filter(None, ingress))) or "<pending>"
    elif kind == "ExternalName":
        external = spec.get("externalName", "")
    ports = []
    for port in spec.get("ports") or []:
        text = f"{port.get('port')}/{port.get('protocol', 'TCP')}"
        if port.get("nodePort"):
            text = f"{port.get('port')}:{port['nodePort']}/{port.get('protocol', 'TCP')}"
        ports.append(text)
    selector = spec.get("selector") or {}
    return [
        _meta(obj).get("name", ""),
        kind,
        spec.get("clusterIP") or "<none>",
        external,
        ",".join(ports) or "<none>",
        _age(obj, now),
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
    ]


def node(obj: Obj, now: datetime.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Unknown"
    if ready is not None:
        state = "Ready" if ready.get("status") == "True" else "NotReady"
    if spec.get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = _meta(obj).get("labels") or {}
    roles = sorted(
        {
            k.split("/", 1)[1]
            for k in labels
            if k.startswith("node-role.kubernetes.io/") and "/" in k
        }
        | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set())
    )
    info = status.get("nodeInfo") or {}
    addresses = status.get("addresses") or []

    def address(kind: str) -> str:
        return (
            next((a.get("address") for a in addresses if a.get("type") == kind), None) or "<none>"
        )

    return [
        _meta(obj).get("name", ""),
        state,
        ",".join(r for r in roles if r) or "<none>",
        _age(obj, now),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage", "<unknown>"),
        info.get("kernelVersion", "<unknown>"),
        info.get("containerRuntimeVersion", "<unknown>"),
    ]


def endpoints(obj: Obj) -> str:
    found = []
    for subset in obj.get("subsets") or []:
        ports = [p.get("port") for p in subset.get("ports") or []] or [None]
        for address in subset.get("addresses") or []:
            for port in ports:
                found.append(f"{address.get('ip')}:{port}" if port else str(address.get("ip")))
    if not found:
        return "<none>"
    shown = ",".join(found[:3])
    return shown + (f" + {len(found) - 3} more..." if len(found) > 3 else "")


def pdb(obj: Obj, now: datetime.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [
        _meta(obj).get("name", ""),
        str(spec["minAvailable"]) if "minAvailable" in spec else "N/A",
        str(spec["maxUnavailable"]) if "maxUnavailable" in spec else "N/A",
        int(status.get("disruptionsAllowed", 0)),
        _age(obj, now),
    ]


def hpa(obj: Obj, now: datetime.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    target = spec.get("scaleTargetRef") or {}
    metrics = []
    for metric in spec.get("metrics") or []:
        resource = metric.get("resource") or {}
        goal = (resource.get("target") or {}).get("averageUtilization")
        if resource and goal is not None:
            metrics.append(f"{resource.get('name')}: <unknown>/{goal}%")
    return [
        _meta(obj).get("name", ""),
        f"{target.get('kind', '')}/{target.get('name', '')}",
        ", ".join(metrics) or "<none>",
        str(spec.get("minReplicas", 1)),
        int(spec.get("maxReplicas", 0)),
        int(status.get("currentReplicas", 0)),
        _age(obj, now),
    ]


def binding(obj: Obj, now: datetime.datetime) -> list[Any]:
    role = obj.get("roleRef") or {}
    subjects = obj.get("subjects") or []

    def of(kind: str) -> str:
        names = [
            (
                f"{s.get('namespace')}/{s.get('name')}"
                if kind == "ServiceAccount"
                else str(s.get("name"))
            )
            for s in subjects
            if s.get("kind") == kind
        ]
        return ", ".join(names)

    return [
        _meta(obj).get("name", ""),
        f"{role.get('kind', '')}/{role.get('name', '')}",
        _age(obj, now),
        of("User"),
        of("Group"),
        of("ServiceAccount"),
    ]


def event(obj: Obj, now: datetime.datetime) -> list[Any]:
    """Core v1 and events.k8s.io/v1 Events alike (the latter's fields mapped)."""
    regarding = obj.get("involvedObject") or obj.get("regarding") or {}
    source = obj.get("source") or {}
    component = source.get("component") or obj.get("reportingController") or ""
    host = source.get("host") or obj.get("reportingInstance") or ""
    series = obj.get("series") or {}
    last = (
        series.get("lastObservedTime")
        or obj.get("lastTimestamp")
        or obj.get("deprecatedLastTimestamp")
        or obj.get("eventTime")
    )
    first = obj.get("firstTimestamp") or obj.get("deprecatedFirstTimestamp") or obj.get("eventTime")
    count = series.get("count") or obj.get("count") or obj.get("deprecatedCount") or 1
    return [
        since(last, now) if last else "<unknown>",
        obj.get("type", ""),
        obj.get("reason", ""),
        f"{str(regarding.get('kind', '')).lower()}/{regarding.get('name', '')}",
        regarding.get("fieldPath", ""),
        ", ".join(p for p in (component, host) if p),
        (obj.get("message") or obj.get("note") or "").strip(),
        since(first, now) if first else "<unknown>",
        str(count),
        _meta(obj).get("name", ""),
    ]

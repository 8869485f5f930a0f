"""Per-kind rules on write, as the real server's registry strategies apply them: what a
create does to ``.status``, the defaults of Pods, Deployments, ReplicaSets and Services,
Secrets' ``stringData``, immutable ConfigMaps and Secrets, Namespaces' phase and name label,
and the ``Scale`` view of Deployments and ReplicaSets.

Defaults are a useful subset of the real ones (the fields controllers and printers read),
not all of them. Not emulated: the real server's field-by-field validation of built-in
kinds (Pod spec immutability included: the sandbox's scheduler may patch ``spec.nodeName``).
"""

from __future__ import annotations

import base64
from typing import Any

from polyserve_sandbox.apiserver import errors, selectors
from polyserve_sandbox.apiserver.resources import Resource

Obj = dict[str, Any]

POD = ("", "Pod")
NAMESPACE = ("", "Namespace")
NODE = ("", "Node")
SERVICE = ("", "Service")
SECRET = ("", "Secret")
CONFIGMAP = ("", "ConfigMap")
DEPLOYMENT = ("apps", "Deployment")
REPLICASET = ("apps", "ReplicaSet")
CRD = ("apiextensions.k8s.io", "CustomResourceDefinition")
SCALABLE = (DEPLOYMENT, REPLICASET)

# Kinds whose status a create keeps (a node registers with its capacity and conditions).
_KEEP_STATUS = {NODE}


def prepare_create(resource: Resource, obj: Obj) -> None:
    """What a create does before validation: status reset or initialised, defaults."""
    key = resource.storage
    if key == POD:
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj.get("spec") or {})}
    elif key == NAMESPACE:
        obj["status"] = {"phase": "Active"}
    elif resource.has_status and key not in _KEEP_STATUS:
        obj.pop("status", None)
    apply_defaults(resource, obj)


def prepare_update(resource: Resource, obj: Obj, old: Obj) -> None:
    """What a write of the main resource does: defaults, then the immutability rules."""
    apply_defaults(resource, obj)
    if resource.storage in (CONFIGMAP, SECRET) and old.get("immutable") is True:
        _check_immutable(resource, obj, old)


def apply_defaults(resource: Resource, obj: Obj) -> None:
    key = resource.storage
    meta = obj.setdefault("metadata", {})
    if key == SECRET:
        _fold_string_data(obj)
        obj.setdefault("type", "Opaque")
    elif key == NAMESPACE:
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        spec = obj.setdefault("spec", {})
        spec.setdefault("finalizers", ["kubernetes"])
    elif key == POD:
        _pod_spec_defaults(obj.setdefault("spec", {}))
    elif key == SERVICE:
        _service_defaults(obj.setdefault("spec", {}))
    elif key in SCALABLE:
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        template = spec.get("template")
        if isinstance(template, dict):
            _pod_spec_defaults(template.setdefault("spec", {}))
        if key == DEPLOYMENT:
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            strategy = spec.setdefault("strategy", {})
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                rolling = strategy.setdefault("rollingUpdate", {})
                rolling.setdefault("maxSurge", "25%")
                rolling.setdefault("maxUnavailable", "25%")


def _pod_spec_defaults(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            if not isinstance(container, dict):
                continue
            image = str(container.get("image", ""))
            tag = image.rsplit("/", 1)[-1]
            latest = ":" not in tag or tag.endswith(":latest")
            container.setdefault(
                "imagePullPolicy", "Always" if latest and "@" not in tag else "IfNotPresent"
            )
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            for port in container.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def _service_defaults(spec: Obj) -> None:
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])


def _fold_string_data(obj: Obj) -> None:
    """Secrets: ``stringData`` is write-only, merged into base64 ``data`` (it wins)."""
    string_data = obj.pop("stringData", None)
    if not string_data:
        return
    data = obj.setdefault("data", {}) or {}
    obj["data"] = data
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()


def _check_immutable(resource: Resource, obj: Obj, old: Obj) -> None:
    name = (old.get("metadata") or {}).get("name", "")
    causes = []
    if obj.get("data") != old.get("data") or obj.get("binaryData") != old.get("binaryData"):
        field = "data" if obj.get("data") != old.get("data") else "binaryData"
        causes.append(
            errors.Cause(
                field,
                "Forbidden: field is immutable when `immutable` is set",
                "FieldValueForbidden",
            )
        )
    if obj.get("immutable") is not True:
        causes.append(
            errors.Cause(
                "immutable",
                "Forbidden: field is immutable when `immutable` is set",
                "FieldValueForbidden",
            )
        )
    if causes:
        raise errors.invalid(resource.kind, resource.group, name, causes)


def qos_class(spec: Obj) -> str:
    """BestEffort, Guaranteed or Burstable, from the containers' requests and limits."""
    containers = [c for c in (spec.get("containers") or []) if isinstance(c, dict)]
    containers += [c for c in (spec.get("initContainers") or []) if isinstance(c, dict)]
    requests_seen = limits_seen = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        requests_seen = requests_seen or bool(requests) or bool(limits)
        limits_seen = limits_seen or bool(limits)
        for name in ("cpu", "memory"):
            if name not in limits or str(requests.get(name, limits[name])) != str(limits[name]):
                guaranteed = False
    if not requests_seen:
        return "BestEffort"
    return "Guaranteed" if guaranteed and limits_seen else "Burstable"


def pod_grace_period(pod: Obj, requested: int | None) -> int:
    """How long a Pod's deletion waits for the kubelet: 0 for a pod no node runs (not
    scheduled, or finished), else the request's period or the pod's own (default 30)."""
    spec = pod.get("spec") or {}
    phase = (pod.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    if requested is not None:
        return max(0, requested)
    period = spec.get("terminationGracePeriodSeconds")
    return int(period) if isinstance(period, int) else 30


def log_container(pod: Obj, container: str | None) -> str:
    """Which container ``pods/log`` reads: the one named (a main or an init container),
    else the only one, else the ``kubectl.kubernetes.io/default-container``."""
    name = (pod.get("metadata") or {}).get("name", "")
    spec = pod.get("spec") or {}
    main = [str(c.get("name")) for c in spec.get("containers") or []]
    every = main + [str(c.get("name")) for c in spec.get("initContainers") or []]
    if container is None:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        default = annotations.get("kubectl.kubernetes.io/default-container")
        if len(main) == 1:
            return main[0]
        if default in main:
            return str(default)
        raise errors.bad_request(
            f"a container name must be specified for pod {name}, choose one of: [{' '.join(main)}]"
        )
    if container not in every:
        raise errors.bad_request(f"container {container} is not valid for pod {name}")
    return container


def bind(pod: Obj, node_name: str) -> None:
    """``pods/binding`` on a working copy: a Pod is assigned to a node once."""
    spec = pod.setdefault("spec", {})
    assigned = spec.get("nodeName")
    if assigned:
        name = (pod.get("metadata") or {}).get("name", "")
        raise errors.conflict(
            "pods", "", name, f'pod {name} is already assigned to node "{assigned}"'
        )
    spec["nodeName"] = node_name


# -- the scale subresource -------------------------------------------------------------------


def to_scale(obj: Obj) -> Obj:
    """The ``autoscaling/v1`` Scale of a Deployment or ReplicaSet."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    selector = selectors.format_labels(selectors.from_object(spec.get("selector")))
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {"replicas": status.get("replicas", 0), "selector": selector},
    }


def from_scale(resource: Resource, obj: Obj, scale: Obj) -> None:
    """Write a Scale's ``spec.replicas`` into the object (a working copy)."""
    replicas = (scale.get("spec") or {}).get("replicas")
    name = (obj.get("metadata") or {}).get("name", "")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise errors.invalid(
            "Scale",
            "autoscaling",
            name,
            [
                errors.Cause(
                    "spec.replicas",
                    f"Invalid value: {replicas}: must be greater than or equal to 0",
                )
            ],
        )
    obj.setdefault("spec", {})["replicas"] = replicas

"""Server-side printing: ``meta.k8s.io/v1`` Tables, what ``kubectl get`` asks for.

The built-in kinds get the real server's columns (``pkg/printers/internalversion``), wide
columns at priority 1 (``-o wide``), and the same cell rules: Pod STATUS as kubectl shows it
(Init:0/1, Init:CrashLoopBackOff, CrashLoopBackOff, ContainerCreating, Running, Completed,
Terminating...), READY as ready/total, RESTARTS with the last restart's age. Custom
resources get their CRD's ``additionalPrinterColumns`` through ``jsonpath``; any other kind
NAME and AGE.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from typing import Any

from polyserve_sandbox.apiserver import jsonpath, printing
from polyserve_sandbox.apiserver.resources import Resource

Obj = dict[str, Any]
Cells = Callable[[Obj, datetime.datetime], list[Any]]

NAME_DOC = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
AGE_DOC = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is in "
    "UTC."
)


def column(name: str, kind: str = "string", *, priority: int = 0, doc: str = "") -> Obj:
    definition: Obj = {
        "name": name,
        "type": kind,
        "format": "",
        "description": doc,
        "priority": priority,
    }
    if name == "Name":
        definition["format"] = "name"
        definition["description"] = doc or NAME_DOC
    if name == "Age":
        definition["description"] = AGE_DOC
    return definition


def _age(obj: Obj, now: datetime.datetime) -> str:
    return printing.since((obj.get("metadata") or {}).get("creationTimestamp"), now)


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _default_cells(obj: Obj, now: datetime.datetime) -> list[Any]:
    return [_name(obj), _age(obj, now)]


def _created_at(obj: Obj, now: datetime.datetime) -> list[Any]:
    return [_name(obj), (obj.get("metadata") or {}).get("creationTimestamp", "")]


_PRINTERS: dict[tuple[str, str], tuple[list[Obj], Cells]] = {
    ("", "Pod"): (
        [
            column("Name"),
            column("Ready", doc="The aggregate readiness state of this pod for accepting traffic."),
            column("Status", doc="The aggregate status of the containers in this pod."),
            column(
                "Restarts",
                doc=(
                    "The number of times the containers in this pod have been restarted and when "
                    "the last container in this pod has restarted."
                ),
            ),
            column("Age"),
            column("IP", priority=1, doc="podIP address allocated to the pod."),
            column(
                "Node", priority=1, doc="NodeName indicates in which node this pod is scheduled."
            ),
            column(
                "Nominated Node",
                priority=1,
                doc="nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            column(
                "Readiness Gates",
                priority=1,
                doc="If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        printing.pod,
    ),
    ("apps", "Deployment"): (
        [
            column("Name"),
            column("Ready", doc="Number of the pod with ready state"),
            column(
                "Up-to-date",
                "integer",
                doc=(
                    "Total number of non-terminated pods targeted by this deployment that have "
                    "the desired template spec."
                ),
            ),
            column(
                "Available",
                "integer",
                doc=(
                    "Total number of available pods (ready for at least minReadySeconds) "
                    "targeted by this deployment."
                ),
            ),
            column("Age"),
            column("Containers", priority=1, doc="Names of each container in the template."),
            column(
                "Images", priority=1, doc="Images referenced by each container in the template."
            ),
            column(
                "Selector",
                priority=1,
                doc=(
                    "Label selector for pods. Existing ReplicaSets whose pods are selected by "
                    "this will be the ones affected by this deployment."
                ),
            ),
        ],
        printing.deployment,
    ),
    ("apps", "ReplicaSet"): (
        [
            column("Name"),
            column("Desired", "integer", doc="Replicas is the number of desired replicas."),
            column(
                "Current",
                "integer",
                doc="Replicas is the most recently observed number of replicas.",
            ),
            column("Ready", "integer", doc="The number of ready replicas for this replica set."),
            column("Age"),
            column("Containers", priority=1, doc="Names of each container in the template."),
            column(
                "Images", priority=1, doc="Images referenced by each container in the template."
            ),
            column(
                "Selector",
                priority=1,
                doc="Selector is a label query over pods that should match the replica count.",
            ),
        ],
        printing.replica_set,
    ),
    ("", "Service"): (
        [
            column("Name"),
            column("Type", doc="type determines how the Service is exposed."),
            column("Cluster-IP", doc="clusterIP is the IP address of the service."),
            column(
                "External-IP",
                doc=(
                    "externalIPs is a list of IP addresses for which nodes in the cluster will "
                    "also accept traffic for this service."
                ),
            ),
            column("Port(s)", doc="The list of ports that are exposed by this service."),
            column("Age"),
            column(
                "Selector",
                priority=1,
                doc=(
                    "Route service traffic to pods with label keys and values matching this "
                    "selector."
                ),
            ),
        ],
        printing.service,
    ),
    ("", "Node"): (
        [
            column("Name"),
            column("Status", doc="The status of the node"),
            column("Roles", doc="The roles of the node"),
            column("Age"),
            column("Version", doc="Kubelet Version reported by the node."),
            column("Internal-IP", priority=1, doc="List of addresses reachable to the node."),
            column("External-IP", priority=1, doc="List of addresses reachable to the node."),
            column(
                "OS-Image",
                priority=1,
                doc=(
                    "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 "
                    "(wheezy))."
                ),
            ),
            column(
                "Kernel-Version",
                priority=1,
                doc=(
                    "Kernel Version reported by the node from 'uname -r' (e.g. "
                    "3.16.0-0.bpo.4-amd64)."
                ),
            ),
            column(
                "Container-Runtime",
                priority=1,
                doc=(
                    "ContainerRuntime Version reported by the node through runtime remote API "
                    "(e.g. containerd://1.4.2)."
                ),
            ),
        ],
        printing.node,
    ),
    ("", "Namespace"): (
        [column("Name"), column("Status", doc="The status of the namespace"), column("Age")],
        lambda o, now: [_name(o), (o.get("status") or {}).get("phase", ""), _age(o, now)],
    ),
    ("", "ConfigMap"): (
        [
            column("Name"),
            column("Data", "integer", doc="Data contains the configuration data."),
            column("Age"),
        ],
        lambda o, now: [
            _name(o),
            len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _age(o, now),
        ],
    ),
    ("", "Secret"): (
        [
            column("Name"),
            column("Type", doc="Used to facilitate programmatic handling of secret data."),
            column("Data", "integer", doc="Data contains the secret data."),
            column("Age"),
        ],
        lambda o, now: [_name(o), o.get("type", ""), len(o.get("data") or {}), _age(o, now)],
    ),
    ("", "ServiceAccount"): (
        [
            column("Name"),
            column(
                "Secrets",
                "integer",
                doc=(
                    "Secrets is a list of the secrets in the same namespace that pods running "
                    "using this ServiceAccount are allowed to use."
                ),
            ),
            column("Age"),
        ],
        lambda o, now: [_name(o), len(o.get("secrets") or []), _age(o, now)],
    ),
    ("", "Endpoints"): (
        [
            column("Name"),
            column("Endpoints", doc="The set of all endpoints is the union of all subsets."),
            column("Age"),
        ],
        lambda o, now: [_name(o), printing.endpoints(o), _age(o, now)],
    ),
    ("coordination.k8s.io", "Lease"): (
        [column("Name"), column("Holder", doc="The holder of the lease"), column("Age")],
        lambda o, now: [_name(o), (o.get("spec") or {}).get("holderIdentity", ""), _age(o, now)],
    ),
    ("policy", "PodDisruptionBudget"): (
        [
            column("Name"),
            column("Min Available", doc="The minimum number of pods that must be available."),
            column("Max Unavailable", doc="The maximum number of pods that may be unavailable."),
            column(
                "Allowed Disruptions",
                "integer",
                doc="Calculated number of pods that may be disrupted at this time.",
            ),
            column("Age"),
        ],
        printing.pdb,
    ),
    ("autoscaling", "HorizontalPodAutoscaler"): (
        [
            column("Name"),
            column("Reference", doc="Reference to the scaled resource."),
            column("Targets", doc="Current and target metrics."),
            column("MinPods", doc="Lower limit for the number of pods."),
            column("MaxPods", "integer", doc="Upper limit for the number of pods."),
            column("Replicas", "integer", doc="Current number of replicas."),
            column("Age"),
        ],
        printing.hpa,
    ),
    ("apiextensions.k8s.io", "CustomResourceDefinition"): (
        [column("Name"), column("Created At", "date", doc=AGE_DOC)],
        _created_at,
    ),
    ("rbac.authorization.k8s.io", "Role"): (
        [column("Name"), column("Created At", "date", doc=AGE_DOC)],
        _created_at,
    ),
    ("rbac.authorization.k8s.io", "ClusterRole"): (
        [column("Name"), column("Created At", "date", doc=AGE_DOC)],
        _created_at,
    ),
    ("rbac.authorization.k8s.io", "RoleBinding"): (
        [
            column("Name"),
            column("Role", doc="Role"),
            column("Age"),
            column("Users", priority=1),
            column("Groups", priority=1),
            column("ServiceAccounts", priority=1),
        ],
        printing.binding,
    ),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): (
        [
            column("Name"),
            column("Role", doc="Role"),
            column("Age"),
            column("Users", priority=1),
            column("Groups", priority=1),
            column("ServiceAccounts", priority=1),
        ],
        printing.binding,
    ),
}

_EVENT_COLUMNS = [
    column(
        "Last Seen", doc="The time at which the most recent occurrence of this event was recorded."
    ),
    column(
        "Type", doc="Type of this event (Normal, Warning), new types could be added in the future"
    ),
    column(
        "Reason",
        doc=(
            "This should be a short, machine understandable string that gives the reason "
            "for the transition into the object's current status."
        ),
    ),
    column("Object", doc="The object that this event is about."),
    column(
        "Subobject",
        priority=1,
        doc="If the reference is to an object's part rather than the whole object, the path to it.",
    ),
    column("Source", priority=1, doc="The component reporting this event."),
    column("Message", doc="A human-readable description of the status of this operation."),
    column("First Seen", priority=1, doc="The time at which the event was first recorded."),
    column("Count", priority=1, doc="The number of times this event has occurred."),
    {**column("Name", priority=1), "priority": 1},
]
_PRINTERS[("", "Event")] = (_EVENT_COLUMNS, printing.event)
_PRINTERS[("events.k8s.io", "Event")] = (_EVENT_COLUMNS, printing.event)


def _custom(resource: Resource) -> tuple[list[Obj], Cells]:
    columns = [column("Name")]
    for spec in resource.printer_columns:
        path = str(spec.get("jsonPath", ""))
        columns.append(
            {
                "name": spec.get("name", ""),
                "type": spec.get("type", "string"),
                "format": spec.get("format", ""),
                "description": spec.get("description")
                or f"Custom resource definition column (in JSONPath format): {path}",
                "priority": int(spec.get("priority", 0)),
            }
        )

    def cells(obj: Obj, now: datetime.datetime) -> list[Any]:
        row: list[Any] = [_name(obj)]
        for spec in resource.printer_columns:
            try:
                found = jsonpath.evaluate(obj, str(spec.get("jsonPath", "")))
            except ValueError:
                found = []
            row.append(_cell(str(spec.get("type", "string")), found[0] if found else None, now))
        return row

    return columns, cells


def _cell(kind: str, value: Any, now: datetime.datetime) -> Any:
    """As the CRD table convertor types a cell (a wrong type reads as empty)."""
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "integer":
        return (
            int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    if kind == "number":
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "date":
        return printing.since(value, now) if isinstance(value, str) else None
    return None


def printer(resource: Resource) -> tuple[list[Obj], Cells]:
    if resource.printer_columns:
        return _custom(resource)
    return _PRINTERS.get(resource.storage, ([column("Name"), column("Age")], _default_cells))


def table(
    resource: Resource,
    items: Iterable[Obj],
    *,
    version: str,
    now: datetime.datetime,
    include_object: str = "PartialObjectMetadata",
    headers: bool = True,
) -> Obj:
    """A ``meta.k8s.io/v1`` Table of ``items`` (read-only; nothing is changed)."""
    columns, cells = printer(resource)
    rows = []
    for obj in items:
        row: Obj = {"cells": cells(obj, now)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata") or {},
            }
        rows.append(row)
    result: Obj = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": version},
        "columnDefinitions": columns if headers else [],
        "rows": rows,
    }
    return result

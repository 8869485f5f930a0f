"""Kubernetes protobuf bodies, read for the kinds ``kubectl create <kind>`` sends that way.

kubectl's typed clients write with ``Content-Type: application/vnd.kubernetes.protobuf``
(``kubectl create namespace|configmap|secret|serviceaccount|deployment|service|role|
rolebinding|clusterrole|clusterrolebinding|poddisruptionbudget``); everything else it sends
(apply, edit, patch, run, expose, delete) is JSON. Helm's typed clients send their
``DeleteOptions`` (removing a release's Secrets) this way too. The envelope is ``k8s\\0`` + a
``runtime.Unknown`` (type meta, raw message); the raw message is decoded here with a table
of the fields those commands fill, by their protobuf field numbers, into the JSON the same
command prints with ``--dry-run=client -o json``.

Not a general protobuf codec: another kind, or a field outside the table holding a value,
answers 415 with the JSON way to do the same. Responses are always JSON (clients accept it).
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from polyserve_sandbox.apiserver import errors

Obj = dict[str, Any]

MAGIC = b"k8s\x00"

# Field kinds: s string, i integer, b bool, y bytes (base64 in JSON), *? the same kept when
# zero (a Go pointer: present means set), S repeated string, m map<string,string>,
# M map<string,bytes>, q map<string,Quantity>, t Time, n IntOrString, - skipped (status,
# reset on create anyway), or a message name (repeated when it starts with "[").
Field = tuple[str, str]
_META = "ObjectMeta"
MESSAGES: dict[str, dict[int, Field]] = {
    "ObjectMeta": {
        1: ("name", "s"),
        2: ("generateName", "s"),
        3: ("namespace", "s"),
        5: ("uid", "s"),
        6: ("resourceVersion", "s"),
        7: ("generation", "i"),
        8: ("creationTimestamp", "t"),
        11: ("labels", "m"),
        12: ("annotations", "m"),
        13: ("ownerReferences", "[OwnerReference"),
        14: ("finalizers", "S"),
    },
    "OwnerReference": {
        1: ("kind", "s"),
        3: ("name", "s"),
        4: ("uid", "s"),
        5: ("apiVersion", "s"),
        6: ("controller", "b?"),
        7: ("blockOwnerDeletion", "b?"),
    },
    "LabelSelector": {
        1: ("matchLabels", "m"),
        2: ("matchExpressions", "[LabelSelectorRequirement"),
    },
    "LabelSelectorRequirement": {1: ("key", "s"), 2: ("operator", "s"), 3: ("values", "S")},
    "Namespace": {1: ("metadata", _META), 2: ("spec", "NamespaceSpec"), 3: ("status", "-")},
    "NamespaceSpec": {1: ("finalizers", "S")},
    "ConfigMap": {
        1: ("metadata", _META),
        2: ("data", "m"),
        3: ("binaryData", "M"),
        4: ("immutable", "b?"),
    },
    "Secret": {
        1: ("metadata", _META),
        2: ("data", "M"),
        3: ("type", "s"),
        4: ("stringData", "m"),
        5: ("immutable", "b?"),
    },
    "ServiceAccount": {
        1: ("metadata", _META),
        2: ("secrets", "[ObjectReference"),
        3: ("imagePullSecrets", "[LocalObjectReference"),
        4: ("automountServiceAccountToken", "b?"),
    },
    "ObjectReference": {
        1: ("kind", "s"),
        2: ("namespace", "s"),
        3: ("name", "s"),
        4: ("uid", "s"),
        5: ("apiVersion", "s"),
        6: ("resourceVersion", "s"),
        7: ("fieldPath", "s"),
    },
    "LocalObjectReference": {1: ("name", "s")},
    "Deployment": {1: ("metadata", _META), 2: ("spec", "DeploymentSpec"), 3: ("status", "-")},
    "DeploymentSpec": {
        1: ("replicas", "i?"),
        2: ("selector", "LabelSelector"),
        3: ("template", "PodTemplateSpec"),
        4: ("strategy", "DeploymentStrategy"),
        5: ("minReadySeconds", "i"),
        6: ("revisionHistoryLimit", "i?"),
        7: ("paused", "b"),
        9: ("progressDeadlineSeconds", "i?"),
    },
    "DeploymentStrategy": {1: ("type", "s"), 2: ("rollingUpdate", "RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "n"), 2: ("maxSurge", "n")},
    "PodTemplateSpec": {1: ("metadata", _META), 2: ("spec", "PodSpec")},
    "PodSpec": {
        2: ("containers", "[Container"),
        3: ("restartPolicy", "s"),
        4: ("terminationGracePeriodSeconds", "i?"),
        6: ("dnsPolicy", "s"),
        7: ("nodeSelector", "m"),
        8: ("serviceAccountName", "s"),
        10: ("nodeName", "s"),
        11: ("hostNetwork", "b"),
        12: ("hostPID", "b"),
        13: ("hostIPC", "b"),
        16: ("hostname", "s"),
        17: ("subdomain", "s"),
        19: ("schedulerName", "s"),
        20: ("initContainers", "[Container"),
        24: ("priorityClassName", "s"),
    },
    "Container": {
        1: ("name", "s"),
        2: ("image", "s"),
        3: ("command", "S"),
        4: ("args", "S"),
        5: ("workingDir", "s"),
        6: ("ports", "[ContainerPort"),
        7: ("env", "[EnvVar"),
        8: ("resources", "ResourceRequirements"),
        13: ("terminationMessagePath", "s"),
        14: ("imagePullPolicy", "s"),
        16: ("stdin", "b"),
        17: ("stdinOnce", "b"),
        18: ("tty", "b"),
        20: ("terminationMessagePolicy", "s"),
    },
    "ContainerPort": {
        1: ("name", "s"),
        2: ("hostPort", "i"),
        3: ("containerPort", "i"),
        4: ("protocol", "s"),
        5: ("hostIP", "s"),
    },
    "EnvVar": {1: ("name", "s"), 2: ("value", "s")},
    "ResourceRequirements": {1: ("limits", "q"), 2: ("requests", "q")},
    "Service": {1: ("metadata", _META), 2: ("spec", "ServiceSpec"), 3: ("status", "-")},
    "ServiceSpec": {
        1: ("ports", "[ServicePort"),
        2: ("selector", "m"),
        3: ("clusterIP", "s"),
        4: ("type", "s"),
        5: ("externalIPs", "S"),
        7: ("sessionAffinity", "s"),
        8: ("loadBalancerIP", "s"),
        10: ("externalName", "s"),
        11: ("externalTrafficPolicy", "s"),
        12: ("healthCheckNodePort", "i"),
        13: ("publishNotReadyAddresses", "b"),
    },
    "ServicePort": {
        1: ("name", "s"),
        2: ("protocol", "s"),
        3: ("port", "i"),
        4: ("targetPort", "n"),
        5: ("nodePort", "i"),
        6: ("appProtocol", "s?"),
    },
    "Role": {1: ("metadata", _META), 2: ("rules", "[PolicyRule")},
    "ClusterRole": {
        1: ("metadata", _META),
        2: ("rules", "[PolicyRule"),
        3: ("aggregationRule", "AggregationRule"),
    },
    "PolicyRule": {
        1: ("verbs", "S"),
        2: ("apiGroups", "S"),
        3: ("resources", "S"),
        4: ("resourceNames", "S"),
        5: ("nonResourceURLs", "S"),
    },
    "AggregationRule": {1: ("clusterRoleSelectors", "[LabelSelector")},
    "RoleBinding": {1: ("metadata", _META), 2: ("subjects", "[Subject"), 3: ("roleRef", "RoleRef")},
    "ClusterRoleBinding": {
        1: ("metadata", _META),
        2: ("subjects", "[Subject"),
        3: ("roleRef", "RoleRef"),
    },
    "Subject": {1: ("kind", "s"), 2: ("apiGroup", "s"), 3: ("name", "s"), 4: ("namespace", "s")},
    "RoleRef": {1: ("apiGroup", "s"), 2: ("kind", "s"), 3: ("name", "s")},
    "PodDisruptionBudget": {
        1: ("metadata", _META),
        2: ("spec", "PodDisruptionBudgetSpec"),
        3: ("status", "-"),
    },
    "PodDisruptionBudgetSpec": {
        1: ("minAvailable", "n"),
        2: ("selector", "LabelSelector"),
        3: ("maxUnavailable", "n"),
        4: ("unhealthyPodEvictionPolicy", "s?"),
    },
    # Not objects: the options client-go's typed clients send with a DELETE (helm's
    # release Secrets), read by delete_options.
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "i?"),
        2: ("preconditions", "Preconditions"),
        3: ("orphanDependents", "b?"),
        4: ("propagationPolicy", "s?"),
        5: ("dryRun", "S"),
        6: ("ignoreStoreReadErrorWithClusterBreakingPotential", "b?"),
    },
    "Preconditions": {1: ("uid", "s?"), 2: ("resourceVersion", "s?")},
}
#: The options a request body may carry instead of an object.
OPTIONS = frozenset({"DeleteOptions"})
KINDS = frozenset(
    {
        "Namespace",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Deployment",
        "Service",
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
        "PodDisruptionBudget",
    }
)


class _Unsupported(Exception):
    pass


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise _Unsupported("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(number, wire type, value) of each field: varints as ints, the rest as bytes."""
    found: list[tuple[int, int, Any]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            size, at = _varint(data, at)
            value, at = data[at : at + size], at + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, at = data[at : at + width], at + width
        else:
            raise _Unsupported(f"wire type {wire}")
        found.append((number, wire, value))
    return found


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _entry(data: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for number, _, item in _fields(data):
        if number == 1:
            key = item.decode()
        elif number == 2:
            value = item
    return key, value


def _decode(message: str, data: bytes) -> Obj:
    table = MESSAGES[message]
    out: Obj = {}
    for number, _, value in _fields(data):
        field = table.get(number)
        if field is None:
            if value not in (0, b""):
                raise _Unsupported(f"{message} field {number}")
            continue
        name, kind = field
        keep = kind.endswith("?")
        kind = kind.rstrip("?")
        if kind == "s":
            if value or keep:
                out[name] = value.decode()
        elif kind in ("i", "b"):
            number_value = _signed(value) if isinstance(value, int) else 0
            if number_value or keep:
                out[name] = bool(number_value) if kind == "b" else number_value
        elif kind == "S":
            out.setdefault(name, []).append(value.decode())
        elif kind in ("m", "M", "q"):
            key, item = _entry(value)
            if kind == "m":
                out.setdefault(name, {})[key] = item.decode()
            elif kind == "M":
                out.setdefault(name, {})[key] = base64.b64encode(item).decode()
            else:
                out.setdefault(name, {})[key] = _quantity(item)
        elif kind == "t":
            stamp = _time(value)
            if stamp:
                out[name] = stamp
        elif kind == "n":
            out[name] = _int_or_string(value)
        elif kind == "-":
            out[name] = {}
        elif kind.startswith("["):
            out.setdefault(name, []).append(_decode(kind[1:], value))
        else:
            out[name] = _decode(kind, value)
    return out


def _quantity(data: bytes) -> str:
    return next((v.decode() for n, _, v in _fields(data) if n == 1), "")


def _time(data: bytes) -> str | None:
    seconds = next((_signed(v) for n, _, v in _fields(data) if n == 1), 0)
    if not seconds:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_or_string(data: bytes) -> int | str:
    kind, number, text = 0, 0, ""
    for field, _, value in _fields(data):
        if field == 1:
            kind = value
        elif field == 2:
            number = _signed(value)
        elif field == 3:
            text = value.decode()
    return text if kind == 1 else number


def decode(body: bytes, kinds: frozenset[str] = KINDS) -> Obj:
    """A protobuf request body as the JSON object it stands for (one of ``kinds``); 415 when
    it cannot be read."""
    try:
        if not body.startswith(MAGIC):
            raise _Unsupported("no k8s envelope")
        api_version = kind = ""
        raw = b""
        for number, _, value in _fields(body[len(MAGIC) :]):
            if number == 1:
                for field, _, item in _fields(value):
                    if field == 1:
                        api_version = item.decode()
                    elif field == 2:
                        kind = item.decode()
            elif number == 2:
                raw = value
        if kind not in kinds:
            raise _Unsupported(f"kind {kind or '?'}")
        return {"kind": kind, "apiVersion": api_version, **_decode(kind, raw)}
    except (_Unsupported, UnicodeDecodeError, ValueError) as exc:
        raise errors.ApiError(
            415,
            "UnsupportedMediaType",
            f"the sandbox reads protobuf bodies only for what kubectl create sends ({exc}): "
            "send JSON or YAML instead (e.g. kubectl create ... --dry-run=client -o yaml | "
            "kubectl apply -f -)",
        ) from exc

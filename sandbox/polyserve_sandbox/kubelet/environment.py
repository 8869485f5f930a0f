"""A container's environment, and ``$(VAR)`` expansion, as the kubelet builds them.

Kubernetes' rules (``third_party/forked/golang/expansion``): ``$(NAME)`` becomes the value
of NAME when NAME is defined and stays as written when it is not; ``$$`` is a literal
``$``; any other ``$`` is kept. An ``env`` entry sees the variables defined before it
(``envFrom`` sources first, then earlier ``env`` entries); ``command`` and ``args`` see the
container's whole environment. The image's own variables are not part of expansion (the
kubelet does not know them; the runtime adds them under the container's).

A reference that cannot be resolved (a ConfigMap, Secret or key that is not there and not
``optional``) is ``CreateContainerConfigError`` with the kubelet's message.

Service links come first (``enableServiceLinks``, on unless the pod says false): for each
Service of the pod's namespace that has a cluster IP when the container starts,
``NAME_SERVICE_HOST``, ``NAME_SERVICE_PORT`` (and ``NAME_SERVICE_PORT_PORTNAME``), and the
Docker-link ``NAME_PORT*`` variables, as the kubelet writes them; ``envFrom`` and ``env``
override them. A container started again (a restart) gets them anew, so it sees Services
created since: clients without cluster DNS (the sandbox has none) find Services this way.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from polyserve_sandbox import quantities
from polyserve_sandbox.kubelet import sources

Obj = dict[str, Any]

_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ConfigError(Exception):
    """``CreateContainerConfigError``: the message is the kubelet's."""


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """``$(NAME)`` -> lookup(NAME) (kept as written when None), ``$$`` -> ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            close = text.find(")", i + 2)
            if close == -1:  # incomplete: kept, and the rest is read on
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            value = lookup(name)
            out.append(f"$({name})" if value is None else value)
            i = close + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def expand_all(items: list[str] | None, env: Mapping[str, str]) -> list[str] | None:
    if items is None:
        return None
    return [expand(item, env.get) for item in items]


def field_value(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = _FIELD_KEY.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    raise ConfigError(f"unsupported fieldPath: {path}")


def _node_capacity(resource: str) -> Decimal:
    if resource.endswith("cpu"):
        return Decimal(os.cpu_count() or 1)
    if resource.endswith("memory"):
        return Decimal(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return Decimal(0)


def resource_value(pod: Obj, container: Obj, ref: Obj) -> str:
    """``resourceFieldRef``: a limit or request divided by ``divisor``, rounded up; an
    unset limit is the node's capacity, as the kubelet substitutes allocatable."""
    name = ref.get("containerName") or container["name"]
    spec = pod.get("spec", {})
    target = next(
        (
            c
            for c in [*spec.get("containers", []), *spec.get("initContainers", [])]
            if c["name"] == name
        ),
        container,
    )
    kind, _, resource = str(ref["resource"]).partition(".")
    value = ((target.get("resources") or {}).get(kind) or {}).get(resource)
    amount = quantities.parse(value) if value is not None else None
    if amount is None:
        amount = _node_capacity(resource) if kind == "limits" else Decimal(0)
    divisor = quantities.parse(ref.get("divisor", "1"))
    return str(math.ceil(amount / divisor))


def _key_ref(
    kind: str, ref: Obj, namespace: str, lookup: Callable[[str, str], Obj | None]
) -> str | None:
    obj = lookup(namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    data = sources.config_map_data(obj) if kind == "ConfigMap" else sources.secret_data(obj)
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
    return sources.text(data[ref["key"]])


def _link_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_links(services: list[Obj]) -> dict[str, str]:
    """The kubelet's variables for each Service with a cluster IP (headless ones have none)."""
    env: dict[str, str] = {}
    for service in sorted(services, key=lambda s: s["metadata"]["name"]):
        spec = service.get("spec") or {}
        address = spec.get("clusterIP")
        ports = spec.get("ports") or []
        if not address or address == "None" or not ports:
            continue
        name = _link_name(service["metadata"]["name"])
        env[f"{name}_SERVICE_HOST"] = address
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{_link_name(port['name'])}"] = str(port["port"])
        first = ports[0]
        env[f"{name}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{address}:{first['port']}"
        for port in ports:
            protocol = port.get("protocol", "TCP")
            prefix = f"{name}_PORT_{port['port']}_{protocol.upper()}"
            env[prefix] = f"{protocol.lower()}://{address}:{port['port']}"
            env[f"{prefix}_PROTO"] = protocol.lower()
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = address
    return env


def container_env(
    pod: Obj, container: Obj, *, pod_ip: str, host_ip: str, resolver: sources.Resolver
) -> dict[str, str]:
    """The variables Kubernetes gives a container (service links, ``envFrom``, then
    ``env``), expanded."""
    namespace = pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = {}
    if (pod.get("spec") or {}).get("enableServiceLinks", True) is not False:
        env.update(service_links(resolver.services(namespace)))
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref, kind = source["configMapRef"], "ConfigMap"
            obj = resolver.config_map(namespace, ref["name"])
        else:
            ref, kind = source["secretRef"], "Secret"
            obj = resolver.secret(namespace, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
        data = sources.config_map_data(obj) if kind == "ConfigMap" else sources.secret_data(obj)
        for key, raw in data.items():
            env[prefix + key] = sources.text(raw)
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env.get)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in source:
            value = resource_value(pod, container, source["resourceFieldRef"])
        elif "configMapKeyRef" in source:
            value = _key_ref("ConfigMap", source["configMapKeyRef"], namespace, resolver.config_map)
        elif "secretKeyRef" in source:
            value = _key_ref("Secret", source["secretKeyRef"], namespace, resolver.secret)
        else:
            raise ConfigError(f"unsupported valueFrom for {name}: {sorted(source)}")
        if value is not None:
            env[name] = value
    return env

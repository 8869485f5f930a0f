"""Discovery documents, as kubectl, helm, kopf and the Python client read them.

Legacy discovery (``/api`` APIVersions, ``/apis`` APIGroupList, ``/apis/G`` APIGroup,
``/api/v1`` and ``/apis/G/V`` APIResourceList with ``groupVersion: "v1"``, subresources as
``plural/sub``) and aggregated discovery (``apidiscovery.k8s.io/v2`` APIGroupDiscoveryList,
one document for ``/api`` and one for ``/apis``, which kubectl 1.30+ asks for first and which
saves it a request per group). Both are built from the registry and cached until it changes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from polyserve_sandbox.apiserver.resources import Registry, Resource

Obj = dict[str, Any]

SERVER_VERSION = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "36",
    "gitVersion": "v1.37.0-polyserve-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

_SUBRESOURCE_VERBS = {
    "status": ("get", "patch", "update"),
    "scale": ("get", "patch", "update"),
    "log": ("get",),
    "binding": ("create",),
}


def _subresource_kind(resource: Resource, sub: str) -> tuple[str, str, str]:
    """(group, version, kind) a subresource answers with."""
    if sub == "scale":
        return ("autoscaling", "v1", "Scale")
    if sub == "binding":
        return ("", "v1", "Binding")
    return (resource.group, resource.version, resource.kind)


def _storage_hash(resource: Resource) -> str:
    digest = hashlib.sha256(f"{resource.group}/{resource.version}/{resource.kind}".encode())
    return digest.digest()[:8].hex()


def resource_list(registry: Registry, group: str, version: str) -> Obj | None:
    """``/api/v1`` or ``/apis/G/V``; None when that group/version is not served."""
    served = registry.in_group_version(group, version)
    if not served:
        return None
    entries: list[Obj] = []
    for resource in served:
        entry: Obj = {
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": list(resource.verbs),
        }
        if resource.short_names:
            entry["shortNames"] = list(resource.short_names)
        if resource.categories:
            entry["categories"] = list(resource.categories)
        entry["storageVersionHash"] = _storage_hash(resource)
        entries.append(entry)
        for sub in sorted(resource.subresources):
            sub_group, sub_version, sub_kind = _subresource_kind(resource, sub)
            item: Obj = {
                "name": f"{resource.plural}/{sub}",
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": sub_kind,
                "verbs": list(_SUBRESOURCE_VERBS.get(sub, ("get",))),
            }
            if (sub_group, sub_version) != (group, version):
                item["group"], item["version"] = sub_group, sub_version
            entries.append(item)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": entries,
    }


def api_versions(address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _group(group: str, versions: list[str]) -> Obj:
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def api_group_list(registry: Registry) -> Obj:
    groups = [_group(g, versions) for g, versions in registry.groups() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> Obj | None:
    for name, versions in registry.groups():
        if name == group and group:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, versions)}
    return None


def aggregated(registry: Registry, *, core: bool) -> Obj:
    """The ``apidiscovery.k8s.io/v2`` document of ``/api`` (core) or ``/apis`` (the rest)."""
    items = []
    for group, versions in registry.groups():
        if (group == "") != core:
            continue
        listed = []
        for version in versions:
            resources = []
            for resource in registry.in_group_version(group, version):
                entry: Obj = {
                    "resource": resource.plural,
                    "responseKind": {"group": group, "version": version, "kind": resource.kind},
                    "scope": "Namespaced" if resource.namespaced else "Cluster",
                    "singularResource": resource.singular,
                    "verbs": list(resource.verbs),
                }
                if resource.short_names:
                    entry["shortNames"] = list(resource.short_names)
                if resource.categories:
                    entry["categories"] = list(resource.categories)
                subresources = []
                for sub in sorted(resource.subresources):
                    sub_group, sub_version, sub_kind = _subresource_kind(resource, sub)
                    subresources.append(
                        {
                            "subresource": sub,
                            "responseKind": {
                                "group": sub_group,
                                "version": sub_version,
                                "kind": sub_kind,
                            },
                            "verbs": list(_SUBRESOURCE_VERBS.get(sub, ("get",))),
                        }
                    )
                if subresources:
                    entry["subresources"] = subresources
                resources.append(entry)
            listed.append({"version": version, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": listed})
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }

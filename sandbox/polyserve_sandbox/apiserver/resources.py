"""What the server serves: one ``Resource`` per group/version/plural, held by a ``Registry``.

The registry answers both ways a request names a resource: by (apiVersion, kind) for objects
(in-process calls, request bodies) and by (group, version, plural) for URLs. Every version of
a kind shares one storage (``Resource.storage``), as a CRD's served versions do on a real
server; no conversion is made between versions (a CRD's ``strategy: None``).

Nothing here knows about HTTP or the objects themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from polyserve_sandbox.apiserver import errors, validations

Obj = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

# The order real servers list their groups in (discovery and `kubectl api-resources`).
_GROUP_ORDER = (
    "",
    "apps",
    "events.k8s.io",
    "autoscaling",
    "policy",
    "rbac.authorization.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
)


@dataclass(frozen=True)
class Resource:
    """One served resource; custom resources also carry their schema and printer columns."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    verbs: tuple[str, ...] = ALL_VERBS
    printer_columns: tuple[Obj, ...] = ()
    schema: Obj | None = field(default=None, compare=False, hash=False)
    #: The schema's CEL rules, compiled once for this version (``validations.build``).
    validations: validations.Node | None = field(default=None, compare=False, hash=False)
    crd: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def storage(self) -> tuple[str, str]:
        """The key objects are stored under: (group, kind), shared by every version."""
        return (self.group, self.kind)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``deployments.apps``: how the real server names a resource in messages."""
        return errors.qualified(self.plural, self.group)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def not_found(self, name: str) -> errors.ApiError:
        return errors.not_found(self.plural, self.group, name)


_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' version order: GA before beta before alpha, higher numbers first, then
    anything else alphabetically (sort ascending by this key to get the preferred first)."""
    match = _VERSION.match(version)
    if match is None:
        return (3, 0, 0, version)
    major, stage, minor = match.groups()
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -int(major), -int(minor or 0), version)


class Registry:
    """The served resources, by kind and by URL; ``generation`` counts changes (for caches)."""

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self._by_kind: dict[tuple[str, str], Resource] = {}
        self._by_path: dict[tuple[str, str, str], Resource] = {}
        self.generation = 0
        for resource in resources:
            self.add(resource)

    def add(self, resource: Resource) -> None:
        self._by_kind[(resource.api_version, resource.kind)] = resource
        self._by_path[(resource.group, resource.version, resource.plural)] = resource
        self.generation += 1

    def remove(self, resource: Resource) -> None:
        self._by_kind.pop((resource.api_version, resource.kind), None)
        self._by_path.pop((resource.group, resource.version, resource.plural), None)
        self.generation += 1

    def find(self, api_version: str, kind: str) -> Resource | None:
        return self._by_kind.get((api_version, kind))

    def lookup(self, api_version: str, kind: str) -> Resource:
        """The resource of an object's apiVersion and kind, or 404 as the real server says."""
        resource = self._by_kind.get((api_version, kind))
        if resource is None:
            raise errors.no_kind(api_version, kind)
        return resource

    def by_path(self, group: str, version: str, plural: str) -> Resource | None:
        return self._by_path.get((group, version, plural))

    def __iter__(self) -> Iterator[Resource]:
        return iter(list(self._by_path.values()))

    def versions(self, group: str, kind: str) -> list[Resource]:
        """Every served version of a kind, the preferred first."""
        found = [r for r in self._by_path.values() if r.group == group and r.kind == kind]
        return sorted(found, key=lambda r: version_priority(r.version))

    def groups(self) -> list[tuple[str, list[str]]]:
        """(group, versions with the preferred first), core ("") first, as discovery lists them."""
        seen: dict[str, set[str]] = {}
        for resource in self._by_path.values():
            seen.setdefault(resource.group, set()).add(resource.version)

        def order(group: str) -> tuple[int, str]:
            if group in _GROUP_ORDER:
                return (_GROUP_ORDER.index(group), "")
            return (len(_GROUP_ORDER), group)

        return [
            (group, sorted(versions, key=version_priority))
            for group, versions in sorted(seen.items(), key=lambda item: order(item[0]))
        ]

    def in_group_version(self, group: str, version: str) -> list[Resource]:
        found = [r for r in self._by_path.values() if r.group == group and r.version == version]
        return sorted(found, key=lambda r: r.plural)

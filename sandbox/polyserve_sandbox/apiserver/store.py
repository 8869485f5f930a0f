"""The object store of the emulated API server: every verb, in process, with the real
server's semantics (see the package docstring for what is and is not emulated).

One global resourceVersion counter; every committed write bumps it, appends one change to
the watch log, and calls the in-process listeners (controllers) synchronously, in version
order even when a listener writes in turn. A write that changes nothing commits nothing
(no new resourceVersion, no event), as on a real server.

Everything goes in and out as copies, so a caller can never corrupt the store; the
``share=True`` reads and writes hand out the stored object itself, read-only, for the HTTP
layer's serialisers. All methods run on the event loop's thread; there are no locks.
"""

from __future__ import annotations

import builtins
import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from polyserve_sandbox.apiserver import (
    collecting,
    crds,
    errors,
    indexes,
    kinds,
    listening,
    objects,
    patching,
    resources,
    selectors,
    strategies,
    watching,
    writing,
)
from polyserve_sandbox.apiserver.errors import ApiError
from polyserve_sandbox.apiserver.listening import Event
from polyserve_sandbox.apiserver.resources import Resource

__all__ = ["ApiError", "Event", "Obj", "Store"]

Obj = dict[str, Any]
Storage = tuple[str, str]
AdmissionHook = Callable[[str, Obj, Obj | None], None]
LogReader = Callable[[str, str, str, bool, int | None], bytes]

DEFAULT_MANAGER = "polyserve-sandbox"
PATCH_TYPES = ("merge", "json", "strategic", "apply")


class Store:
    """The objects, their versions and their watchers."""

    def __init__(
        self, *, history: int = 2_000, clock: Callable[[], datetime.datetime] | None = None
    ) -> None:
        """``history``: how many changes the watch log keeps, across all kinds, for watches
        that resume from a resourceVersion (older ones get 410 Expired and relist, as a real
        server's bounded watch cache answers). The log holds the objects' states, so a longer
        one costs memory and garbage-collection time on every request."""
        self.registry = resources.Registry(kinds.RESOURCES)
        self.log = watching.EventLog(history)
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._index = indexes.Index()
        self._version = 0
        self._listeners = listening.Listeners()
        self._admission: dict[Storage, builtins.list[AdmissionHook]] = {}
        self._log_reader: LogReader | None = None
        self._collector = collecting.Collector(self._index, self.registry, self._commit, self._now)
        self._writer = writing.Writer(
            self._index, self._collector, self._commit, self._now, self._admit
        )
        for name in kinds.INITIAL_NAMESPACES:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    @property
    def version(self) -> int:
        """The current global resourceVersion."""
        return self._version

    # -- registration --------------------------------------------------------------------

    def listen(
        self,
        callback: Callable[[Event], None],
        kinds: Iterable[tuple[str, str]] | None = None,
        *,
        shared: bool = False,
    ) -> Callable[[], None]:
        """Call ``callback`` after every committed change of the given (apiVersion, kind)s
        (all when None) with copies, or with the stored objects themselves when ``shared``
        (read-only: never change them); returns the function that unsubscribes."""
        return self._listeners.add(callback, kinds, shared=shared)

    def add_admission(self, api_version: str, kind: str, hook: AdmissionHook) -> None:
        """Mutating and validating admission of every write of a kind, before commit."""
        self._admission.setdefault(listening.storage_of(api_version, kind), []).append(hook)

    def set_log_reader(self, reader: LogReader) -> None:
        """Who serves ``pods/log``: (namespace, pod, container, previous, tail_lines) -> bytes."""
        self._log_reader = reader

    # -- reads ---------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj:
        resource = self.registry.lookup(api_version, kind)
        return self._out(resource, self.view(resource, namespace, name), share=False)

    def try_get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.get(api_version, kind, namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def view(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        """The stored object itself (read-only), or 404."""
        found = self._index.get(resource.storage, self._space(resource, namespace), name)
        if found is None:
            raise resource.not_found(name)
        return found

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | Mapping[str, str] | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        resource = self.registry.lookup(api_version, kind)
        found, _ = self.select(
            resource, namespace, label_selector=label_selector, field_selector=field_selector
        )
        return [self._out(resource, obj, share=False) for obj in found]

    def owned(self, api_version: str, kind: str, owner_uid: str) -> builtins.list[Obj]:
        """Copies of the objects of a kind whose ``ownerReferences`` name ``owner_uid``, in
        (namespace, name) order: read from the garbage collector's index of dependents, so a
        controller finds what its object owns without listing the kind."""
        resource = self.registry.lookup(api_version, kind)
        found = []
        for key in self._index.dependents(owner_uid):
            if key[0] != resource.storage:
                continue
            obj = self._index.by_key(key)
            if obj is not None:
                found.append(self._out(resource, obj, share=False))
        return found

    def select(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        label_selector: str | Mapping[str, str] | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[Obj], int]:
        """The stored objects themselves (read-only) and the version they are current at."""
        test = selectors.predicate(label_selector, field_selector)
        space = namespace if (namespace and resource.namespaced) else None
        if not resource.namespaced:
            space = ""
        return self._index.select(resource.storage, space, test), self._version

    def _out(self, resource: Resource, obj: Obj, *, share: bool) -> Obj:
        if share:
            if obj.get("apiVersion") != resource.api_version:
                return {**obj, "apiVersion": resource.api_version}
            return obj
        copied: Obj = objects.clone(obj)
        copied["apiVersion"] = resource.api_version
        return copied

    # -- writes --------------------------------------------------------------------------

    def create(
        self,
        obj: Obj,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
        namespace: str | None = None,
        field_validation: str = "Warn",
        warnings: builtins.list[str] | None = None,
        share: bool = False,
    ) -> Obj:
        """Create ``obj`` (its namespace from ``namespace`` or its metadata)."""
        resource = self._resource_of(obj)
        new = objects.clone(obj)
        created = self._writer.create(
            resource,
            new,
            namespace=namespace,
            dry_run=dry_run,
            manager=field_manager or DEFAULT_MANAGER,
            strict=field_validation == "Strict",
            warnings=warnings,
        )
        return self._out(resource, created, share=share)

    def replace(
        self,
        obj: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_manager: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        field_validation: str = "Warn",
        warnings: builtins.list[str] | None = None,
        share: bool = False,
    ) -> Obj:
        """PUT: the whole object, or its ``status`` (``replace_scale`` for ``scale``)."""
        resource = self._resource_of(obj)
        body = objects.clone(obj)
        meta = objects.meta_of(body)
        body["metadata"] = meta
        space = self._writer.place(resource, meta.get("namespace"), namespace)
        own = str(meta.get("name") or "")
        if name and own and own != name:
            raise errors.bad_request(
                f"the name of the object ({own}) does not match the name on the URL ({name})"
            )
        own = own or str(name or "")
        old = self._index.get(resource.storage, space, own)
        if old is None:
            raise resource.not_found(own)
        self._writer.check_version(resource, old, meta.get("resourceVersion"))
        working = self._writer.compose(resource, old, body, subresource)
        updated = self._writer.update(
            resource,
            old,
            working,
            subresource=subresource,
            manager=field_manager or DEFAULT_MANAGER,
            dry_run=dry_run,
            strict=field_validation == "Strict",
            warnings=warnings,
        )
        return self._out(resource, updated, share=share)

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        body: Obj | builtins.list[Obj],
        *,
        patch_type: str,
        field_manager: str | None = None,
        force: bool = False,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Warn",
        warnings: builtins.list[str] | None = None,
        share: bool = False,
    ) -> Obj:
        """PATCH with ``patch_type`` merge, json, strategic or apply (server-side apply)."""
        resource = self.registry.lookup(api_version, kind)
        space = self._space(resource, namespace)
        old = self._index.get(resource.storage, space, name)
        patch_body = objects.clone(body)
        manager = field_manager or DEFAULT_MANAGER
        strict = field_validation == "Strict"
        if patch_type == "apply":
            applied = self._writer.apply(
                resource,
                space,
                name,
                old,
                patch_body,
                manager,
                force,
                subresource,
                dry_run,
                strict,
                warnings,
            )
            return self._out(resource, applied, share=share)
        if patch_type not in PATCH_TYPES:
            raise ApiError(
                415, "UnsupportedMediaType", f"the patch type {patch_type!r} is not supported"
            )
        if old is None:
            raise resource.not_found(name)
        if subresource == "scale":
            scale = (
                # A Scale has no lists: a strategic merge patch of it is a merge patch.
                patching.json_patch(strategies.to_scale(old), patch_body)
                if patch_type == "json"
                else patching.merge_patch(strategies.to_scale(old), patch_body)
            )
            return self._write_scale(resource, old, scale, dry_run, manager)
        working = self._writer.patched(resource, old, patch_body, patch_type)
        self._writer.check_version(
            resource, old, (working.get("metadata") or {}).get("resourceVersion")
        )
        working = self._writer.compose(resource, old, working, subresource)
        updated = self._writer.update(
            resource,
            old,
            working,
            subresource=subresource,
            manager=manager,
            dry_run=dry_run,
            strict=strict,
            warnings=warnings,
        )
        return self._out(resource, updated, share=share)

    def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        grace_period_seconds: int | None = None,
        preconditions: Mapping[str, str] | None = None,
        dry_run: bool = False,
        share: bool = False,
    ) -> Obj:
        """Delete (or start deleting, with finalizers or a running Pod's grace period);
        returns the object's last state."""
        resource = self.registry.lookup(api_version, kind)
        old = self.view(resource, namespace, name)
        meta = old["metadata"]
        for field, have in (
            ("uid", meta.get("uid")),
            ("resourceVersion", meta.get("resourceVersion")),
        ):
            want = (preconditions or {}).get(field)
            if want and want != have:
                label = "UID" if field == "uid" else "ResourceVersion"
                raise errors.precondition_failed(
                    resource.plural, resource.group, name, label, want, str(have)
                )
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise errors.bad_request(f'unsupported propagation policy "{propagation}"')
        if resource.storage == strategies.NAMESPACE and name in kinds.UNDELETABLE_NAMESPACES:
            raise errors.forbidden("namespaces", "", name, "this namespace may not be deleted")
        if dry_run:
            return self._out(resource, old, share=share)
        if resource.storage == strategies.NAMESPACE:
            last = self._collector.delete_namespace(resource, old)
        else:
            last = self._collector.delete(resource, old, propagation, grace_period_seconds)
        return self._out(resource, last, share=share)

    def delete_collection(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        propagation: str = "Background",
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
    ) -> builtins.list[Obj]:
        resource = self.registry.lookup(api_version, kind)
        found, _ = self.select(
            resource, namespace, label_selector=label_selector, field_selector=field_selector
        )
        names = [(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in found]
        return [
            self.delete(
                api_version,
                kind,
                space,
                name,
                propagation=propagation,
                grace_period_seconds=grace_period_seconds,
                dry_run=dry_run,
            )
            for space, name in names
        ]

    # -- subresources --------------------------------------------------------------------

    def get_scale(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj:
        resource = self._scalable(api_version, kind)
        return strategies.to_scale(self.view(resource, namespace, name))

    def replace_scale(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        scale: Obj,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> Obj:
        """PUT on ``/scale``: the Scale's ``spec.replicas`` into the object's."""
        resource = self._scalable(api_version, kind)
        old = self.view(resource, namespace, name)
        self._writer.check_version(
            resource, old, (scale.get("metadata") or {}).get("resourceVersion")
        )
        return self._write_scale(
            resource, old, objects.clone(scale), dry_run, field_manager or DEFAULT_MANAGER
        )

    def _scalable(self, api_version: str, kind: str) -> Resource:
        resource = self.registry.lookup(api_version, kind)
        if "scale" not in resource.subresources:
            raise errors.unknown_resource()
        return resource

    def _write_scale(
        self, resource: Resource, old: Obj, scale: Obj, dry_run: bool, manager: str
    ) -> Obj:
        working = objects.clone(old)
        strategies.from_scale(resource, working, scale)
        updated = self._writer.update(
            resource,
            old,
            working,
            subresource="scale",
            manager=manager,
            dry_run=dry_run,
            strict=False,
            warnings=None,
        )
        return strategies.to_scale(updated)

    def bind_pod(self, namespace: str, name: str, node_name: str) -> Obj:
        """``pods/binding``: assign a Pod to a node, once (as a scheduler does)."""
        resource = self.registry.lookup("v1", "Pod")
        old = self.view(resource, namespace, name)
        working = objects.clone(old)
        strategies.bind(working, node_name)
        return self._out(
            resource,
            self._writer.update(
                resource,
                old,
                working,
                subresource="binding",
                manager=DEFAULT_MANAGER,
                dry_run=False,
                strict=False,
                warnings=None,
            ),
            share=False,
        )

    def read_log(
        self,
        namespace: str,
        name: str,
        container: str | None,
        previous: bool,
        tail_lines: int | None,
    ) -> bytes:
        """``pods/log`` through the reader the kubelet registered."""
        pod = self.view(self.registry.lookup("v1", "Pod"), namespace, name)
        container = strategies.log_container(pod, container)
        if self._log_reader is None:
            raise ApiError(
                404,
                "NotFound",
                f'no logs for container "{container}" of pod "{name}": no kubelet serves logs',
            )
        return self._log_reader(namespace, name, container, previous, tail_lines)

    # -- the write path ------------------------------------------------------------------

    def _resource_of(self, obj: Any) -> Resource:
        if not isinstance(obj, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not api_version or not kind:
            raise errors.bad_request(
                "Object 'Kind' is missing in the body"
                if not kind
                else "Object 'apiVersion' is missing in the body"
            )
        return self.registry.lookup(str(api_version), str(kind))

    @staticmethod
    def _space(resource: Resource, namespace: str | None) -> str:
        return (namespace or "") if resource.namespaced else ""

    def _now(self, seconds: int = 0) -> str:
        return objects.timestamp(self._clock() + datetime.timedelta(seconds=seconds))

    def _admit(self, operation: str, resource: Resource, new: Obj, old: Obj | None) -> None:
        for hook in self._admission.get(resource.storage, ()):
            hook(operation, new, old)

    # -- commits and listeners -----------------------------------------------------------

    def _commit(self, resource: Resource, kind: str, new: Obj, old: Obj | None) -> Obj:
        """Store (or remove, for DELETED) with a new resourceVersion; log and notify."""
        self._version += 1
        meta = new["metadata"]
        key = (resource.storage, self._space(resource, meta.get("namespace")), meta["name"])
        if kind == "DELETED":
            state = {**new, "metadata": {**meta, "resourceVersion": str(self._version)}}
            old = self._index.remove(key)
        else:
            meta["resourceVersion"] = str(self._version)
            state = new
            self._index.put(key, new, old)
        self.log.append(watching.Change(self._version, resource.storage, key[1], kind, state, old))
        if resource.storage == strategies.CRD:
            self._sync_crd(kind, state)
        self._listeners.notify(resource.storage, kind, state, old if kind != "ADDED" else None)
        return state

    def _sync_crd(self, kind: str, crd: Obj) -> None:
        name = crd["metadata"]["name"]
        for resource in [r for r in self.registry if r.crd == name]:
            self.registry.remove(resource)
        if kind != "DELETED":
            for resource in crds.resources_of(crd):
                self.registry.add(resource)

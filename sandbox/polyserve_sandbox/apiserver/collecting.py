"""Deletion: finalizers, graceful Pod deletion, Namespace termination, CRD cleanup and
owner-reference garbage collection, as the real server and its garbage collector do them
(here synchronously, inside the write that triggers them).

- An object with finalizers gets ``deletionTimestamp`` and stays until an update empties
  the list.
- A Pod on a node gets ``deletionTimestamp`` + ``deletionGracePeriodSeconds`` (the
  request's, else its ``terminationGracePeriodSeconds``, else 30) and stays until the
  kubelet deletes it with grace period 0; a Pod on no node (or finished) goes at once.
- Propagation: ``Background`` (default) deletes the dependents whose every owner is gone,
  once the owner is; ``Foreground`` keeps the owner (finalizer ``foregroundDeletion``)
  until its dependents are gone; ``Orphan`` strips the owner references. Dependents come
  from an owner-uid index, never a scan.
- A Namespace turns ``Terminating``, its objects are deleted, and it goes once empty.
- A CRD keeps ``customresourcecleanup.apiextensions.k8s.io`` until its objects are gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from polyserve_sandbox.apiserver import crds, indexes, objects, resources, strategies
from polyserve_sandbox.apiserver.resources import Resource

Obj = dict[str, Any]
Commit = Callable[[Resource, str, Obj, Obj | None], Obj]


class Collector:
    def __init__(
        self,
        index: indexes.Index,
        registry: resources.Registry,
        commit: Commit,
        now: Callable[[int], str],
    ) -> None:
        self._index = index
        self._registry = registry
        self._commit = commit
        self._now = now
        self._cleaning: set[str] = set()  # CRDs whose objects are being deleted now

    def _resource(self, storage: tuple[str, str]) -> Resource | None:
        found = self._registry.versions(*storage)
        return found[0] if found else None

    def delete(self, resource: Resource, old: Obj, propagation: str, grace: int | None) -> Obj:
        """Delete now, or mark for deletion; returns the object's current (or last) state."""
        meta = old["metadata"]
        if propagation == "Orphan":
            self._orphan(str(meta["uid"]))
        if resource.storage == strategies.POD:
            period = strategies.pod_grace_period(old, grace)
            if period > 0:
                return self._mark_graceful(resource, old, period)
        finalizers = list(meta.get("finalizers") or [])
        foreground = propagation == "Foreground" and self._index.dependents(str(meta["uid"]))
        if foreground and objects.FOREGROUND not in finalizers:
            finalizers.append(objects.FOREGROUND)
        if not finalizers:
            return self.remove(resource, old)
        working = objects.clone(old)
        wmeta = working["metadata"]
        wmeta.setdefault("deletionTimestamp", self._now(0))
        wmeta["deletionGracePeriodSeconds"] = 0
        wmeta["finalizers"] = finalizers
        current = old if working == old else self._commit(resource, "MODIFIED", working, old)
        if objects.FOREGROUND in finalizers:
            self._delete_dependents(str(meta["uid"]))
            current = self._release_foreground(str(meta["uid"])) or current
        if resource.storage == strategies.CRD:
            current = self._clean_crd(current) or current
        return current

    def _mark_graceful(self, resource: Resource, old: Obj, period: int) -> Obj:
        meta = old["metadata"]
        running = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and running is not None and running <= period:
            return old
        working = objects.clone(old)
        working["metadata"]["deletionTimestamp"] = self._now(period)
        working["metadata"]["deletionGracePeriodSeconds"] = period
        return self._commit(resource, "MODIFIED", working, old)

    def remove(self, resource: Resource, state: Obj) -> Obj:
        """Take an object out (DELETED), then what its going sets off."""
        gone = self._commit(resource, "DELETED", state, None)
        meta = state["metadata"]
        uid = str(meta["uid"])
        for key in self._index.dependents(uid):
            self._collect(key)
        for owner in objects.owner_uids(state):
            self._release_foreground(owner)
        if resource.namespaced:
            self.finish_namespace(str(meta.get("namespace", "")))
        if resource.crd is not None:
            crd = self._index.get(strategies.CRD, "", resource.crd)
            if crd is not None:
                self._clean_crd(crd)
        return gone

    def _collect(self, key: indexes.Key) -> None:
        """A dependent of a removed owner: deleted when every owner is gone, else it loses
        the references to the missing ones (as the garbage collector does)."""
        dependent = self._index.by_key(key)
        resource = self._resource(key[0])
        if dependent is None or resource is None:
            return
        refs = dependent["metadata"].get("ownerReferences") or []
        alive = [r for r in refs if self._index.has_uid(str(r.get("uid")))]
        if not alive:
            if not dependent["metadata"].get("deletionTimestamp"):
                self.delete(resource, dependent, "Background", None)
            return
        working = objects.clone(dependent)
        working["metadata"]["ownerReferences"] = objects.clone(alive)
        self._commit(resource, "MODIFIED", working, dependent)

    def _orphan(self, uid: str) -> None:
        for key in self._index.dependents(uid):
            dependent = self._index.by_key(key)
            resource = self._resource(key[0])
            if dependent is None or resource is None:
                continue
            working = objects.clone(dependent)
            refs = [
                r for r in working["metadata"].get("ownerReferences") or [] if r.get("uid") != uid
            ]
            if refs:
                working["metadata"]["ownerReferences"] = refs
            else:
                working["metadata"].pop("ownerReferences", None)
            self._commit(resource, "MODIFIED", working, dependent)

    def _delete_dependents(self, uid: str) -> None:
        for key in self._index.dependents(uid):
            dependent = self._index.by_key(key)
            resource = self._resource(key[0])
            if dependent is None or resource is None:
                continue
            if not dependent["metadata"].get("deletionTimestamp"):
                self.delete(resource, dependent, "Foreground", None)

    def _release_foreground(self, uid: str) -> Obj | None:
        """An owner waiting for its dependents (foreground) goes when the last one did."""
        key = self._index.key_of(uid)
        owner = self._index.by_key(key) if key else None
        if owner is None or key is None or self._index.dependents(uid):
            return None
        if objects.FOREGROUND not in (owner["metadata"].get("finalizers") or []):
            return None
        resource = self._resource(key[0])
        return self._drop_finalizer(resource, owner, objects.FOREGROUND) if resource else None

    def _drop_finalizer(self, resource: Resource, obj: Obj, finalizer: str) -> Obj:
        working = objects.clone(obj)
        rest = [f for f in working["metadata"].get("finalizers") or [] if f != finalizer]
        working["metadata"]["finalizers"] = rest
        if not rest and working["metadata"].get("deletionTimestamp"):
            return self.remove(resource, working)
        return self._commit(resource, "MODIFIED", working, obj)

    def _clean_crd(self, crd: Obj) -> Obj | None:
        """A deleting CRD: delete its objects; once none is left, let it go."""
        if not crd["metadata"].get("deletionTimestamp"):
            return None
        name = crd["metadata"]["name"]
        served = crds.resources_of(crd)
        if served:
            storage = served[0].storage
            if name not in self._cleaning:  # each removal calls back here: delete only once
                self._cleaning.add(name)
                try:
                    for obj in self._index.all_of(storage):
                        if not obj["metadata"].get("deletionTimestamp"):
                            self.delete(served[0], obj, "Background", None)
                finally:
                    self._cleaning.discard(name)
            if self._index.count(storage):
                return None
        current = self._index.get(strategies.CRD, "", name)
        resource = self._resource(strategies.CRD)
        if current is None or resource is None:
            return None
        return self._drop_finalizer(resource, current, crds.CLEANUP_FINALIZER)

    def delete_namespace(self, resource: Resource, old: Obj) -> Obj:
        name = old["metadata"]["name"]
        current = old
        if not old["metadata"].get("deletionTimestamp"):
            working = objects.clone(old)
            working["metadata"]["deletionTimestamp"] = self._now(0)
            working["metadata"]["deletionGracePeriodSeconds"] = 0
            working.setdefault("status", {})["phase"] = "Terminating"
            current = self._commit(resource, "MODIFIED", working, old)
        for storage, obj in self._index.in_namespace(name, skip=strategies.NAMESPACE):
            contained = self._resource(storage)
            # An earlier deletion here may have collected or changed this one already.
            now = self._index.by_key((storage, name, obj["metadata"]["name"]))
            if contained is None or now is None or now["metadata"].get("deletionTimestamp"):
                continue
            self.delete(contained, now, "Background", None)
        return self.finish_namespace(name) or current

    def finish_namespace(self, name: str) -> Obj | None:
        """A Terminating namespace goes once nothing is left in it."""
        namespace = self._index.get(strategies.NAMESPACE, "", name)
        if namespace is None or not namespace["metadata"].get("deletionTimestamp"):
            return None
        if not self._index.namespace_empty(name, skip=strategies.NAMESPACE):
            return None
        resource = self._resource(strategies.NAMESPACE)
        if resource is None:
            return None
        working = objects.clone(namespace)
        working.setdefault("spec", {})["finalizers"] = []
        if working["metadata"].get("finalizers"):
            return self._commit(resource, "MODIFIED", working, namespace)
        return self.remove(resource, working)

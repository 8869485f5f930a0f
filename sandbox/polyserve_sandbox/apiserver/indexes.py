"""Where the objects live: keyed by (storage, namespace, name), with the indexes the store
needs so that no request scans everything: by uid, by owner uid (garbage collection), and
by namespace (a namespaced list or a Namespace's deletion reads only its own objects).

Stored objects are never changed in place after they are put here (a write replaces the
dict), so readers may hold them: the watch log and the HTTP serialisers do, without copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from polyserve_sandbox.apiserver import objects

Obj = dict[str, Any]
Storage = tuple[str, str]
Key = tuple[Storage, str, str]  # (storage, namespace or "", name)


class Index:
    def __init__(self) -> None:
        self._objects: dict[Storage, dict[str, dict[str, Obj]]] = {}
        self._uids: dict[str, Key] = {}
        self._dependents: dict[str, set[Key]] = {}

    def get(self, storage: Storage, namespace: str, name: str) -> Obj | None:
        return self._objects.get(storage, {}).get(namespace, {}).get(name)

    def by_key(self, key: Key) -> Obj | None:
        return self.get(*key)

    def has_uid(self, uid: str) -> bool:
        return uid in self._uids

    def key_of(self, uid: str) -> Key | None:
        return self._uids.get(uid)

    def put(self, key: Key, obj: Obj, old: Obj | None) -> None:
        storage, namespace, name = key
        self._objects.setdefault(storage, {}).setdefault(namespace, {})[name] = obj
        uid = str(obj["metadata"]["uid"])
        self._uids[uid] = key
        before = objects.owner_uids(old) if old else set()
        after = objects.owner_uids(obj)
        for owner in before - after:
            self._forget_dependent(owner, key)
        for owner in after - before:
            self._dependents.setdefault(owner, set()).add(key)

    def remove(self, key: Key) -> Obj | None:
        """Take an object out; returns what was stored."""
        storage, namespace, name = key
        bucket = self._objects.get(storage, {}).get(namespace)
        if bucket is None or name not in bucket:
            return None
        obj = bucket.pop(name)
        if not bucket:
            del self._objects[storage][namespace]
        self._uids.pop(str(obj["metadata"]["uid"]), None)
        for owner in objects.owner_uids(obj):
            self._forget_dependent(owner, key)
        return obj

    def _forget_dependent(self, owner: str, key: Key) -> None:
        found = self._dependents.get(owner)
        if found is not None:
            found.discard(key)
            if not found:
                del self._dependents[owner]

    def dependents(self, uid: str) -> list[Key]:
        return sorted(self._dependents.get(uid, ()))

    def select(
        self, storage: Storage, namespace: str | None, test: Callable[[Obj], bool] | None
    ) -> list[Obj]:
        """Objects of a storage (in one namespace, or all), sorted as etcd lists them."""
        buckets = self._objects.get(storage, {})
        spaces = [namespace] if namespace is not None else sorted(buckets)
        found = []
        for space in spaces:
            bucket = buckets.get(space) or {}
            for name in sorted(bucket):
                obj = bucket[name]
                if test is None or test(obj):
                    found.append(obj)
        return found

    def in_namespace(self, namespace: str, skip: Storage) -> Iterator[tuple[Storage, Obj]]:
        """Everything in a namespace (a snapshot: safe to delete while iterating)."""
        for storage, buckets in list(self._objects.items()):
            if storage == skip:
                continue
            for obj in list((buckets.get(namespace) or {}).values()):
                yield storage, obj

    def namespace_empty(self, namespace: str, skip: Storage) -> bool:
        return not any(
            buckets.get(namespace) for storage, buckets in self._objects.items() if storage != skip
        )

    def count(self, storage: Storage) -> int:
        return sum(len(bucket) for bucket in self._objects.get(storage, {}).values())

    def all_of(self, storage: Storage) -> list[Obj]:
        return self.select(storage, None, None)

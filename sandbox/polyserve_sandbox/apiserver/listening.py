"""In-process observers of committed changes (the sandbox's controllers).

A listener is called synchronously after every committed change of the kinds it asked for,
with copies of its own (it may change them freely), or, when it asked for ``shared``
objects, with the stored ones themselves, read-only (a controller that only reads what
changed then costs no copy per change: pods change often, and every node's kubelet hears
every pod). Deliveries are queued, so every
listener sees the changes in resourceVersion order even when a listener writes in turn: the
outer write returns once everything it set off has been delivered. A listener that raises is
logged and skipped; the write and the other listeners go on.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from polyserve_sandbox.apiserver import objects

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
Storage = tuple[str, str]


@dataclass(frozen=True)
class Event:
    """A committed change, as in-process listeners see it (their own copies)."""

    type: str  # ADDED | MODIFIED | DELETED
    object: Obj
    old: Obj | None


@dataclass
class _Listener:
    callback: Callable[[Event], None]
    kinds: frozenset[Storage] | None
    shared: bool = False


def storage_of(api_version: str, kind: str) -> Storage:
    """(group, kind) of an apiVersion and kind: every version of a kind is one storage."""
    return (api_version.rsplit("/", 1)[0] if "/" in api_version else "", kind)


class Listeners:
    def __init__(self) -> None:
        self._listeners: list[_Listener] = []
        self._pending: collections.deque[tuple[Storage, Event]] = collections.deque()
        self._delivering = False

    def add(
        self,
        callback: Callable[[Event], None],
        kinds: Iterable[tuple[str, str]] | None,
        *,
        shared: bool = False,
    ) -> Callable[[], None]:
        storages = frozenset(storage_of(v, k) for v, k in kinds) if kinds is not None else None
        listener = _Listener(callback, storages, shared)
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def notify(self, storage: Storage, kind: str, state: Obj, old: Obj | None) -> None:
        """Deliver a committed change (``state`` and ``old`` are the stored ones)."""
        if not self._listeners:
            return
        self._pending.append((storage, Event(kind, state, old)))
        if self._delivering:
            return  # the outer call delivers it, in order
        self._delivering = True
        try:
            while self._pending:
                storage, event = self._pending.popleft()
                for listener in list(self._listeners):
                    if listener.kinds is None or storage in listener.kinds:
                        self._deliver(listener, storage, event)
        finally:
            self._delivering = False

    @staticmethod
    def _deliver(listener: _Listener, storage: Storage, event: Event) -> None:
        mine = (
            event
            if listener.shared
            else Event(event.type, objects.clone(event.object), objects.clone(event.old))
        )
        try:
            listener.callback(mine)
        except Exception:
            name = event.object["metadata"].get("name")
            logger.exception("a listener failed on %s %s/%s", event.type, storage[1], name)

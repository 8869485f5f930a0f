"""Watches: a bounded log of committed changes, and the event stream of one watch.

Every committed write appends one ``Change`` (the stored object itself, never changed
afterwards, so no copy is made). A watch keeps only a cursor (the last resourceVersion it
sent) and reads the log after it, so a slow or gone watcher holds no memory and never
blocks a writer; one that falls further behind than the log holds gets the real server's
410 ``Expired`` ERROR event, and a client relists (kopf and client-go do).

Selectors apply as on a real server: an object that starts to match arrives as ADDED, one
that stops matching leaves as DELETED.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from polyserve_sandbox.apiserver import errors, selectors
from polyserve_sandbox.apiserver.resources import Resource

if TYPE_CHECKING:
    from polyserve_sandbox.apiserver.store import Store

Obj = dict[str, Any]

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True, slots=True)
class Change:
    version: int
    storage: tuple[str, str]
    namespace: str
    type: str  # ADDED | MODIFIED | DELETED
    object: Obj  # the stored state: read-only
    old: Obj | None


class EventLog:
    """The last ``capacity`` changes, in resourceVersion order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: list[Change] = []
        self._start = 0
        self._dropped = 0  # the version of the last change no longer held
        self._changed: asyncio.Event | None = None

    def append(self, change: Change) -> None:
        self._items.append(change)
        if len(self._items) - self._start > self.capacity:
            self._dropped = self._items[self._start].version
            self._start += 1
            if self._start >= self.capacity:  # compact now and then: amortised O(1)
                del self._items[: self._start]
                self._start = 0
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def since(self, version: int) -> list[Change]:
        """The changes after ``version``; 410 Expired when some of them are no longer held."""
        if version < self._dropped:
            raise errors.expired(version, self._dropped + 1)
        lo = bisect.bisect_right(self._items, version, lo=self._start, key=lambda c: c.version)
        return self._items[lo:]

    def wake(self) -> None:
        """Wake every waiting watch without a change (to let them see they should end)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @property
    def last(self) -> int:
        """The version of the newest change held (0 when none)."""
        return self._items[-1].version if len(self._items) > self._start else self._dropped

    async def wait(self, after: int, seconds: float) -> bool:
        """Until there is a change after version ``after`` (True), for ``seconds`` at most."""
        if self.last > after:
            return True
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True


def bookmark(resource: Resource, version: int, *, initial_end: bool = False) -> Obj:
    meta: Obj = {"resourceVersion": str(version)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": meta}


def _filtered(change: Change, test: Callable[[Obj], bool] | None) -> tuple[str, Obj] | None:
    if test is None:
        return change.type, change.object
    now = test(change.object)
    if change.type != "MODIFIED":
        return (change.type, change.object) if now else None
    before = change.old is not None and test(change.old)
    if now and before:
        return "MODIFIED", change.object
    if now:
        return "ADDED", change.object
    if before:
        return "DELETED", change.object
    return None


async def events(
    store: Store,
    resource: Resource,
    namespace: str | None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    resource_version: str | None = None,
    send_initial_events: bool = False,
    bookmarks: bool = False,
    timeout_seconds: float | None = None,
    bookmark_interval: float = 30.0,
    until: asyncio.Event | None = None,
) -> AsyncGenerator[tuple[str, Obj], None]:
    """The (type, object) events of one watch, objects read-only, for ``timeout_seconds``,
    until ``until`` is set (and the log woken), or until the consumer stops."""
    test = selectors.predicate(label_selector, field_selector)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds if timeout_seconds else None
    if send_initial_events or resource_version in (None, "", "0"):
        objects, cursor = store.select(
            resource, namespace, label_selector=label_selector, field_selector=field_selector
        )
        for obj in objects:
            yield "ADDED", obj
        if send_initial_events:
            yield "BOOKMARK", bookmark(resource, cursor, initial_end=True)
    else:
        try:
            cursor = int(str(resource_version))
        except ValueError:
            raise errors.bad_request(f'invalid resource version "{resource_version}"') from None
    next_bookmark = loop.time() + bookmark_interval
    while True:
        try:
            changes = store.log.since(cursor)
        except errors.ApiError as exc:
            yield "ERROR", exc.status_object()
            return
        for change in changes:
            cursor = change.version
            if change.storage != resource.storage:
                continue
            if namespace and change.namespace != namespace:
                continue
            event = _filtered(change, test)
            if event is not None:
                yield event
        now = loop.time()
        if bookmarks and now >= next_bookmark:
            yield "BOOKMARK", bookmark(resource, store.version)
            next_bookmark = now + bookmark_interval
        if (deadline is not None and now >= deadline) or (until is not None and until.is_set()):
            return
        wait = bookmark_interval if bookmarks else 3600.0
        if deadline is not None:
            wait = min(wait, deadline - now)
        await store.log.wait(
            cursor, max(0.0, min(wait, next_bookmark - now if bookmarks else wait))
        )

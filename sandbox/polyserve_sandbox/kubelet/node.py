"""The node glue: a kubelet between the API server's store and ``PodRuntime``.

A ``Kubelet`` watches the store for Pods bound to its node (``spec.nodeName``) and runs each
with a ``PodRuntime`` on a loopback address from the fleet's ``IpAllocator``. It writes
every status through the ``status`` subresource (a merge patch, as the kubelet's status
manager does), posts the runtime's events as core/v1 Events (repeats counted on one object,
as the kubelet's recorder aggregates them), answers ``pods/log``, and pokes pods when the
ConfigMaps and Secrets of their namespace change.

Deletion follows the kubelet: a Pod with ``deletionTimestamp`` is terminated within its
``deletionGracePeriodSeconds`` and then deleted with grace period 0; a Pod deleted outright
(forced, or finished) has its processes killed. An address goes back to the allocator only
once its pod's processes are gone. ``stop()`` terminates every pod (the fleet going down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from polyserve_sandbox.apiserver import store as apistore
from polyserve_sandbox.kubelet import logs, pods
from polyserve_sandbox.kubelet.backoff import Backoff, Clock, SystemClock, timestamp
from polyserve_sandbox.kubelet.cgroups import Cgroups
from polyserve_sandbox.kubelet.images import ImageMap
from polyserve_sandbox.kubelet.layout import PodLayout

logger = logging.getLogger(__name__)
Obj = dict[str, Any]
WATCHED = [("v1", "Pod"), ("v1", "ConfigMap"), ("v1", "Secret")]
TERMINAL = ("Succeeded", "Failed")


class IpAllocator(Protocol):
    """The fleet's pod addresses (127.x.y.z): never one whose pod still runs."""

    def take(self, wanted: str | None = None) -> str:
        """A free address (``wanted`` when the pod already had one)."""
        ...

    def give_back(self, address: str) -> None: ...


class StoreResolver:
    """ConfigMaps, Secrets and Services from the store; claims from the fleet's configuration."""

    def __init__(self, store: apistore.Store, claims: Callable[[str, str], Path | None]):
        self._store, self._claims = store, claims

    def config_map(self, namespace: str, name: str) -> Obj | None:
        return self._store.try_get("v1", "ConfigMap", namespace, name)

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self._store.try_get("v1", "Secret", namespace, name)

    def claim(self, namespace: str, claim: str) -> Path | None:
        return self._claims(namespace, claim)

    def services(self, namespace: str) -> list[Obj]:
        return self._store.list("v1", "Service", namespace)


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    address: str
    runtime: pods.PodRuntime
    task: asyncio.Task[None]
    deleting: asyncio.Task[None] | None = None
    events: dict[tuple[str, str, str], tuple[str, int]] | None = None
    released: bool = False


# One store, one log reader: every kubelet of a fleet answers for its own pods through it.
_kubelets: weakref.WeakKeyDictionary[apistore.Store, list[Kubelet]] = weakref.WeakKeyDictionary()


def _read_log(
    store: apistore.Store,
    namespace: str,
    name: str,
    container: str,
    previous: bool,
    tail: int | None,
) -> bytes:
    for kubelet in _kubelets.get(store, []):
        found = kubelet.read_log(namespace, name, container, previous, tail)
        if found is not None:
            return found
    raise apistore.ApiError(
        400,
        "BadRequest",
        f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
    )


class Kubelet:
    def __init__(
        self,
        store: apistore.Store,
        node_name: str,
        root: Path,
        *,
        images: ImageMap,
        claims: Callable[[str, str], Path | None],
        backoff: Backoff,
        ip_allocator: IpAllocator,
        clock: Clock | None = None,
        host_ip: str = "127.0.0.1",
        enforce_limits: bool = True,
    ) -> None:
        self.store, self.node_name, self.root = store, node_name, root
        self.images, self.backoff, self.addresses = images, backoff, ip_allocator
        self.clock = clock or SystemClock()
        self.host_ip = host_ip
        self.resolver = StoreResolver(store, claims)
        self.cgroups = Cgroups.detect() if enforce_limits else None
        self._pods: dict[str, _Pod] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow the store; run the pods already bound to this node."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        _kubelets.setdefault(self.store, []).append(self)
        self.store.set_log_reader(lambda *args: _read_log(self.store, *args))
        self._unsubscribe = self.store.listen(self._on_change, WATCHED)
        for pod in self.store.list("v1", "Pod"):
            self._sync(pod)

    async def stop(self, grace_cap: float | None = None) -> None:
        """Terminate every pod (each within its grace period, at most ``grace_cap``)."""
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self in _kubelets.get(self.store, []):
            _kubelets[self.store].remove(self)
        pending = list(self._pods.values())
        await asyncio.gather(
            *(self._terminate(pod, self._grace(pod, grace_cap)) for pod in pending)
        )
        for pod in pending:
            if pod.deleting is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await pod.deleting

    def _grace(self, pod: _Pod, cap: float | None) -> float:
        spec = pod.runtime.pod.get("spec", {})
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        return grace if cap is None else min(grace, cap)

    # -- the store's changes ---------------------------------------------------------------

    def _on_change(self, event: apistore.Event) -> None:
        """Synchronous, inside the store's write: note what to do, do it on the loop."""
        loop = self._loop
        if loop is None:
            return
        kind = event.object.get("kind")
        if kind in ("ConfigMap", "Secret"):
            namespace = event.object["metadata"].get("namespace")
            for pod in self._pods.values():
                if pod.namespace == namespace:
                    loop.call_soon(pod.runtime.poke)
            return
        if event.type == "DELETED":
            loop.call_soon(self._deleted, event.object)
        else:
            loop.call_soon(self._sync, event.object)

    def _sync(self, pod: Obj) -> None:
        if self._stopping or (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return
        meta = pod["metadata"]
        uid = str(meta.get("uid"))
        tracked = self._pods.get(uid)
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            if tracked is None:
                self._delete(meta, uid)
            elif tracked.deleting is None:
                tracked.deleting = asyncio.create_task(
                    self._terminate_and_delete(tracked, grace), name=f"delete {tracked.name}"
                )
            return
        phase = (pod.get("status") or {}).get("phase")
        if tracked is not None:
            tracked.runtime.observe(pod)
        elif phase not in TERMINAL:
            self._run(pod)

    def _deleted(self, pod: Obj) -> None:
        tracked = self._pods.get(str(pod["metadata"].get("uid")))
        if tracked is not None and tracked.deleting is None:
            tracked.deleting = asyncio.create_task(
                self._terminate(tracked, 0, forget=True), name=f"kill {tracked.name}"
            )

    # -- one pod ---------------------------------------------------------------------------

    def _run(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid, namespace, name = str(meta["uid"]), meta.get("namespace", "default"), meta["name"]
        address = self.addresses.take((pod.get("status") or {}).get("podIP") or None)
        runtime = pods.PodRuntime(
            pod,
            pod_ip=address,
            root=self.root,
            images=self.images,
            resolver=self.resolver,
            on_status=lambda status: self._write_status(uid, namespace, name, status),
            on_event=lambda kind, reason, message: self._post_event(uid, kind, reason, message),
            clock=self.clock,
            backoff=self.backoff,
            host_ip=self.host_ip,
            cgroups=self.cgroups,
        )
        task = asyncio.create_task(self._supervise(runtime, name), name=f"pod {namespace}/{name}")
        self._pods[uid] = _Pod(uid, namespace, name, address, runtime, task, events={})

    async def _supervise(self, runtime: pods.PodRuntime, name: str) -> None:
        try:
            await runtime.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("pod %s: the runtime failed; killing its processes", name)
            runtime.kill_now()

    async def _terminate(self, pod: _Pod, grace: float, *, forget: bool = False) -> None:
        try:
            await pod.runtime.terminate(grace)
            with contextlib.suppress(asyncio.CancelledError):
                await pod.task
        finally:
            if self._pods.get(pod.uid) is pod:
                del self._pods[pod.uid]
            if not pod.released:
                pod.released = True
                self.addresses.give_back(pod.address)
            if forget:
                pod.runtime.forget()

    async def _terminate_and_delete(self, pod: _Pod, grace: float) -> None:
        await self._terminate(pod, grace)
        self._delete({"namespace": pod.namespace, "name": pod.name}, pod.uid)
        pod.runtime.forget()

    def _delete(self, meta: Obj, uid: str) -> None:
        with contextlib.suppress(apistore.ApiError):
            self.store.delete(
                "v1",
                "Pod",
                meta.get("namespace", "default"),
                meta["name"],
                grace_period_seconds=0,
                preconditions={"uid": uid},
            )

    def _current(self, uid: str, namespace: str, name: str) -> Obj | None:
        pod = self.store.try_get("v1", "Pod", namespace, name)
        if pod is None or str(pod["metadata"].get("uid")) != uid:
            return None  # gone, or a new pod of the same name
        return pod

    def _write_status(self, uid: str, namespace: str, name: str, status: Obj) -> None:
        if self._current(uid, namespace, name) is None:
            return
        try:
            self.store.patch(
                "v1",
                "Pod",
                namespace,
                name,
                {"status": status},
                patch_type="merge",
                field_manager="kubelet",
                subresource="status",
            )
        except apistore.ApiError as exc:
            logger.info("pod %s/%s: status not written: %s", namespace, name, exc.message)

    def _post_event(self, uid: str, kind: str, reason: str, message: str) -> None:
        pod = self._pods.get(uid)
        if pod is None or pod.events is None:
            return
        now = timestamp(self.clock.wall())
        key = (kind, reason, message)
        seen = pod.events.get(key)
        try:
            if seen is not None:
                event_name, count = seen
                self.store.patch(
                    "v1",
                    "Event",
                    pod.namespace,
                    event_name,
                    {"count": count + 1, "lastTimestamp": now},
                    patch_type="merge",
                    field_manager="kubelet",
                )
                pod.events[key] = (event_name, count + 1)
                return
            event_name = f"{pod.name}.{secrets.token_hex(8)}"
            self.store.create(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": event_name, "namespace": pod.namespace},
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": pod.name,
                        "namespace": pod.namespace,
                        "uid": uid,
                    },
                    "reason": reason,
                    "message": message,
                    "type": kind,
                    "source": {"component": "kubelet", "host": self.node_name},
                    "reportingComponent": "kubelet",
                    "reportingInstance": self.node_name,
                    "count": 1,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                }
            )
            pod.events[key] = (event_name, 1)
        except apistore.ApiError as exc:
            logger.info("pod %s: event %s not posted: %s", pod.name, reason, exc.message)

    # -- logs ------------------------------------------------------------------------------

    def read_log(
        self, namespace: str, name: str, container: str, previous: bool, tail: int | None
    ) -> bytes | None:
        """A container's log when this node ran the pod; None when it did not."""
        pod = self.store.try_get("v1", "Pod", namespace, name)
        if pod is None or (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return None
        layout = PodLayout(self.root, pod)
        try:
            return pods.read_logs(layout, name, container, previous=previous, tail=tail)
        except logs.LogsUnavailable as exc:
            message = str(exc)
            if not previous:
                message += f": {_waiting_reason(pod, container)}"
            raise apistore.ApiError(400, "BadRequest", message) from exc


def _waiting_reason(pod: Obj, container: str) -> str:
    status = pod.get("status") or {}
    for item in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        if item.get("name") == container:
            return str(
                (item.get("state") or {}).get("waiting", {}).get("reason", "ContainerCreating")
            )
    return "ContainerCreating"

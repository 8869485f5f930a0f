"""Hollow kubelets: nodes whose pods are reported running and ready, with no process started.

For measuring the control plane (the operator, the API server, the controllers) at a scale
this machine could never run as worker processes: kubemark's idea. A ``HollowKubelet``
follows the Pods bound to its node and, for each, writes once through the ``status``
subresource what a kubelet writes when every container has started and passed its probes
(phase Running, a pod IP from the fleet's allocator, the five conditions True, each
container running and ready); a Pod being deleted is deleted with grace period 0 at once.
Nothing is probed, nothing restarts, nothing serves: a Service's endpoints lead nowhere.

Selected with ``pods: hollow`` in ``sandbox.yaml`` (``SandboxConfig.pods``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Any, Protocol

from polyserve_sandbox.apiserver import store as apistore

logger = logging.getLogger(__name__)
Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")


class IpAllocator(Protocol):
    def take(self, wanted: str | None = None) -> str: ...

    def give_back(self, address: str) -> None: ...


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_status(pod: Obj, pod_ip: str, host_ip: str, now: str) -> Obj:
    """The status of a pod whose containers all run and are ready since ``now``."""
    spec = pod.get("spec") or {}

    def condition(kind: str) -> Obj:
        return {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}

    def running(container: Obj) -> Obj:
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": f"hollow://{pod['metadata'].get('uid', '')}/{container['name']}",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }

    def completed(container: Obj) -> Obj:
        return {
            **running(container),
            "started": False,
            "state": {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": now,
                    "finishedAt": now,
                }
            },
        }

    kinds = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
    return {
        "phase": "Running",
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "qosClass": "BestEffort",
        "conditions": [condition(kind) for kind in (*kinds, "PodScheduled")],
        "initContainerStatuses": [completed(c) for c in spec.get("initContainers") or []],
        "containerStatuses": [running(c) for c in spec.get("containers") or []],
    }


class HollowKubelet:
    """A node's kubelet that starts nothing (see the module docstring)."""

    def __init__(
        self,
        store: apistore.Store,
        node_name: str,
        *,
        ip_allocator: IpAllocator,
        host_ip: str = "127.0.0.1",
        clock: Callable[[], str] = _now,
    ) -> None:
        self.store, self.node_name = store, node_name
        self.addresses, self.host_ip, self.clock = ip_allocator, host_ip, clock
        self._addresses: dict[str, str] = {}  # pod uid -> its address
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Read-only: the stored pod, never changed in place, may be read later on the loop.
        self._unsubscribe = self.store.listen(self._on_change, [("v1", "Pod")], shared=True)
        for pod in self.store.list("v1", "Pod"):
            self._sync(pod)

    async def stop(self, grace_cap: float | None = None) -> None:
        """Stop following the store (no process to stop; ``grace_cap`` is the Kubelet's)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_change(self, event: apistore.Event) -> None:
        """Synchronous, inside the store's write: do the rest on the loop."""
        if self._loop is None:
            return
        if event.type == "DELETED":
            self._loop.call_soon(self._forget, event.object)
        else:
            self._loop.call_soon(self._sync, event.object)

    def _sync(self, pod: Obj) -> None:
        if (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return
        meta = pod["metadata"]
        uid = str(meta.get("uid"))
        namespace, name = meta.get("namespace", "default"), meta["name"]
        if meta.get("deletionTimestamp"):
            with contextlib.suppress(apistore.ApiError):
                self.store.delete(
                    "v1", "Pod", namespace, name, grace_period_seconds=0, preconditions={"uid": uid}
                )
            return
        status = pod.get("status") or {}
        if uid in self._addresses or status.get("phase") in TERMINAL:
            return
        address = self.addresses.take(status.get("podIP") or None)
        self._addresses[uid] = address
        try:
            self.store.patch(
                "v1",
                "Pod",
                namespace,
                name,
                {"status": running_status(pod, address, self.host_ip, self.clock())},
                patch_type="merge",
                field_manager="kubelet",
                subresource="status",
            )
        except apistore.ApiError as exc:
            logger.info("pod %s/%s: status not written: %s", namespace, name, exc.message)

    def _forget(self, pod: Obj) -> None:
        address = self._addresses.pop(str(pod["metadata"].get("uid")), None)
        if address is not None:
            self.addresses.give_back(address)

"""One pod's life as processes, independent of any API server.

``PodRuntime`` does what the kubelet's pod worker does for one pod: mount its volumes
(waiting with FailedMount events while a source is missing), run the init containers in
order, each to completion, then every container at once, and report the complete Pod
``status`` on every change and the kubelet's events. ``terminate(grace)`` runs preStop
hooks, SIGTERMs, SIGKILLs after the grace period, writes the final statuses, removes the
pod's volumes and working folders (its logs stay), and lets ``run()`` return.

If the task running ``run()`` is cancelled, every process is killed at once; if the whole
sandbox dies, the kernel kills them (see ``launcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyserve_sandbox.kubelet import logs, statuses, volumes
from polyserve_sandbox.kubelet.backoff import Backoff, Clock, SystemClock, timestamp
from polyserve_sandbox.kubelet.cgroups import Cgroups
from polyserve_sandbox.kubelet.containers import ContainerRunner
from polyserve_sandbox.kubelet.creating import Context
from polyserve_sandbox.kubelet.images import ImageMap
from polyserve_sandbox.kubelet.layout import PodLayout
from polyserve_sandbox.kubelet.sources import Resolver

logger = logging.getLogger(__name__)
Obj = dict[str, Any]
_unprivileged_noted = False


def running_as_root() -> bool:
    return os.geteuid() == 0


class PodRuntime:
    def __init__(
        self,
        pod: Obj,
        *,
        pod_ip: str,
        root: Path,
        images: ImageMap,
        resolver: Resolver,
        on_status: Callable[[Obj], None],
        on_event: Callable[[str, str, str], None],
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        host_ip: str = "127.0.0.1",
        cgroups: Cgroups | None = None,
        as_root: bool | None = None,
    ) -> None:
        """``cgroups``: where limits are enforced (``Cgroups.detect()``), None to not.
        ``as_root``: isolate containers (mount and PID namespaces, users); default: when
        the sandbox runs as root."""
        global _unprivileged_noted
        self.pod = copy.deepcopy(pod)
        self.layout = PodLayout(root, pod)
        isolate = running_as_root() if as_root is None else as_root
        if not isolate and not _unprivileged_noted:
            _unprivileged_noted = True
            logger.info(
                "not running as root: containers share the sandbox's view of the file system "
                "(paths are translated, read-only mounts and users are not enforced)"
            )
        self._on_status = on_status
        self._last_status: Obj | None = None
        self.ctx = Context(
            pod=self.pod,
            pod_ip=pod_ip,
            host_ip=host_ip,
            layout=self.layout,
            images=images,
            resolver=resolver,
            clock=clock or SystemClock(),
            backoff=backoff or Backoff(),
            as_root=isolate,
            cgroups=cgroups,
            event=on_event,
            changed=self._publish,
        )
        spec = self.pod.get("spec", {})
        self.init = [
            ContainerRunner(self.ctx, c, init=True) for c in spec.get("initContainers") or []
        ]
        self.regular = [
            ContainerRunner(self.ctx, c, init=False) for c in spec.get("containers") or []
        ]
        self.volumes = volumes.PodVolumes(
            self.pod, self.layout, resolver, pod_ip=pod_ip, host_ip=host_ip, as_root=isolate
        )
        self._start_time = timestamp(self.ctx.clock.wall())
        self._mounted = False
        self._terminal = False
        self._conditions: list[Obj] = list((self.pod.get("status") or {}).get("conditions") or [])
        self._tasks: list[asyncio.Task[bool]] = []
        self._terminating: asyncio.Task[None] | None = None
        self._terminated = asyncio.Event()

    # -- status --------------------------------------------------------------------------

    def status(self) -> Obj:
        spec = self.pod.get("spec", {})
        init = [r.status() for r in self.init]
        regular = [r.status() for r in self.regular]
        phase = statuses.phase(spec, init, regular, terminal=self._terminal)
        conditions = statuses.conditions(
            spec, init, regular, phase, sandbox_ready=self._mounted, others=self._conditions
        )
        self._conditions = statuses.stamp(
            conditions, self._conditions, timestamp(self.ctx.clock.wall())
        )
        status: Obj = {
            "phase": phase,
            "conditions": self._conditions,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "podIP": self.ctx.pod_ip,
            "podIPs": [{"ip": self.ctx.pod_ip}],
            "startTime": self._start_time,
            "qosClass": statuses.qos_class(spec),
            "containerStatuses": regular,
        }
        if self.init:
            status["initContainerStatuses"] = init
        return status

    def _publish(self) -> None:
        status = self.status()
        if status != self._last_status:
            self._last_status = copy.deepcopy(status)
            self._on_status(status)

    # -- life ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the pod until ``terminate()`` has completed."""
        try:
            self._publish()
            await self._mount()
            if await self._initialize():
                await self._run_containers()
            if not self.ctx.stopping.is_set():
                # Every container is done and none restarts: the pod is finished, and its
                # sidecars are stopped (in reverse order, as the kubelet stops them).
                self.ctx.stopping.set()
                await self._stop_sidecars(self._grace())
                self._terminal = True
                self._publish()
            await self._terminated.wait()
        except asyncio.CancelledError:
            self.kill_now()
            for task in self._tasks:
                task.cancel()
            raise

    def _grace(self) -> float:
        return float(self.pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))

    async def _stop_sidecars(self, grace: float) -> None:
        for runner in reversed(self.init):
            if runner.sidecar:
                await runner.stop(grace)

    async def _mount(self) -> None:
        while not self.ctx.stopping.is_set():
            try:
                self.ctx.volumes.update(self.volumes.set_up())
            except volumes.MountError as exc:
                errors = exc.errors if isinstance(exc, volumes.MountErrors) else [exc]
                for error in errors:
                    self.ctx.event("Warning", "FailedMount", str(error))
                await self.ctx.pause(self.ctx.backoff.retry)
                continue
            self._mounted = True
            self._publish()
            return

    async def _initialize(self) -> bool:
        for runner in self.init:
            if self.ctx.stopping.is_set():
                return False
            task = asyncio.create_task(runner.run(), name=f"init {runner.name}")
            self._tasks.append(task)
            if runner.sidecar:  # the next one starts once this one has started
                started = asyncio.ensure_future(runner.has_started.wait())
                stopping = asyncio.ensure_future(self.ctx.stopping.wait())
                await asyncio.wait([started, stopping], return_when="FIRST_COMPLETED")
                started.cancel()
                stopping.cancel()
            elif not await task:
                return False
        return not self.ctx.stopping.is_set()

    async def _run_containers(self) -> None:
        tasks = [asyncio.create_task(r.run(), name=f"container {r.name}") for r in self.regular]
        self._tasks += tasks
        await asyncio.gather(*tasks)

    def observe(self, pod: Obj) -> None:
        """The pod as the API holds it now: the conditions others own (PodScheduled,
        readiness gates, DisruptionTarget) are kept in the status and count for Ready."""
        theirs = [
            c
            for c in (pod.get("status") or {}).get("conditions") or []
            if c.get("type") not in statuses.KUBELET_CONDITIONS
        ]
        mine = [c for c in self._conditions if c["type"] in statuses.KUBELET_CONDITIONS]
        if theirs + mine != self._conditions:
            self._conditions = theirs + mine
            self._publish()

    def poke(self) -> None:
        """Sources may have changed (a ConfigMap, a Secret, a claim): rewrite configMap and
        secret volumes and retry what waits for them now."""
        if self._mounted:
            self.volumes.refresh()
        self.ctx.poked.set()
        self.ctx.poked = asyncio.Event()

    async def terminate(self, grace_seconds: float) -> None:
        """Stop every container (preStop, SIGTERM, SIGKILL after the grace period), write
        the final status, remove the pod's folders; idempotent."""
        if self._terminating is None:
            self._terminating = asyncio.create_task(self._terminate(grace_seconds))
        await asyncio.shield(self._terminating)

    async def _terminate(self, grace: float) -> None:
        self.ctx.stopping.set()
        try:
            began = self.ctx.clock.monotonic()
            workers = [r for r in [*self.init, *self.regular] if not r.sidecar]
            await asyncio.gather(*(r.stop(grace) for r in workers))
            await self._stop_sidecars(max(0.0, grace - (self.ctx.clock.monotonic() - began)))
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            self.kill_now()
            self._terminal = True
            self._publish()
            self._clean()
            self._terminated.set()

    def _clean(self) -> None:
        self.volumes.tear_down()
        shutil.rmtree(self.layout.containers, ignore_errors=True)
        if self.ctx.cgroups is not None:
            self.ctx.cgroups.remove(self.layout.key)

    def kill_now(self) -> None:
        """SIGKILL every process of the pod at once."""
        for runner in [*self.init, *self.regular]:
            runner.kill_now()

    def logs(self, container: str, previous: bool = False, tail: int | None = None) -> bytes:
        names = [r.name for r in [*self.init, *self.regular]]
        name = self.pod["metadata"]["name"]
        if container not in names:
            raise logs.LogsUnavailable(f"container {container} is not valid for pod {name}")
        return read_logs(self.layout, name, container, previous=previous, tail=tail)

    def forget(self) -> None:
        """Remove what is left of the pod (its logs): the pod object is gone."""
        shutil.rmtree(self.layout.dir, ignore_errors=True)


def read_logs(
    layout: PodLayout, pod: str, container: str, *, previous: bool, tail: int | None
) -> bytes:
    """A container's log, also after its pod's runtime is gone (``kubectl logs``)."""
    return logs.read(
        layout.container_logs(container),
        previous=previous,
        tail_lines=tail,
        pod=pod,
        container=container,
    )

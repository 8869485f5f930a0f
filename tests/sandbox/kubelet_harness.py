"""Helpers for the kubelet's tests: pods as dicts, an honest resolver, a status recorder.

Pods run as real processes (small ``python -c`` programs and ``sh``) on a loopback address
of their own; waits are on conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from polyserve_sandbox.kubelet import images, logs, pods
from polyserve_sandbox.kubelet.backoff import Backoff

Obj = dict[str, Any]
FAST = Backoff(initial=0.3, cap=1.2, retry=0.2)
TOOLS = "local/tools:1"
BIN = str(Path(sys.prefix) / "bin")
IMAGES = images.ImageMap(
    {TOOLS: images.Image(path=(BIN,), env={"IMAGE_VAR": "from-image", "PYTHONUNBUFFERED": "1"})}
)
_addresses = itertools.count(2)
DEADLINE = 20.0


def address() -> str:
    """A loopback address of the pod's own (127.77.x.y), as the fleet hands them out."""
    n = next(_addresses) + (os.getpid() % 200) * 256
    return f"127.77.{(n // 256) % 256}.{n % 256 or 1}"


def container(name: str, code: str | None = None, **fields: Any) -> Obj:
    """A container of the tools image; ``code`` is a Python program run with ``python -c``."""
    spec: Obj = {"name": name, "image": TOOLS, **fields}
    if code is not None:
        spec["command"] = ["python", "-c", code]
    return spec


def pod(
    containers: list[Obj],
    *,
    init: list[Obj] | None = None,
    volumes: list[Obj] | None = None,
    restart: str = "Always",
    name: str = "p",
    **spec: Any,
) -> Obj:
    body: Obj = {"containers": containers, "restartPolicy": restart, **spec}
    if init:
        body["initContainers"] = init
    if volumes:
        body["volumes"] = volumes
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": str(uuid.uuid4())},
        "spec": body,
    }


class Resolver:
    """ConfigMaps, Secrets, claims and Services held here (what the store would answer)."""

    def __init__(self) -> None:
        self.config_maps: dict[str, Obj] = {}
        self.secrets: dict[str, Obj] = {}
        self.claims: dict[str, Path] = {}
        self.service_objects: list[Obj] = []

    def config_map(self, namespace: str, name: str) -> Obj | None:
        return self.config_maps.get(name)

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self.secrets.get(name)

    def claim(self, namespace: str, claim: str) -> Path | None:
        return self.claims.get(claim)

    def services(self, namespace: str) -> list[Obj]:
        return [s for s in self.service_objects if s["metadata"].get("namespace") == namespace]


class Recorder:
    """Every status and event a runtime reports."""

    def __init__(self) -> None:
        self.statuses: list[Obj] = []
        self.events: list[tuple[str, str, str]] = []
        self._changed = asyncio.Event()

    def on_status(self, status: Obj) -> None:
        self.statuses.append(status)
        self._changed.set()

    def on_event(self, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))
        self._changed.set()

    @property
    def status(self) -> Obj:
        return self.statuses[-1]

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]

    async def until(self, predicate: Callable[[], bool], deadline: float = DEADLINE) -> None:
        """Wait until ``predicate()`` holds, re-checked on every status and event."""
        end = time.monotonic() + deadline
        while True:
            self._changed.clear()
            if predicate():
                return
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"condition not met in {deadline}s; last status: {self.statuses[-1:]}, "
                    f"events: {self.events[-8:]}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def until_status(
        self, predicate: Callable[[Obj], bool], deadline: float = DEADLINE
    ) -> Obj:
        await self.until(lambda: bool(self.statuses) and predicate(self.status), deadline)
        return self.status


def state(status: Obj, name: str) -> Obj:
    """The state of a container (init or regular) in a pod status."""
    items: list[Obj] = [*status.get("initContainerStatuses", []), *status["containerStatuses"]]
    for item in items:
        if item["name"] == name:
            return item
    raise KeyError(name)


def condition(status: Obj, kind: str) -> str:
    return str(next(c["status"] for c in status["conditions"] if c["type"] == kind))


class Running:
    def __init__(self, runtime: pods.PodRuntime, recorder: Recorder, task: asyncio.Task[None]):
        self.runtime, self.recorder, self.task = runtime, recorder, task


@contextlib.asynccontextmanager
async def running(
    spec: Obj,
    root: Path,
    *,
    resolver: Resolver | None = None,
    image_map: images.ImageMap = IMAGES,
    backoff: Backoff = FAST,
    grace: float = 0.0,
    **options: Any,
) -> AsyncIterator[Running]:
    """Run a pod; terminate it (with ``grace``) and wait for ``run()`` on the way out."""
    recorder = Recorder()
    runtime = pods.PodRuntime(
        spec,
        pod_ip=options.pop("pod_ip", None) or address(),
        root=root,
        images=image_map,
        resolver=resolver or Resolver(),
        on_status=recorder.on_status,
        on_event=recorder.on_event,
        backoff=backoff,
        **options,
    )
    handle = Running(runtime, recorder, asyncio.create_task(runtime.run()))
    try:
        yield handle
    finally:
        await asyncio.wait_for(runtime.terminate(grace), 30)
        await asyncio.wait_for(handle.task, 10)


def log(pod: Running, container: str) -> bytes:
    """A container's current log; empty while it has none."""
    try:
        return pod.runtime.logs(container)
    except logs.LogsUnavailable:
        return b""


def processes_with(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline and ") Z " not in stat:
            found.append(int(entry.name))
    return found

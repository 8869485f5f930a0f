"""One container of a pod: pull, create, start, probe, restart with back-off, stop.

A ``ContainerRunner`` plays the kubelet's ``SyncPod`` for one container: each round it
waits out the crash-loop back-off, "pulls" the image (resolves it in the image map), builds
the process (environment, mounts, user, translated paths) and runs it, then decides on a
restart from ``restartPolicy``. Its ``status()`` is the API's ``ContainerStatus``: the
current state (waiting with the kubelet's reason, running, terminated), ``lastState``,
``restartCount`` (the count of the run, as the runtime labels it), ``ready`` and
``started``. Waiting reasons are the kubelet's: ContainerCreating, PodInitializing,
ErrImagePull, ImagePullBackOff, ErrImageNeverPull, CreateContainerConfigError,
CreateContainerError, CrashLoopBackOff; a program that cannot be exec'd terminates with
StartError and exit code 128, as with containerd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from polyserve_sandbox.kubelet import (
    creating,
    environment,
    images,
    logs,
    mounts,
    probes,
    processes,
)
from polyserve_sandbox.kubelet.backoff import Tracker, timestamp
from polyserve_sandbox.kubelet.creating import Context

logger = logging.getLogger(__name__)
Obj = dict[str, Any]
MIN_GRACE = 2.0  # the kubelet's minimumGracePeriodInSeconds after preStop
NEVER_STARTED = "1970-01-01T00:00:00Z"


class ContainerRunner:
    def __init__(self, ctx: Context, spec: Obj, *, init: bool) -> None:
        self.ctx, self.spec = ctx, spec
        # A restartable init container (a sidecar) restarts and is probed like a container;
        # the pod's next init container starts once it has started.
        self.sidecar = init and spec.get("restartPolicy") == "Always"
        self.init = init and not self.sidecar
        self.has_started = asyncio.Event()
        self.halted = False
        self.name: str = spec["name"]
        self.image_ref: str = spec.get("image", "")
        reason = "PodInitializing" if ctx.spec.get("initContainers") else "ContainerCreating"
        self.state: Obj = {"waiting": {"reason": reason}}
        self.last_state: Obj = {}
        self.restart_count = 0
        self.runs = 0
        self.ready = self.started = False
        self.image_id = ""
        self.container_id: str | None = None
        self.process: processes.Process | None = None
        self.done = self.succeeded = False
        self.crash, self.pull = Tracker(ctx.backoff), Tracker(ctx.backoff)
        self._pull_failed_at: float | None = None
        self._finished_at: float | None = None
        self._readiness: bool | None = None
        self._launch: processes.Launch | None = None
        self._fs: mounts.ContainerFs | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Task[None] | None = None

    # -- status --------------------------------------------------------------------------

    def status(self) -> Obj:
        status: Obj = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.image_ref,
            "imageID": self.image_id,
            "started": self.started,
        }
        if self.container_id is not None:
            status["containerID"] = self.container_id
        return status

    def _waiting(self, reason: str, message: str | None = None) -> None:
        if "terminated" in self.state:
            self.last_state = self.state
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        self.ctx.changed()

    def _sync_ready(self) -> None:
        ready = (
            self.process is not None
            and self.started
            and ("readinessProbe" not in self.spec or self._readiness is True)
        )
        if self.init:
            ready = "terminated" in self.state and self.state["terminated"]["exitCode"] == 0
        if ready != self.ready:
            self.ready = ready
            self.ctx.changed()

    # -- the round -----------------------------------------------------------------------

    async def run(self) -> bool:
        """Run until no restart is due or the pod stops; whether the last run succeeded."""
        while not (self.ctx.stopping.is_set() or self.halted):
            if not await self._back_off():
                break
            image = await self._pull()
            if image is None:
                break
            launch = await self._create(image)
            if launch is None:
                continue
            code = await self._run(launch)
            if code is None or self.ctx.stopping.is_set() or self.halted:
                continue
            if not self._restart_due(code):
                self.done, self.succeeded = True, code == 0
                self.ctx.changed()
                return self.succeeded
        return self.succeeded

    def _restart_due(self, code: int) -> bool:
        policy = self.ctx.spec.get("restartPolicy", "Always")
        if self.sidecar:
            return True
        if self.init:
            return code != 0 and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    async def _back_off(self) -> bool:
        if self._finished_at is None:
            return True
        wait = self.crash.remaining(self._finished_at, self.ctx.clock.monotonic())
        if wait > 0:
            self._waiting(
                "CrashLoopBackOff",
                f"back-off {self.crash.describe()} restarting failed container={self.name} "
                f"pod={self.ctx.ref}",
            )
            self.ctx.event(
                "Warning",
                "BackOff",
                f"Back-off restarting failed container {self.name} in pod {self.ctx.ref}",
            )
            if not await self.ctx.pause(wait, wake_on_poke=False):
                return False
        self.crash.next(self._finished_at, self.ctx.clock.monotonic())
        return True

    def _pull_policy(self) -> str:
        if "imagePullPolicy" in self.spec:
            return str(self.spec["imagePullPolicy"])
        last = self.image_ref.rsplit("/", 1)[-1]
        tagged = ":" in last and not self.image_ref.endswith(":latest")
        return "IfNotPresent" if tagged or "@" in self.image_ref else "Always"

    async def _pull(self) -> images.Image | None:
        ref, event = self.image_ref, self.ctx.event
        while not self.ctx.stopping.is_set():
            if self._pull_failed_at is not None:
                wait = self.pull.remaining(self._pull_failed_at, self.ctx.clock.monotonic())
                if wait > 0:
                    self._waiting("ImagePullBackOff", f'Back-off pulling image "{ref}"')
                    event("Normal", "BackOff", f'Back-off pulling image "{ref}"')
                    event("Warning", "Failed", "Error: ImagePullBackOff")
                    if not await self.ctx.pause(wait):
                        return None
            policy = self._pull_policy()
            try:
                image = self.ctx.images.resolve(ref)
            except images.ImageNotFound as exc:
                if policy == "Never":
                    message = f'Container image "{ref}" is not present with pull policy of Never'
                    self._waiting("ErrImageNeverPull", message)
                    event("Warning", "ErrImageNeverPull", message)
                    if not await self.ctx.pause(self.ctx.backoff.retry):
                        return None
                    continue
                event("Normal", "Pulling", f'Pulling image "{ref}"')
                message = f'Failed to pull image "{ref}": {exc}'
                event("Warning", "Failed", message)
                event("Warning", "Failed", "Error: ErrImagePull")
                self._waiting("ErrImagePull", message)
                now = self.ctx.clock.monotonic()
                self._pull_failed_at = now
                self.pull.next(now, now)
                continue
            self._pull_failed_at = None
            if policy == "Always":
                event("Normal", "Pulling", f'Pulling image "{ref}"')
                event(
                    "Normal",
                    "Pulled",
                    f'Successfully pulled image "{ref}" in 0s (0s including waiting). '
                    "Image size: 0 bytes.",
                )
            else:
                event("Normal", "Pulled", f'Container image "{ref}" already present on machine')
            self.image_id = self.ctx.images.image_id(ref)
            return image
        return None

    async def _create(self, image: images.Image) -> processes.Launch | None:
        try:
            return self._build(image)
        except environment.ConfigError as exc:
            await self._create_failed("CreateContainerConfigError", str(exc))
        except mounts.CreateError as exc:
            await self._create_failed("CreateContainerError", str(exc))
        return None

    async def _create_failed(self, reason: str, message: str) -> None:
        self._waiting(reason, message)
        self.ctx.event("Warning", "Failed", f"Error: {message}")
        await self.ctx.pause(self.ctx.backoff.retry)

    def _build(self, image: images.Image) -> processes.Launch:
        self._launch, self._fs = creating.launch(self.ctx, self.spec, image)
        return self._launch

    async def _run(self, launch: processes.Launch) -> int | None:
        ctx = self.ctx
        if self.runs:
            if "terminated" in self.state:
                self.last_state = self.state
            self.restart_count = self.runs
        log_folder = ctx.layout.container_logs(self.name)
        log_fd = logs.open_run(log_folder, self.restart_count)
        container_id = f"sandbox://{secrets.token_hex(32)}"
        ctx.event("Normal", "Created", f"Created container: {self.name}")
        oom_before = ctx.cgroups.oom_kills(ctx.layout.key, self.name) if ctx.cgroups else 0
        try:
            process = await processes.start(launch, stdout=log_fd, stderr=log_fd)
        except processes.LaunchError as exc:
            if exc.stage == "create":
                await self._create_failed("CreateContainerError", str(exc))
                return None
            self.runs += 1
            self.container_id = container_id
            self.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(exc),
                    "startedAt": NEVER_STARTED,
                    "finishedAt": timestamp(ctx.clock.wall()),
                    "containerID": container_id,
                }
            }
            ctx.event("Warning", "Failed", f"Error: {exc}")
            self._finished_at = ctx.clock.monotonic()
            ctx.changed()
            return 128
        finally:
            os.close(log_fd)
        for warning in process.warnings:
            ctx.event("Warning", "RunAsUserIgnored", warning)
        self.runs += 1
        self.process, self.container_id = process, container_id
        if ctx.stopping.is_set():  # the pod began terminating while this one started
            process.kill()
        started_at = timestamp(ctx.clock.wall())
        self.state = {"running": {"startedAt": started_at}}
        self.started = "startupProbe" not in self.spec
        if self.started:
            self.has_started.set()
        self._readiness = None
        ctx.event("Normal", "Started", f"Started container {self.name}")
        self._sync_ready()
        ctx.changed()
        self._start_probes()
        try:
            code = await process.wait()
        finally:
            await probes.cancel(self._tasks)
        oomed = (
            ctx.cgroups is not None
            and ctx.cgroups.oom_kills(ctx.layout.key, self.name) > oom_before
        )
        assert self._fs is not None
        message = logs.termination_message(
            self._fs.termination_file,
            log_folder / f"{self.restart_count}.log",
            fallback=self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            failed=code != 0,
        )
        reason = "Completed" if code == 0 else "OOMKilled" if oomed else "Error"
        terminated: Obj = {"exitCode": code, "reason": reason}
        if message:
            terminated["message"] = message
        terminated |= {
            "startedAt": started_at,
            "finishedAt": timestamp(ctx.clock.wall()),
            "containerID": container_id,
        }
        self.process = None
        self.state = {"terminated": terminated}
        self.started = False
        self._finished_at = ctx.clock.monotonic()
        self._sync_ready()
        ctx.changed()
        return code

    # -- probes and hooks ----------------------------------------------------------------

    def _ports(self) -> dict[str, int]:
        return {
            p["name"]: int(p["containerPort"]) for p in self.spec.get("ports") or [] if "name" in p
        }

    async def _exec(self, command: list[str], seconds: float) -> tuple[int | None, bytes]:
        assert self._launch is not None and self._fs is not None
        launch = replace(self._launch, argv=[self._fs.token(word) for word in command])
        try:
            code, output, _ = await processes.execute(launch, seconds)
        except processes.LaunchError as exc:
            return 126, str(exc).encode()
        return code, output

    def _action(self, action: Obj, seconds: float) -> Callable[[], Any]:
        async def check() -> tuple[bool, str]:
            return await probes.attempt(
                action, pod_ip=self.ctx.pod_ip, ports=self._ports(), seconds=seconds, run=self._exec
            )

        return check

    def _start_probes(self) -> None:
        started_at = self.ctx.clock.monotonic()
        kinds: tuple[probes.Kind, ...] = ("startup", "readiness", "liveness")
        for kind in kinds:
            spec = self.spec.get(f"{kind}Probe")
            if not spec or self.init:
                continue
            gate: Callable[[], bool] = (
                (lambda: not self.started) if kind == "startup" else (lambda: self.started)
            )
            prober = probes.Prober(
                kind,
                spec,
                self._action(spec, float(spec.get("timeoutSeconds", 1))),
                clock=self.ctx.clock,
                started_at=started_at,
                gate=gate,
                on_result=self._on_probe,
                on_failure=self._on_probe_failure,
            )
            self._tasks.append(asyncio.create_task(prober.run(), name=f"probe {kind} {self.name}"))
        if (self.spec.get("lifecycle") or {}).get("postStart"):
            self._tasks.append(
                asyncio.create_task(self._post_start(), name=f"postStart {self.name}")
            )

    def _on_probe(self, kind: probes.Kind, ok: bool) -> None:
        if kind == "readiness":
            self._readiness = ok
        elif kind == "startup" and ok:
            self.started = True
            self.has_started.set()
            self.ctx.changed()
        elif not ok:
            probe = self.spec.get(f"{kind}Probe") or {}
            self._kill(
                f"Container {self.name} failed {kind} probe, will be restarted",
                probe.get("terminationGracePeriodSeconds"),
            )
        self._sync_ready()

    def _on_probe_failure(self, kind: probes.Kind, output: str) -> None:
        self.ctx.event("Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {output}")

    def _grace(self, override: float | None = None) -> float:
        if override is not None:
            return float(override)
        return float(self.ctx.spec.get("terminationGracePeriodSeconds", 30))

    def _kill(self, message: str, grace: float | None) -> None:
        if self._stopping is None or self._stopping.done():
            self.ctx.event("Normal", "Killing", message)
            self._stopping = asyncio.create_task(self._stop_process(self._grace(grace)))

    async def _hook(self, kind: str, seconds: float) -> None:
        handler = ((self.spec.get("lifecycle") or {}).get(kind)) or {}
        if "sleep" in handler:
            await asyncio.sleep(min(float(handler["sleep"].get("seconds", 0)), seconds))
            return
        ok, output = await self._action(handler, seconds)()
        if not ok:
            name = "PreStop" if kind == "preStop" else "PostStart"
            self.ctx.event("Warning", f"Failed{name}Hook", f"{name}Hook failed: {output}")
            if kind == "postStart":
                self._kill("FailedPostStartHook", None)

    async def _post_start(self) -> None:
        await self._hook("postStart", self._grace())

    async def _stop_process(self, grace: float) -> None:
        process = self.process
        if process is None:
            return
        began = self.ctx.clock.monotonic()
        if grace > 0 and (self.spec.get("lifecycle") or {}).get("preStop"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hook("preStop", grace), grace)
        remaining = max(grace - (self.ctx.clock.monotonic() - began), MIN_GRACE)
        process.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), remaining)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def stop(self, grace: float) -> None:
        """Stop the running process for good (preStop, SIGTERM, SIGKILL after ``grace``)."""
        self.halted = True
        if self.process is None:
            return
        self.ctx.event("Normal", "Killing", f"Stopping container {self.name}")
        if self._stopping is not None and not self._stopping.done():
            await self._stopping
            return
        await self._stop_process(grace)

    def kill_now(self) -> None:
        """SIGKILL at once (the sandbox is going away)."""
        if self.process is not None:
            self.process.kill()

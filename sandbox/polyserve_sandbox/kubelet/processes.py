"""Starting, signalling and reaping container processes (the parent side of ``launcher``).

Each container runs under a launcher in a session of its own (its process group), so a
SIGKILL to the group reaches whatever it left behind; as root the container is also PID 1
of its own PID namespace, which the kernel empties when it dies. The spec travels on the
launcher's stdin (no file with a Secret's values is written), and the launcher's report
pipe says whether the program was exec'd, or why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("launcher.py"))


class LaunchError(Exception):
    """The runtime could not create (``stage="create"``) or start (``"start"``) it."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Bind:
    """A bind mount in the container's mount namespace: ``source`` over ``target``."""

    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Launch:
    """Everything the launcher needs to run one process of a container."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    isolate: bool
    """Own mount and PID namespaces (needs root)."""
    binds: list[Bind] = field(default_factory=list)
    read_only_root: bool = False
    user: User | None = None
    cgroups: list[str] = field(default_factory=list)
    reach: list[str] = field(default_factory=list)
    """Folders and files the user must reach (its volumes); else the launcher runs the
    container as the sandbox's user and says why."""

    def payload(self, report_fd: int) -> bytes:
        user = None
        if self.user is not None:
            user = {"uid": self.user.uid, "gid": self.user.gid, "groups": list(self.user.groups)}
        return json.dumps(
            {
                "argv": self.argv,
                "env": self.env,
                "cwd": self.cwd,
                "isolate": self.isolate,
                "binds": [[b.source, b.target, b.read_only] for b in self.binds],
                "read_only_root": self.read_only_root,
                "user": user,
                "cgroups": self.cgroups,
                "reach": self.reach,
                "parent": os.getpid(),
                "report_fd": report_fd,
            }
        ).encode()


class Process:
    """A running container process."""

    def __init__(self, launcher: asyncio.subprocess.Process, pid: int, warnings: list[str]):
        self._launcher = launcher
        self.pid = pid
        """The container's own process, as this machine sees it."""
        self.warnings = warnings

    @property
    def group(self) -> int:
        return self._launcher.pid

    @property
    def exit_code(self) -> int | None:
        code = self._launcher.returncode
        return None if code is None else _kubernetes_code(code)

    async def wait(self) -> int:
        """The exit code as Kubernetes reports it (128 + signal for a killed process)."""
        return _kubernetes_code(await self._launcher.wait())

    def signal(self, number: int) -> None:
        """A signal to the container's process only, as a runtime's ``kill`` sends it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, number)

    def kill(self) -> None:
        """SIGKILL to the container's process: as PID 1 of its namespace it takes every
        process of the container with it, and the launcher reaps it and exits. Without a
        namespace the container's process group gets the signal."""
        self.signal(signal.SIGKILL)
        if self.pid == self.group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.group, signal.SIGKILL)


def _kubernetes_code(code: int) -> int:
    return 128 - code if code < 0 else code


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                await _readable(loop, fd)
                continue
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    finally:
        os.close(fd)


async def start(launch: Launch, *, stdout: int, stderr: int) -> Process:
    """Start the process; raises ``LaunchError`` when it cannot be created or exec'd."""
    read_end, write_end = os.pipe()
    try:
        launcher = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            LAUNCHER,
            stdin=asyncio.subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    try:
        assert launcher.stdin is not None
        launcher.stdin.write(launch.payload(write_end))
        with contextlib.suppress(ConnectionError):
            await launcher.stdin.drain()
        launcher.stdin.close()
        report = await _read_all(read_end)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        await asyncio.shield(launcher.wait())
        raise
    pid, warnings, error = launcher.pid, [], None
    for line in report.decode(errors="replace").splitlines():
        message = json.loads(line)
        pid = message.get("pid", pid)
        if "warning" in message:
            warnings.append(message["warning"])
        if "error" in message:
            error = LaunchError(message.get("stage", "create"), message["error"])
    if error is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        await launcher.wait()
        raise error
    return Process(launcher, pid, warnings)


async def execute(launch: Launch, seconds: float) -> tuple[int | None, bytes, list[str]]:
    """Run a command to completion in a container's view (exec probes and hooks): its exit
    code (None when it ran past ``seconds`` and was killed), its output, and launch warnings."""
    read_end, write_end = os.pipe()
    try:
        process = await start(launch, stdout=write_end, stderr=write_end)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    reading = asyncio.ensure_future(_read_all(read_end))
    try:
        code: int | None = await asyncio.wait_for(process.wait(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        code = None
    finally:
        if not reading.done():
            process.kill()
    output = await reading
    return code, output, process.warnings

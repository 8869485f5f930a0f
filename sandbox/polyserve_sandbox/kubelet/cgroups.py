"""Resource limits through cgroups, where this machine lets the sandbox write them.

Each container gets a cgroup ``<the sandbox's own cgroup>/polyserve-sandbox/<pod>/<container>``
in the cpu and memory hierarchies (cgroup v1) or the unified one (v2 with both controllers
enabled). ``limits.cpu`` becomes a CFS quota over a 100 ms period, ``requests.cpu`` the
share (v1 ``cpu.shares``, v2 ``cpu.weight``) and ``limits.memory`` the memory limit (with
swap capped at the same value on v1), so a container past its limit is OOM-killed by the
kernel and reported ``OOMKilled`` with exit code 137. The launcher joins the cgroups before
the container's program starts. When nothing is writable (no root, a read-only cgroupfs)
``detect`` returns None and the sandbox logs once that limits are not enforced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from pathlib import Path
from typing import Any

from polyserve_sandbox import quantities

logger = logging.getLogger(__name__)
ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
NAME = "polyserve-sandbox"


def _own(controller: str) -> str:
    """This process's cgroup path in a v1 hierarchy (``controller``) or v2 (``""``)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path.lstrip("/")
    return ""


def _writable(base: Path) -> bool:
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / "probe"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError:
        return False
    return True


class Cgroups:
    def __init__(self, bases: dict[str, Path], version: int) -> None:
        self.bases = bases  # "cpu", "memory" (v1) or "unified" (v2) -> our parent folder
        self.version = version
        self._stale: set[str] = set()  # pods whose cgroups were still busy when removed

    @classmethod
    def detect(cls) -> Cgroups | None:
        v1 = {c: ROOT / c / _own(c) / NAME for c in ("cpu", "memory") if (ROOT / c).is_dir()}
        if len(v1) == 2 and all(_writable(base) for base in v1.values()):
            return cls(v1, 1)
        unified = ROOT if (ROOT / "cgroup.controllers").exists() else ROOT / "unified"
        controllers = unified / "cgroup.controllers"
        if controllers.exists() and {"cpu", "memory"} <= set(controllers.read_text().split()):
            base = unified / _own("") / NAME
            if _writable(base):
                with contextlib.suppress(OSError):
                    (base / "cgroup.subtree_control").write_text("+cpu +memory")
                return cls({"unified": base}, 2)
        logger.info(
            "cgroups are not writable here: container cpu and memory limits are not enforced"
        )
        return None

    def _dirs(self, pod: str, container: str) -> list[Path]:
        return [base / pod / container for base in self.bases.values()]

    def prepare(self, pod: str, container: str, resources: dict[str, Any]) -> list[str]:
        """The container's cgroups, emptied of leftovers and set to its limits."""
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        dirs = self._dirs(pod, container)
        for folder in dirs:
            if self.version == 2:
                folder.parent.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    (folder.parent / "cgroup.subtree_control").write_text("+cpu +memory")
            folder.mkdir(parents=True, exist_ok=True)
            _kill_all(folder)
        cpu_limit = quantities.parse(limits["cpu"]) if "cpu" in limits else None
        cpu_request = quantities.parse(requests.get("cpu", limits.get("cpu", "0")))
        memory = int(quantities.parse(limits["memory"])) if "memory" in limits else None
        quota = max(1000, math.ceil(cpu_limit * PERIOD_US)) if cpu_limit is not None else None
        if self.version == 1:
            cpu, mem = self.bases["cpu"] / pod / container, self.bases["memory"] / pod / container
            _write(cpu / "cpu.cfs_period_us", PERIOD_US)
            _write(cpu / "cpu.cfs_quota_us", quota if quota is not None else -1)
            _write(cpu / "cpu.shares", max(2, int(cpu_request * 1024)))
            _write(mem / "memory.limit_in_bytes", memory if memory is not None else -1)
            _write(mem / "memory.memsw.limit_in_bytes", memory if memory is not None else -1)
        else:
            folder = dirs[0]
            _write(folder / "cpu.max", f"{quota if quota is not None else 'max'} {PERIOD_US}")
            weight = max(
                1, min(10000, 1 + ((max(2, int(cpu_request * 1024)) - 2) * 9999) // 262142)
            )
            _write(folder / "cpu.weight", weight)
            _write(folder / "memory.max", memory if memory is not None else "max")
            _write(folder / "memory.swap.max", 0 if memory is not None else "max")
        return [str(folder) for folder in dirs]

    def oom_kills(self, pod: str, container: str) -> int:
        """How many processes of the container the kernel OOM-killed so far."""
        if self.version == 1:
            path = self.bases["memory"] / pod / container / "memory.oom_control"
        else:
            path = self.bases["unified"] / pod / container / "memory.events"
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def remove(self, pod: str) -> None:
        """Kill what is left of the pod's containers and remove its cgroups. One still busy
        (a process not yet reaped) is tried again at the next removal."""
        for key in [pod, *self._stale]:
            self._stale.discard(key)
            if not self._remove(key):
                self._stale.add(key)

    def _remove(self, pod: str) -> bool:
        removed = True
        for base in self.bases.values():
            folder = base / pod
            if not folder.is_dir():
                continue
            for child in folder.iterdir():
                if child.is_dir():
                    _kill_all(child)
                    with contextlib.suppress(OSError):
                        child.rmdir()
            try:
                folder.rmdir()
            except OSError:
                removed = False
        return removed


def _write(path: Path, value: object) -> None:
    try:
        path.write_text(str(value))
    except OSError as exc:  # e.g. memsw without swap accounting: the limit still holds
        logger.debug("cannot write %s to %s: %s", value, path, exc)


def _kill_all(folder: Path) -> None:
    try:
        pids = (folder / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)

"""How many CPUs this process may use: its container's CPU quota, else its affinity.

``os.cpu_count()`` is the node's core count: a pod limited to 2 CPUs on a 96-core Xeon would
start 96 intra-op threads per instance and spend its quota being throttled. A Kubernetes
``limits.cpu`` reaches the container as a CFS quota (cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``); a ``cpuset`` (static CPU manager) as the
affinity. The answer is the smaller of the two, the quota rounded down (as Go's automaxprocs
does: a thread that cannot run is worse than a core left idle), and at least 1. Every
ancestor cgroup visible in the container is read too, since a parent's quota caps its
children. Cgroups are found through ``/proc/self/cgroup`` and ``mountinfo``, so a
container with or without its own cgroup namespace, and a process in a nested cgroup (the
sandbox's pods), read the quota that applies to them. Pure reads, no framework.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC_SELF = Path("/proc/self")

#: Reads one cgroup folder's quota in CPUs (None: no limit there).
_Reader = Callable[[Path], "float | None"]


@dataclass(frozen=True)
class _Mount:
    root: str  # the cgroup path mounted there ("/" unless the mount is a sub-tree)
    point: Path
    version: int


def available(proc: Path = PROC_SELF) -> int:
    """CPUs this process may keep busy: min(quota, affinity), at least 1."""
    affinity = _affinity()
    quota = quota_cpus(proc)
    if quota is None:
        return affinity
    return max(1, min(affinity, math.floor(quota)))


def quota_cpus(proc: Path = PROC_SELF) -> float | None:
    """The tightest CFS quota over this process's cgroup and its ancestors, in CPUs, or
    None when there is none (no limit, or no cgroup file system to read)."""
    try:
        memberships = _memberships((proc / "cgroup").read_text())
        mounts = _mounts((proc / "mountinfo").read_text())
    except OSError:
        return None
    # v1 when a hierarchy carries the cpu controller; v2 otherwise (hybrid hosts mount an
    # empty unified hierarchy next to the v1 ones).
    v1 = [m for m in mounts if m.version == 1]
    if v1 and "cpu" in memberships:
        return _tightest(v1[0], memberships["cpu"], _v1_quota)
    v2 = [m for m in mounts if m.version == 2]
    if v2 and "" in memberships:
        return _tightest(v2[0], memberships[""], _v2_quota)
    return None


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _memberships(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> controller ("" for v2) -> cgroup path."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            found[""] = path
        for controller in controllers.split(","):
            if controller:
                found.setdefault(controller, path)
    return found


def _mounts(text: str) -> list[_Mount]:
    """The cgroup mounts of ``mountinfo``: the v1 ones that carry cpu, and v2."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 3:
            continue
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        root, point = fields[3], Path(fields[4])
        if fstype == "cgroup" and "cpu" in options:
            found.append(_Mount(root, point, 1))
        elif fstype == "cgroup2":
            found.append(_Mount(root, point, 2))
    return found


def _tightest(mount: _Mount, path: str, read: _Reader) -> float | None:
    """The smallest quota from the process's cgroup up to the top of the mount."""
    folder = mount.point.joinpath(*_relative(path, mount.root))
    tightest: float | None = None
    while True:
        quota = read(folder)
        if quota is not None:
            tightest = quota if tightest is None else min(tightest, quota)
        if folder == mount.point:
            return tightest
        folder = folder.parent


def _relative(path: str, root: str) -> list[str]:
    """The parts of ``path`` under the mount's ``root``; a container without its own cgroup
    namespace sees its host path while the mount holds only its sub-tree."""
    parts = [p for p in path.split("/") if p]
    root_parts = [p for p in root.split("/") if p]
    if parts[: len(root_parts)] == root_parts:
        return parts[len(root_parts) :]
    return []  # the mount is this container's own sub-tree: read from its top


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period or "100000")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None

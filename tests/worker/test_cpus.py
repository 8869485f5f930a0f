"""The CPUs a worker uses: its container's CPU quota, not the node's cores.

Cgroup trees are laid out in temporary folders with the kernel's file names and read
through a ``/proc/self`` of the test's making; where this machine lets root write cgroup v1
(as the sandbox's kubelet does for ``limits.cpu``), a real child process in a cgroup with a
quota reads it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from polyserve_worker import config as model_config
from polyserve_worker import cpus
from polyserve_worker.backends import configs

CORES = len(os.sched_getaffinity(0))


def _proc(tmp_path: Path, cgroup: str, mounts: list[str]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("".join(f"{i} 1 0:{i} {m}\n" for i, m in enumerate(mounts)))
    return proc


def _v1(tmp_path: Path, path: str, quotas: dict[str, int]) -> Path:
    """A v1 cpu hierarchy at tmp/cpu with ``path`` as this process's cgroup; ``quotas`` maps
    folders (relative to the hierarchy) to a quota in microseconds per 100 ms."""
    root = tmp_path / "cpu"
    for folder in ("", *quotas):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for folder in {str(Path(path).relative_to("/")), ""}:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.cfs_quota_us").write_text("-1\n")
        (root / folder / "cpu.cfs_period_us").write_text("100000\n")
    for folder, quota in quotas.items():
        (root / folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (root / folder / "cpu.cfs_period_us").write_text("100000\n")
    return _proc(
        tmp_path,
        f"4:memory:{path}\n2:cpu,cpuacct:{path}\n0::/\n",
        [f"/ {root} rw,relatime - cgroup cgroup rw,cpu,cpuacct"],
    )


def test_a_v1_quota_of_one_and_a_half_cpus_gives_one(tmp_path: Path) -> None:
    proc = _v1(tmp_path, "/pods/a/worker", {"pods/a/worker": 150_000})
    assert cpus.quota_cpus(proc) == 1.5
    assert cpus.available(proc) == 1


def test_the_tightest_quota_of_the_cgroup_and_its_ancestors_applies(tmp_path: Path) -> None:
    proc = _v1(tmp_path, "/pods/a/worker", {"pods": 100_000, "pods/a/worker": 400_000})
    assert cpus.quota_cpus(proc) == 1.0


def test_no_quota_means_the_affinity(tmp_path: Path) -> None:
    proc = _v1(tmp_path, "/pods/a/worker", {})
    assert cpus.quota_cpus(proc) is None
    assert cpus.available(proc) == CORES


def test_a_quota_above_the_affinity_is_capped_by_it(tmp_path: Path) -> None:
    proc = _v1(tmp_path, "/", {"": (CORES + 8) * 100_000})
    assert cpus.available(proc) == CORES


def test_a_container_without_its_own_cgroup_namespace_reads_the_mounted_subtree(
    tmp_path: Path,
) -> None:
    # /proc/self/cgroup names the host path; the mount holds only the container's sub-tree.
    root = tmp_path / "cpu"
    root.mkdir()
    (root / "cpu.cfs_quota_us").write_text("200000")
    (root / "cpu.cfs_period_us").write_text("100000")
    proc = _proc(
        tmp_path,
        "3:cpu:/kubepods/burstable/pod1/abc\n",
        [f"/kubepods/burstable/pod1/abc {root} rw - cgroup cgroup rw,cpu"],
    )
    assert cpus.quota_cpus(proc) == 2.0


@pytest.mark.parametrize(("cpu_max", "expected"), [("250000 100000", 2.5), ("max 100000", None)])
def test_cgroup_v2_cpu_max_is_read(tmp_path: Path, cpu_max: str, expected: float | None) -> None:
    root = tmp_path / "unified"
    (root / "pod" / "worker").mkdir(parents=True)
    (root / "pod" / "worker" / "cpu.max").write_text(cpu_max + "\n")
    proc = _proc(tmp_path, "0::/pod/worker\n", [f"/ {root} rw - cgroup2 cgroup2 rw"])
    assert cpus.quota_cpus(proc) == expected


def test_without_a_cgroup_file_system_there_is_no_quota(tmp_path: Path) -> None:
    assert cpus.quota_cpus(tmp_path / "nowhere") is None


def test_the_default_thread_split_divides_the_cpus_by_the_instances() -> None:
    config = model_config.parse_yaml("instance_group: [{kind: KIND_CPU, count: 2}]\n")
    assert configs.default_threads(config) == max(1, cpus.available() // 2)


def _own_v1_cpu_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            for name in ("cpu", "cpu,cpuacct"):
                base = Path("/sys/fs/cgroup") / name
                if base.is_dir():
                    return base / path.lstrip("/")
    return None


@pytest.fixture()
def quota_cgroup() -> Iterator[Path]:
    """A real v1 cpu cgroup with a quota of one CPU, removed after."""
    own = _own_v1_cpu_cgroup()
    if os.geteuid() != 0 or own is None:
        pytest.skip("needs root and a cgroup v1 cpu hierarchy (the sandbox kubelet's setup)")
    folder = own / f"polyserve-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError as exc:
        pytest.skip(f"cgroups are not writable here: {exc}")
    try:
        (folder / "cpu.cfs_period_us").write_text("100000")
        (folder / "cpu.cfs_quota_us").write_text("100000")
        yield folder
    finally:
        folder.rmdir()


@pytest.mark.skipif(CORES < 2, reason="needs 2 or more CPUs to tell a quota of 1 from them")
def test_a_process_in_a_cgroup_limited_to_one_cpu_splits_one_cpu_not_the_cores(
    quota_cgroup: Path,
) -> None:
    program = (
        "import os, sys\n"
        f"open({str(quota_cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
        "from polyserve_worker import config, cpus\n"
        "from polyserve_worker.backends import configs\n"
        "one = config.parse_yaml('instance_group: [{kind: KIND_CPU, count: 1}]')\n"
        "print(cpus.available(), configs.default_threads(one), len(os.sched_getaffinity(0)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["1", "1", str(CORES)]

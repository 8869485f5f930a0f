"""What a runtime enforces, the sandbox enforces when it runs as root: read-only mounts,
read-only root file systems, users and groups, mount points runc refuses, and limits."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from polyserve_sandbox.kubelet import images
from polyserve_sandbox.kubelet.cgroups import Cgroups
from polyserve_sandbox.kubelet.layout import PodLayout
from tests.sandbox.kubelet_harness import IMAGES, Resolver, container, log, pod, running, state

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="isolation needs root")

# Tries to write a file in each folder given; prints {folder: "ok" | error}.
WRITE = """
import json, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
results = {}
for folder in sys.argv[1:]:
    try:
        with open(os.path.join(folder, 'probe-file'), 'w') as f:
            f.write('x')
        results[folder] = 'ok'
    except OSError as exc:
        results[folder] = exc.strerror
print(json.dumps(results), flush=True)
import time; time.sleep(600)
"""
SHELL = "local/shell:1"
SHELL_IMAGES = IMAGES.with_image(SHELL, images.Image(path=("/usr/bin", "/bin")))


def results(output: bytes) -> dict[str, str]:
    return json.loads(output) if output.strip() else {}


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A folder every user can traverse (pytest's tmp_path is not: its parent is 0700)."""
    folder = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="kubelet-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@as_root
async def test_read_only_mounts_and_a_read_only_root_refuse_writes(
    tmp_path: Path, open_root: Path
) -> None:
    # Outside /tmp: a path under /tmp would be the container's own /tmp.
    outside = open_root
    spec = pod(
        [
            container(
                "writer",
                WRITE,
                args=["/ro", "/rw", str(outside), "/tmp", "/dev/shm-like"],
                securityContext={"readOnlyRootFilesystem": True},
                volumeMounts=[
                    {"name": "a", "mountPath": "/ro", "readOnly": True},
                    {"name": "b", "mountPath": "/rw"},
                    {"name": "c", "mountPath": "/dev/shm-like"},
                ],
            )
        ],
        volumes=[
            {"name": "a", "emptyDir": {}},
            {"name": "b", "emptyDir": {}},
            {"name": "c", "emptyDir": {"medium": "Memory"}},
        ],
    )
    async with running(spec, tmp_path / "pods") as pod_:
        await pod_.recorder.until(lambda: bool(results(log(pod_, "writer"))))
        seen = results(log(pod_, "writer"))
        volumes = PodLayout(tmp_path / "pods", spec).volumes
        assert seen[str(volumes / "a")] == "Read-only file system"
        assert seen[str(volumes / "b")] == "ok"
        assert seen[str(outside)] == "Read-only file system"  # the host, outside any volume
        # /tmp without a volume is the container's own layer: read-only here too.
        assert "Read-only file system" in seen.values()
        assert list(seen.values()).count("ok") == 2
        assert not (outside / "probe-file").exists()


async def test_without_root_isolation_paths_are_still_translated(tmp_path: Path) -> None:
    spec = pod(
        [
            container(
                "writer",
                WRITE,
                args=["/ro"],
                volumeMounts=[{"name": "a", "mountPath": "/ro", "readOnly": True}],
            )
        ],
        volumes=[{"name": "a", "emptyDir": {}}],
    )
    async with running(spec, tmp_path, as_root=False) as pod_:
        await pod_.recorder.until(lambda: bool(results(log(pod_, "writer"))))
        folder = str(PodLayout(tmp_path, spec).volumes / "a")
        # Not enforced without a mount namespace (said once in the log).
        assert results(log(pod_, "writer")) == {folder: "ok"}


async def test_a_mount_point_inside_a_read_only_mount_is_create_container_error(
    tmp_path: Path,
) -> None:
    # The layout the operator once rendered: each config.pbtxt mounted inside /models,
    # which the worker mounts read-only. runc cannot create the mount point there.
    spec = pod(
        [
            container(
                "worker",
                WRITE,
                volumeMounts=[
                    {"name": "models", "mountPath": "/models", "readOnly": True},
                    {
                        "name": "config",
                        "mountPath": "/models/m/config.pbtxt",
                        "subPath": "m.pbtxt",
                        "readOnly": True,
                    },
                ],
            )
        ],
        volumes=[
            {"name": "models", "emptyDir": {}},
            {"name": "config", "configMap": {"name": "c"}},
        ],
    )
    resolver = Resolver()
    resolver.config_maps["c"] = {"data": {"m.pbtxt": 'name: "m"'}}
    async with running(spec, tmp_path, resolver=resolver) as pod_:
        status = await pod_.recorder.until_status(
            lambda s: (
                state(s, "worker")["state"].get("waiting", {}).get("reason")
                == "CreateContainerError"
            )
        )
        message = state(status, "worker")["state"]["waiting"]["message"]
        assert 'to rootfs at "/models/m/config.pbtxt"' in message
        assert message.endswith("read-only file system: unknown")
        assert ("Warning", "Failed", f"Error: {message}") in pod_.recorder.events
        assert status["phase"] == "Pending"


@as_root
async def test_a_nested_mount_in_a_writable_volume_is_where_the_container_looks(
    tmp_path: Path,
) -> None:
    resolver = Resolver()
    resolver.config_maps["c"] = {"data": {"m.pbtxt": 'name: "m"'}}
    show = (
        "import os, sys, time; d = sys.argv[1]; "
        "print(sorted(os.listdir(d)), open(os.path.join(d, 'config.pbtxt')).read(), flush=True); "
        "time.sleep(600)"
    )
    spec = pod(
        [
            container(
                "worker",
                show,
                args=["/models/m"],
                volumeMounts=[
                    {"name": "models", "mountPath": "/models"},
                    {"name": "config", "mountPath": "/models/m/config.pbtxt", "subPath": "m.pbtxt"},
                ],
            )
        ],
        volumes=[
            {"name": "models", "emptyDir": {}},
            {"name": "config", "configMap": {"name": "c"}},
        ],
    )
    async with running(spec, tmp_path, resolver=resolver) as pod_:
        await pod_.recorder.until(lambda: bool(log(pod_, "worker")))
        # The program walks the models folder and finds the file bound there.
        assert log(pod_, "worker") == b"['config.pbtxt'] name: \"m\"\n"


@as_root
async def test_run_as_user_and_groups_apply_when_the_user_can_run_the_image(
    open_root: Path,
) -> None:
    script = 'id -u; id -g; id -G; touch "$1/made"; stat -c %g "$1/made"; exec sleep 600'
    spec = pod(
        [
            {
                "name": "shell",
                "image": SHELL,
                "command": ["sh", "-c", script, "sh", "/data"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
        securityContext={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000},
    )
    async with running(spec, open_root, image_map=SHELL_IMAGES) as pod_:
        await pod_.recorder.until(lambda: len(log(pod_, "shell").splitlines()) >= 4)
        uid, gid, groups, file_group = log(pod_, "shell").decode().splitlines()[:4]
        assert (uid, gid) == ("1000", "3000")
        assert "2000" in groups.split()
        assert file_group == "2000"  # the emptyDir is set-group-id to the fsGroup
        assert "RunAsUserIgnored" not in pod_.recorder.reasons()


@as_root
async def test_a_user_that_cannot_run_the_image_falls_back_to_the_sandbox_user_with_a_warning(
    tmp_path: Path,
) -> None:
    code = "import os, time; print(os.getuid(), flush=True); time.sleep(600)"
    spec = pod([container("main", code)], securityContext={"runAsUser": 1000})
    async with running(spec, tmp_path) as pod_:
        await pod_.recorder.until(lambda: bool(log(pod_, "main")))
        assert log(pod_, "main") == f"{os.geteuid()}\n".encode()
        warning = next(m for k, r, m in pod_.recorder.events if r == "RunAsUserIgnored")
        assert warning.startswith("runAsUser 1000 cannot execute ")
        assert "drop runAsUser" in warning


CGROUPS = Cgroups.detect()
needs_cgroups = pytest.mark.skipif(CGROUPS is None, reason="cgroups are not writable here")


@needs_cgroups
async def test_a_container_past_its_memory_limit_is_oom_killed(tmp_path: Path) -> None:
    hog = "import time; blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))"
    spec = pod(
        [container("hog", hog, resources={"limits": {"memory": "64Mi", "cpu": "500m"}})],
        restart="Never",
    )
    async with running(spec, tmp_path, cgroups=CGROUPS) as pod_:
        status = await pod_.recorder.until_status(lambda s: s["phase"] == "Failed")
        terminated = state(status, "hog")["state"]["terminated"]
        assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


@needs_cgroups
async def test_a_cpu_limit_becomes_a_cfs_quota(tmp_path: Path) -> None:
    assert CGROUPS is not None
    code = "import time; print(open('/proc/self/cgroup').read(), flush=True); time.sleep(600)"
    spec = pod([container("main", code, resources={"limits": {"cpu": "250m"}})])
    async with running(spec, tmp_path, cgroups=CGROUPS) as pod_:
        await pod_.recorder.until(lambda: bool(log(pod_, "main")))
        layout = PodLayout(tmp_path, spec)
        if CGROUPS.version == 1:
            quota = CGROUPS.bases["cpu"] / layout.key / "main" / "cpu.cfs_quota_us"
            assert quota.read_text().strip() == "25000"
        else:
            limit = CGROUPS.bases["unified"] / layout.key / "main" / "cpu.max"
            assert limit.read_text().split() == ["25000", "100000"]
        assert layout.key in log(pod_, "main").decode()
    assert not any((base / layout.key).exists() for base in CGROUPS.bases.values())

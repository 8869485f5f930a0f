"""Volumes as folders, the environment a container gets, and container paths translated."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from polyserve_sandbox.kubelet.layout import SHM_ROOT, PodLayout
from tests.sandbox.kubelet_harness import BIN, Resolver, container, log, pod, running, state

# Prints what the process sees: its arguments, environment, folder, and the files named.
SHOW = """
import json, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
files = {}
for arg in sys.argv[1:]:
    if os.path.isfile(arg):
        files[arg] = open(arg).read()
    elif os.path.isdir(arg):
        files[arg] = sorted(n for n in os.listdir(arg) if not n.startswith('..'))
print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ), 'cwd': os.getcwd(),
                  'files': files}))
import time; time.sleep(600)
"""


def shown(output: bytes) -> dict[str, object]:
    return json.loads(output) if output.strip() else {}


def config_map(**data: str) -> dict[str, object]:
    return {"kind": "ConfigMap", "data": data}


async def test_a_container_gets_its_declared_environment_and_translated_paths_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_OWN_VARIABLE", "must not leak")
    resolver = Resolver()
    resolver.config_maps["settings"] = config_map(level="debug", target="/models/m")
    resolver.secrets["creds"] = {"data": {"token": base64.b64encode(b"s3cret").decode()}}
    claim = tmp_path / "claim"
    (claim / "artifacts").mkdir(parents=True)
    resolver.claims["store"] = claim
    spec = pod(
        [
            container(
                "show",
                SHOW,
                args=[
                    "--repository=/models",
                    "/mnt/pvc",
                    "/mnt/pvc/store",
                    "$(GREETING)",
                    "$$(GREETING)",
                    "file:///models/x",
                ],
                workingDir="/models",
                env=[
                    {"name": "GREETING", "value": "hello"},
                    {"name": "COMBINED", "value": "$(GREETING)-world"},
                    {"name": "SEARCH", "value": "/models:/usr/lib"},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {
                        "name": "TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                    },
                ],
                envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
                volumeMounts=[
                    {"name": "models", "mountPath": "/models"},
                    {"name": "store", "mountPath": "/mnt/pvc/store", "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            )
        ],
        volumes=[
            {"name": "models", "emptyDir": {}},
            {"name": "store", "persistentVolumeClaim": {"claimName": "store"}},
            {"name": "tmp", "emptyDir": {}},
        ],
        nodeName="node-a",
    )
    async with running(spec, tmp_path / "pods", resolver=resolver) as pod_:
        await pod_.recorder.until(lambda: bool(shown(log(pod_, "show"))))
        seen = shown(log(pod_, "show"))
        volumes = PodLayout(tmp_path / "pods", spec).volumes
        scratch = PodLayout(tmp_path / "pods", spec).container("show")
        assert seen["argv"] == [
            f"--repository={volumes}/models",
            f"{scratch}/root/mnt/pvc",
            str(claim),
            "hello",
            "$(GREETING)",
            "file:///models/x",
        ]
        assert seen["files"] == {f"{scratch}/root/mnt/pvc": ["store"], str(claim): ["artifacts"]}
        assert seen["cwd"] == f"{volumes}/models"
        env = seen["env"]
        assert isinstance(env, dict)
        env.pop("LC_CTYPE", None)  # set by Python itself under a C locale
        assert env == {
            "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": "p",
            "HOME": f"{scratch}/home",
            "TMPDIR": f"{volumes}/tmp",
            "IMAGE_VAR": "from-image",
            "PYTHONUNBUFFERED": "1",
            "CM_level": "debug",
            "CM_target": f"{volumes}/models/m",
            "GREETING": "hello",
            "COMBINED": "hello-world",
            "SEARCH": f"{volumes}/models:/usr/lib",
            "NODE": "node-a",
            "TOKEN": "s3cret",
        }


async def test_config_map_and_secret_volumes_are_written_with_items_and_modes(
    tmp_path: Path,
) -> None:
    resolver = Resolver()
    resolver.config_maps["cfg"] = config_map(**{"a.pbtxt": "A", "b.pbtxt": "B"})
    resolver.secrets["creds"] = {"data": {"key": base64.b64encode(b"k").decode()}}
    spec = pod(
        [
            container(
                "show",
                SHOW,
                args=["/cfg", "/cfg/nested/b.txt", "/creds/key", "/labels", "/one.pbtxt"],
                volumeMounts=[
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "creds", "mountPath": "/creds"},
                    {"name": "info", "mountPath": "/labels", "subPath": "labels"},
                    {"name": "whole", "mountPath": "/one.pbtxt", "subPath": "a.pbtxt"},
                ],
            )
        ],
        volumes=[
            {
                "name": "cfg",
                "configMap": {
                    "name": "cfg",
                    "items": [{"key": "b.pbtxt", "path": "nested/b.txt", "mode": 0o600}],
                },
            },
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {
                "name": "info",
                "downwardAPI": {
                    "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                },
            },
            {"name": "whole", "configMap": {"name": "cfg"}},
        ],
    )
    spec["metadata"]["labels"] = {"app": "demo"}
    async with running(spec, tmp_path, resolver=resolver) as pod_:
        await pod_.recorder.until(lambda: bool(shown(log(pod_, "show"))))
        seen = shown(log(pod_, "show"))
        found = seen["files"]
        assert isinstance(found, dict)
        files = dict(zip(["cfg", "b", "key", "labels", "one"], found.values(), strict=True))
        assert files == {
            "cfg": ["nested"],
            "b": "B",
            "key": "k",
            "labels": 'app="demo"',
            "one": "A",
        }
        volumes = PodLayout(tmp_path, spec).volumes
        assert os.stat(volumes / "cfg" / "nested" / "b.txt").st_mode & 0o777 == 0o600
        assert os.stat(volumes / "creds" / "key").st_mode & 0o777 == 0o400
        # A changed ConfigMap reaches the volume when the runtime is poked.
        resolver.config_maps["cfg"] = config_map(**{"b.pbtxt": "B2"})
        pod_.runtime.poke()
        assert (volumes / "cfg" / "nested" / "b.txt").read_text() == "B2"


async def test_a_missing_config_map_keeps_the_pod_creating_until_it_exists(
    tmp_path: Path,
) -> None:
    resolver = Resolver()
    spec = pod(
        [
            container(
                "show", SHOW, args=["/cfg"], volumeMounts=[{"name": "cfg", "mountPath": "/cfg"}]
            )
        ],
        volumes=[
            {"name": "cfg", "configMap": {"name": "late"}},
            {"name": "maybe", "configMap": {"name": "absent", "optional": True}},
            {"name": "claimed", "persistentVolumeClaim": {"claimName": "data"}},
        ],
    )
    async with running(spec, tmp_path, resolver=resolver) as pod_:
        recorder = pod_.recorder
        await recorder.until(lambda: recorder.reasons().count("FailedMount") >= 4)
        assert (
            "Warning",
            "FailedMount",
            'MountVolume.SetUp failed for volume "cfg" : configmap "late" not found',
        ) in recorder.events
        missing_claim = 'persistentvolumeclaim "data" not found'
        assert (
            "Warning",
            "FailedMount",
            f'MountVolume.SetUp failed for volume "claimed" : {missing_claim}',
        ) in recorder.events
        status = recorder.status
        assert status["phase"] == "Pending"
        assert state(status, "show")["state"] == {"waiting": {"reason": "ContainerCreating"}}
        ready_to_start = next(
            c for c in status["conditions"] if c["type"] == "PodReadyToStartContainers"
        )
        assert ready_to_start["status"] == "False"
        resolver.config_maps["late"] = config_map(x="1")
        resolver.claims["data"] = tmp_path
        pod_.runtime.poke()
        status = await recorder.until_status(lambda s: s["phase"] == "Running")
        await recorder.until(lambda: bool(shown(log(pod_, "show"))))
        assert shown(log(pod_, "show"))["files"] == {
            str(PodLayout(tmp_path, spec).volumes / "cfg"): ["x"]
        }


async def test_a_memory_empty_dir_lives_in_dev_shm_and_goes_with_the_pod(tmp_path: Path) -> None:
    spec = pod(
        [
            container(
                "show",
                SHOW,
                args=["/dev/shm"],
                volumeMounts=[{"name": "shm", "mountPath": "/dev/shm"}],
            )
        ],
        volumes=[{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
    )
    layout = PodLayout(tmp_path, spec)
    async with running(spec, tmp_path) as pod_:
        await pod_.recorder.until(lambda: bool(shown(log(pod_, "show"))))
        assert shown(log(pod_, "show"))["argv"] == [str(SHM_ROOT / layout.key / "shm")]
        assert (SHM_ROOT / layout.key / "shm").is_dir()
        await pod_.runtime.terminate(0)
        assert not (SHM_ROOT / layout.key).exists()
        assert not layout.volumes.exists() and not layout.containers.exists()
        assert pod_.runtime.logs("show")  # the logs stay until the pod object goes


# Lists what is under the claim through the folder above its mount point, as a program that
# is given that folder (`POLYSERVE_FETCH_PVC_ROOT=/mnt/pvc`) and joins the rest itself does.
THROUGH_ROOT = """
import json, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
root = sys.argv[1]
print(json.dumps({'root': root, 'seen': sorted(os.listdir(os.path.join(root, 'store')))}))
import time; time.sleep(600)
"""


async def test_a_folder_above_a_mount_point_leads_into_the_claim_from_a_relative_fleet_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default fleet folder is relative (.polyserve-sandbox): every path a container is
    # given must still resolve from the container's own working directory.
    monkeypatch.chdir(tmp_path)
    resolver = Resolver()
    claim = tmp_path / "claim"
    (claim / "ranker").mkdir(parents=True)
    resolver.claims["store"] = claim
    spec = pod(
        [
            container(
                "show",
                THROUGH_ROOT,
                args=["/mnt/pvc"],
                workingDir="/models",
                volumeMounts=[
                    {"name": "models", "mountPath": "/models"},
                    {"name": "store", "mountPath": "/mnt/pvc/store", "readOnly": True},
                ],
            )
        ],
        volumes=[
            {"name": "models", "emptyDir": {}},
            {"name": "store", "persistentVolumeClaim": {"claimName": "store"}},
        ],
    )
    async with running(spec, Path("pods"), resolver=resolver) as pod_:
        await pod_.recorder.until(lambda: bool(shown(log(pod_, "show"))))
        seen = shown(log(pod_, "show"))
        assert seen["seen"] == ["ranker"]
        assert Path(str(seen["root"])).is_absolute()

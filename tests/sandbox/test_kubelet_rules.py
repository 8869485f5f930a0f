"""The kubelet's rules as pure functions: expansion, path translation, back-off, phases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from polyserve_sandbox.kubelet import environment, mounts, processes, statuses
from polyserve_sandbox.kubelet.backoff import Backoff, Tracker
from polyserve_sandbox.kubelet.images import Image, ImageMap, ImageNotFound
from polyserve_sandbox.kubelet.volumes import Volume

Obj = dict[str, Any]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x-$(A)-$(B)", "x-1-two"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("a$b", "a$b"),
        ("end$", "end$"),
        ("$(A", "$(A"),
        ("$(A $(B)", "$(A $(B)"),
        ("$(B) $(A", "two $(A"),
        ("$()", "$()"),
    ],
)
def test_variables_expand_by_the_kubernetes_rules(text: str, expected: str) -> None:
    assert environment.expand(text, {"A": "1", "B": "two"}.get) == expected


def test_an_env_entry_sees_only_the_variables_defined_before_it() -> None:
    spec = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {}}
    container = {
        "name": "c",
        "env": [
            {"name": "LATER_FIRST", "value": "$(SECOND)"},
            {"name": "SECOND", "value": "two"},
            {"name": "BOTH", "value": "$(SECOND)+$(LATER_FIRST)"},
            {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
    }

    class Nothing:
        def config_map(self, namespace: str, name: str) -> None:
            return None

        def secret(self, namespace: str, name: str) -> None:
            return None

        def claim(self, namespace: str, claim: str) -> None:
            return None

        def services(self, namespace: str) -> list[dict[str, object]]:
            return []

    env = environment.container_env(
        spec, container, pod_ip="127.1.0.2", host_ip="127.0.0.1", resolver=Nothing()
    )
    assert env == {
        "LATER_FIRST": "$(SECOND)",
        "SECOND": "two",
        "BOTH": "two+$(SECOND)",
        "ME": "p",
        "IP": "127.1.0.2",
    }
    missing = {"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}}]}
    with pytest.raises(environment.ConfigError, match='configmap "cm" not found'):
        environment.container_env(
            spec, missing, pod_ip="127.1.0.2", host_ip="127.0.0.1", resolver=Nothing()
        )


def _fs(tmp_path: Path, mounts_: list[Obj], **volumes: Volume) -> mounts.ContainerFs:
    container = {"name": "c", "volumeMounts": mounts_}
    return mounts.ContainerFs(container, volumes, tmp_path / "c", {}, read_only_root=False)


class _Services:
    """A resolver that holds Services only."""

    def __init__(self, *services: Obj) -> None:
        self._services = list(services)

    def config_map(self, namespace: str, name: str) -> None:
        return None

    def secret(self, namespace: str, name: str) -> None:
        return None

    def claim(self, namespace: str, claim: str) -> None:
        return None

    def services(self, namespace: str) -> list[Obj]:
        return [s for s in self._services if s["metadata"]["namespace"] == namespace]


def _service(name: str, namespace: str, ip: str | None, *ports: Obj) -> Obj:
    spec: Obj = {"ports": list(ports)}
    if ip is not None:
        spec["clusterIP"] = ip
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_a_container_gets_the_service_links_the_kubelet_writes_env_wins_over_them() -> None:
    resolver = _Services(
        _service(
            "mlp-model",
            "ns",
            "127.9.128.4",
            {"name": "http", "port": 8000, "protocol": "TCP"},
            {"name": "grpc", "port": 8001, "protocol": "TCP"},
        ),
        _service("headless", "ns", "None", {"name": "http", "port": 80}),
        _service("elsewhere", "other", "127.9.128.5", {"name": "http", "port": 80}),
    )
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {}}
    container = {
        "name": "c",
        "env": [
            {"name": "URL", "value": "http://$(MLP_MODEL_SERVICE_HOST):$(MLP_MODEL_SERVICE_PORT)"},
            {"name": "MLP_MODEL_SERVICE_PORT_GRPC", "value": "9"},
        ],
    }
    env = environment.container_env(
        pod, container, pod_ip="127.1.0.2", host_ip="127.0.0.1", resolver=resolver
    )
    assert env["MLP_MODEL_SERVICE_HOST"] == "127.9.128.4"
    assert env["MLP_MODEL_SERVICE_PORT"] == "8000"
    assert env["MLP_MODEL_SERVICE_PORT_HTTP"] == "8000"
    assert env["MLP_MODEL_SERVICE_PORT_GRPC"] == "9"  # the container's own env wins
    assert env["MLP_MODEL_PORT"] == "tcp://127.9.128.4:8000"
    assert env["MLP_MODEL_PORT_8001_TCP"] == "tcp://127.9.128.4:8001"
    assert env["MLP_MODEL_PORT_8001_TCP_ADDR"] == "127.9.128.4"
    assert env["MLP_MODEL_PORT_8001_TCP_PORT"] == "8001"
    assert env["MLP_MODEL_PORT_8001_TCP_PROTO"] == "tcp"
    assert env["URL"] == "http://127.9.128.4:8000"  # expansion sees them
    assert not [k for k in env if k.startswith(("HEADLESS_", "ELSEWHERE_"))]
    pod["spec"]["enableServiceLinks"] = False
    env = environment.container_env(
        pod, {"name": "c"}, pod_ip="127.1.0.2", host_ip="127.0.0.1", resolver=resolver
    )
    assert env == {}


def test_container_paths_translate_to_the_longest_mount_and_above_mount_points(
    tmp_path: Path,
) -> None:
    models = Volume("models", tmp_path / "models", False, False)
    config = Volume("config", tmp_path / "config", True, True)
    claim = Volume("claim", tmp_path / "claim", True, False)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "m.pbtxt").write_text("x")
    fs = _fs(
        tmp_path,
        [
            {"name": "models", "mountPath": "/models"},
            {"name": "config", "mountPath": "/models/m/config.pbtxt", "subPath": "m.pbtxt"},
            {"name": "claim", "mountPath": "/mnt/pvc/claim", "readOnly": True},
        ],
        models=models,
        config=config,
        claim=claim,
    )
    view = tmp_path / "c" / "root"
    assert fs.translate("/models") == f"{tmp_path}/models"
    assert fs.translate("/models/m/1/model.onnx") == f"{tmp_path}/models/m/1/model.onnx"
    assert fs.translate("/models/m/config.pbtxt") == f"{tmp_path}/config/m.pbtxt"
    assert fs.translate("/mnt/pvc") == f"{view}/mnt/pvc"
    assert fs.translate("/mnt/pvc/claim/x") == f"{tmp_path}/claim/x"
    assert fs.translate("/usr/bin/env") == "/usr/bin/env"
    assert fs.translate("/tmp/x") == f"{tmp_path}/c/tmp/x"
    assert fs.translate("/dev/termination-log") == f"{tmp_path}/c/termination-log"
    assert fs.token("--model-repository=/models") == f"--model-repository={tmp_path}/models"
    assert fs.token("file:///models/x") == "file:///models/x"
    assert fs.token("a/b=/models") == "a/b=/models"
    assert fs.env_value("/models:/usr/lib") == f"{tmp_path}/models:/usr/lib"


def test_a_mount_point_inside_a_read_only_mount_is_refused_as_runc_refuses_it(
    tmp_path: Path,
) -> None:
    models = Volume("models", tmp_path / "models", False, False)
    config = Volume("config", tmp_path / "config", True, True)
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "m.pbtxt").write_text("x")
    nested = {"name": "config", "mountPath": "/models/m/config.pbtxt", "subPath": "m.pbtxt"}
    refused = _fs(
        tmp_path,
        [{"name": "models", "mountPath": "/models", "readOnly": True}, nested],
        models=models,
        config=config,
    )
    with pytest.raises(mounts.CreateError, match="read-only file system: unknown"):
        refused.prepare(as_root=True)
    # A writable parent gets the mount point made in it, as runc makes it.
    allowed = _fs(
        tmp_path, [{"name": "models", "mountPath": "/models"}, nested], models=models, config=config
    )
    binds = allowed.prepare(as_root=True)
    assert (tmp_path / "models" / "m" / "config.pbtxt").is_file()
    assert (
        processes.Bind(
            str(tmp_path / "config" / "m.pbtxt"), str(tmp_path / "models/m/config.pbtxt"), True
        )
        in binds
    )
    # A mount point that already exists needs no creation, even in a read-only mount.
    assert refused.prepare(as_root=True)


def test_the_back_off_starts_at_once_then_doubles_to_the_cap_and_resets_after_a_long_run() -> None:
    tracker = Tracker(Backoff(initial=10, cap=40))
    assert tracker.remaining(event=100, now=100) == 0  # the first exit restarts at once
    tracker.next(event=100, now=100)
    assert tracker.remaining(event=101, now=101) == 10
    assert tracker.remaining(event=101, now=108) == 3
    windows = []
    for exit_at in (111, 130, 180, 310):
        tracker.next(event=exit_at, now=exit_at + tracker.remaining(exit_at, exit_at))
        windows.append(tracker.window)
    assert windows == [20, 40, 40, 10]  # ran > 2 x cap before the last exit: reset
    assert tracker.describe() == "10s"


def test_images_resolve_by_pattern_and_build_the_command_as_a_runtime_does() -> None:
    image = Image(entrypoint=("serve",), cmd=("--default",), env={"HOST": "$(POD_IP)"})
    found = ImageMap({"registry.example/app:*": image})
    assert found.resolve("registry.example/app:1.2") is image
    with pytest.raises(ImageNotFound, match="image map"):
        found.resolve("registry.example/other:1")
    assert image.command_line(None, None) == ["serve", "--default"]
    assert image.command_line(None, ["--x"]) == ["serve", "--x"]
    assert image.command_line(["run"], None) == ["run"]
    assert image.command_line(["run"], ["--x"]) == ["run", "--x"]
    assert image.environment("127.1.2.3") == {"HOST": "127.1.2.3"}
    assert found.image_id("registry.example/app:1.2").startswith("registry.example/app@sha256:")


def _status(name: str, state: Obj, last: Obj | None = None) -> Obj:
    return {"name": name, "state": state, "lastState": last or {}, "ready": False}


def test_the_phase_follows_the_kubelet() -> None:
    ok: Obj = {"terminated": {"exitCode": 0}}
    failed: Obj = {"terminated": {"exitCode": 1}}
    running: Obj = {"running": {}}
    waiting: Obj = {"waiting": {"reason": "PodInitializing"}}
    spec = {"restartPolicy": "Always"}
    assert (
        statuses.phase(spec, [_status("i", running)], [_status("c", waiting)], terminal=False)
        == "Pending"
    )
    assert (
        statuses.phase(
            {"restartPolicy": "Never"},
            [_status("i", failed)],
            [_status("c", waiting)],
            terminal=False,
        )
        == "Failed"
    )
    assert (
        statuses.phase(spec, [_status("i", ok)], [_status("c", running)], terminal=False)
        == "Running"
    )
    assert statuses.phase(spec, [], [_status("c", waiting, failed)], terminal=False) == "Running"
    assert statuses.phase(spec, [], [_status("c", ok)], terminal=True) == "Succeeded"
    assert (
        statuses.phase({"restartPolicy": "OnFailure"}, [], [_status("c", ok)], terminal=False)
        == "Succeeded"
    )

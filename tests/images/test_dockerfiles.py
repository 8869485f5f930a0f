"""The Dockerfiles against what they package, without building (make images builds them):
the extras they install exist, the ports they expose are the processes' own defaults."""

from __future__ import annotations

import re
import tomllib

import pytest

from polyserve_operator import settings
from polyserve_worker.settings import WorkerSettings
from tests.images import building

DOCKERFILES = ("Dockerfile.operator", "Dockerfile.worker")


def text(name: str) -> str:
    return (building.ROOT / name).read_text()


def extras_of(dockerfile: str) -> set[str]:
    found = set()
    for group in re.findall(r"(?:extras=|/src\[)([a-z0-9,-]+)", text(dockerfile)):
        found |= set(group.split(","))
    return found


def test_every_extra_the_dockerfiles_install_is_declared_in_pyproject() -> None:
    project = tomllib.loads((building.ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["optional-dependencies"])
    for dockerfile in DOCKERFILES:
        extras = extras_of(dockerfile)
        assert extras, f"{dockerfile}: no extras found"
        assert extras <= declared, f"{dockerfile}: {extras - declared} not in pyproject.toml"


def test_the_cpu_worker_installs_every_cpu_framework_and_no_gpu_one() -> None:
    cpu = re.search(r"cpu\) extras=([a-z0-9,-]+)", text("Dockerfile.worker"))
    assert cpu is not None
    extras = set(cpu.group(1).split(","))
    assert {"onnx", "openvino", "torch", "tensorflow"} <= extras
    assert not extras & {"onnx-gpu", "tensorrt", "cuda", "tensorflow-gpu"}


def test_the_worker_image_exposes_the_workers_default_ports() -> None:
    defaults = WorkerSettings.model_fields
    ports = {defaults[f].default for f in ("http_port", "grpc_port", "metrics_port")}
    exposed = re.search(r"^EXPOSE (.+)$", text("Dockerfile.worker"), re.MULTILINE)
    assert exposed is not None
    assert {int(p) for p in exposed.group(1).split()} == ports


def test_the_operator_image_exposes_liveness_and_metrics_ports() -> None:
    exposed = re.search(r"^EXPOSE (.+)$", text("Dockerfile.operator"), re.MULTILINE)
    assert exposed is not None
    assert {int(p) for p in exposed.group(1).split()} == {8080, settings.Settings().metrics_port}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_final_stage_is_the_chosen_base_run_as_uid_1000(dockerfile: str) -> None:
    stages = re.split(r"^FROM ", text(dockerfile), flags=re.MULTILINE)[1:]
    assert len(stages) == 2, "a build stage and a final stage"
    assert all(stage.startswith("${BASE}") for stage in stages)
    final = stages[-1]
    assert "USER 1000:1000" in final
    assert "pip install" not in final and "apt-get" not in final

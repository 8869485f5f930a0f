"""Where a GPU instance group that names no GPUs puts its instances: on every GPU the
process sees, as Triton does (the placement only: a backend that records it, no GPU)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from polyserve_worker import errors, gpus, repository
from polyserve_worker.backends import base
from tests.worker.test_lifecycle import GatedInstance


class Placed:
    """A backend that records each instance's kind and device."""

    name = "placed"
    default_filename = "model.txt"

    def __init__(self) -> None:
        self.specs: list[base.InstanceSpec] = []

    def complete_config(self, config: Any, model_path: Path) -> None:
        pass

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        self.specs.append(instance)
        return GatedInstance(threading.Event())


def _place(tmp_path: Path, groups: str, max_instances: int = 64) -> list[tuple[str, int]]:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.txt").write_text("fake")
    (tmp_path / "m" / "config.pbtxt").write_text(
        'backend: "placed"\nmax_batch_size: 4\n'
        'input [{name: "INPUT0", data_type: TYPE_FP32, dims: [2]}]\n'
        'output [{name: "OUTPUT0", data_type: TYPE_FP32, dims: [2]}]\n' + groups
    )
    backend = Placed()
    repo = repository.Repository(
        tmp_path, extra_backends={"placed": backend}, max_instances=max_instances
    )

    async def load() -> None:
        try:
            await repo.load("m")
        finally:
            await repo.unload("m", drain_timeout=1.0)

    asyncio.run(load())
    return [(spec.kind, spec.device_id) for spec in backend.specs]


def test_a_gpu_group_naming_no_gpus_puts_count_instances_on_each_visible_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5a3c,GPU-77e1")
    placed = _place(tmp_path, "instance_group [{kind: KIND_GPU, count: 2}]\n")
    assert sorted(placed) == [("KIND_GPU", 0), ("KIND_GPU", 0), ("KIND_GPU", 1), ("KIND_GPU", 1)]


def test_named_gpus_are_kept_and_cpu_groups_stay_on_one_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    placed = _place(
        tmp_path,
        "instance_group [{kind: KIND_GPU, count: 1, gpus: [2]}, {kind: KIND_CPU, count: 2}]\n",
    )
    assert sorted(placed) == [("KIND_CPU", 0), ("KIND_CPU", 0), ("KIND_GPU", 2)]


def test_with_no_gpu_in_sight_a_gpu_group_asks_for_device_0_and_the_backend_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert _place(tmp_path, "instance_group [{kind: KIND_GPU}]\n") == [("KIND_GPU", 0)]


def test_the_instance_bound_counts_every_visible_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(8)))
    with pytest.raises(errors.ModelLoadError, match="asks for 16 instances"):
        _place(tmp_path, "instance_group [{kind: KIND_GPU, count: 2}]\n", max_instances=10)


@pytest.mark.parametrize(
    ("listed", "count"),
    [("", 0), ("0", 1), ("0,1", 2), ("3, 1", 2), ("GPU-a,MIG-b", 2), ("0,-1,2", 1), ("x", 0)],
)
def test_cuda_visible_devices_is_read_as_cuda_reads_it(listed: str, count: int) -> None:
    assert gpus.visible({"CUDA_VISIBLE_DEVICES": listed}) == list(range(count))


def test_without_the_variable_or_a_driver_no_gpu_is_visible() -> None:
    if Path("/dev/nvidiactl").exists():
        pytest.skip("an NVIDIA driver is present: NVML counts its devices")
    assert gpus.visible({}) == []

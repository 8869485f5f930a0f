"""A fleet whose pods are hollow (``pods: hollow``): Deployments become ready and scale down
through the real scheduler and controllers, and no process is started."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from polyserve_sandbox import config as sandbox_config
from polyserve_sandbox import fleet as sandbox_fleet
from polyserve_sandbox import hollow

Obj = dict[str, Any]
NS = "default"


async def until(what: str, probe: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[sandbox_fleet.Fleet]:
    cfg = sandbox_config.SandboxConfig.model_validate(
        {
            "pods": "hollow",
            "machineNode": False,
            "nodes": [{"name": "big", "allocatable": {"cpu": "64", "memory": "256Gi"}}],
            "operator": {"enabled": False},
        }
    )
    running = sandbox_fleet.Fleet(sandbox_fleet.Layout(tmp_path / "fleet"), cfg)
    await running.start()
    yield running
    await running.stop()


def _deployment(name: str, replicas: int) -> Obj:
    labels = {"app": name}
    container = {
        "name": "worker",
        "image": "ghcr.io/polyserve/worker:0.1.0-cpu",
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8000}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [{"name": "fetch", "image": "busybox:1"}],
                    "containers": [container],
                },
            },
        },
    }


async def test_hollow_pods_are_ready_without_a_process_and_go_at_once(
    fleet: sandbox_fleet.Fleet,
) -> None:
    store = fleet.store
    store.create(_deployment("web", 3))

    def ready() -> int:
        found = store.get("apps/v1", "Deployment", NS, "web")
        return int((found.get("status") or {}).get("readyReplicas") or 0)

    await until("3 ready replicas", lambda: ready() == 3)
    pods = store.list("v1", "Pod", NS)
    assert len(pods) == 3
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Running"
        assert status["podIP"].startswith("127.")
        assert {c["type"] for c in status["conditions"] if c["status"] == "True"} >= {
            "Ready",
            "ContainersReady",
            "PodScheduled",
        }
        assert status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        assert status["containerStatuses"][0]["ready"] is True
    assert len({p["status"]["podIP"] for p in pods}) == 3
    assert not any(fleet.layout.pods.iterdir())  # nothing was started
    store.patch("apps/v1", "Deployment", NS, "web", {"spec": {"replicas": 1}}, patch_type="merge")
    await until("one pod left", lambda: len(store.list("v1", "Pod", NS)) == 1)


def test_a_hollow_status_names_every_container() -> None:
    pod = {
        "metadata": {"uid": "u"},
        "spec": {
            "initContainers": [{"name": "a", "image": "i"}],
            "containers": [{"name": "b", "image": "j"}, {"name": "c", "image": "k"}],
        },
    }
    status = hollow.running_status(pod, "127.0.0.9", "127.0.0.1", "2025-01-01T00:00:00Z")
    assert [s["name"] for s in status["initContainerStatuses"]] == ["a"]
    assert [s["name"] for s in status["containerStatuses"]] == ["b", "c"]
    assert status["podIPs"] == [{"ip": "127.0.0.9"}]

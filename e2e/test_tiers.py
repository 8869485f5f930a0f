"""Query tiers on the local fleet: a model moves to the hardware its load needs and back,
by canary, with real traffic the whole time and no failed request."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from e2e.conftest import Cluster, Operator, wait_for
from e2e.loads import ClosedLoop
from polyserve_operator import api
from polyserve_sandbox import nodes

TIERING = {
    "promoteAbove": 0.8,
    "demoteBelow": 0.5,
    "promoteAfter": "3s",
    "demoteAfter": "4s",
    "minDwell": "5s",
    "provisioningDeadline": "60s",
    "steps": [{"setWeight": 50}, {"setWeight": 100}],
}


def _model(cluster: Cluster, namespace: str, tiers: list[dict[str, Any]]) -> dict[str, Any]:
    cluster.require_sandbox("the stand-in artifacts are files on this machine")
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "ranked", "namespace": namespace},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": cluster.artifacts["double"].as_uri()},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            },
            "tiers": tiers,
            "tiering": TIERING,
        },
    }


XEON = {
    "name": "xeon",
    "hardware": {"pool": "xeon", "backend": "onnxruntime"},
    "replicas": {"min": 1, "max": 1},
    "capacity": 20,
}


def _tier(cluster: Cluster, namespace: str) -> dict[str, Any]:
    body = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "ranked") or {}
    tier: dict[str, Any] = (body.get("status") or {}).get("tier") or {}
    return tier


def _rollout(cluster: Cluster, namespace: str) -> dict[str, Any]:
    body = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "ranked") or {}
    return dict((body.get("status") or {}).get("rollout") or {})


def _reasons(cluster: Cluster, namespace: str) -> list[str]:
    """The reasons of the model's events, oldest first."""
    done = cluster.kubectl("get", "events", "-n", namespace, "-o", "json")
    events = json.loads(done.stdout)["items"]
    return [
        str(e.get("reason"))
        for e in sorted(events, key=lambda e: str(e.get("lastTimestamp") or ""))
        if (e.get("involvedObject") or {}).get("name") == "ranked"
    ]


def _serving(cluster: Cluster, namespace: str) -> bool:
    body = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "ranked") or {}
    conds = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    return (conds.get("Ready") or {}).get("status") == "True"


def _addresses(cluster: Cluster, namespace: str) -> tuple[str, str]:
    return (
        cluster.service_address(namespace, "ranked", "http"),
        cluster.service_address(namespace, "ranked", "grpc"),
    )


def test_a_model_moves_up_a_tier_under_load_and_back_down_without_a_failed_request(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    bf16 = {
        "name": "bf16",
        "hardware": {"pool": "xeon", "backend": "openvino", "precision": "bf16"},
        "replicas": {"min": 0, "max": 2},
        "capacity": 1000,
    }
    cluster.client.apply(_model(cluster, namespace, [XEON, bf16]))
    wait_for("the first tier to serve", lambda: _serving(cluster, namespace), timeout=90)
    assert _tier(cluster, namespace)["current"] == "xeon"
    http, grpc = _addresses(cluster, namespace)
    busy = ClosedLoop(http, "ranked", grpc=grpc, clients=2)
    with busy:
        wait_for(
            "the move up to bf16",
            lambda: (t := _tier(cluster, namespace)).get("current") == "bf16" and t,
            timeout=120,
        )
        wait_for("traffic on bf16", lambda: busy.total() > 200)
    moved_up = _tier(cluster, namespace)["moves"][-1]
    assert (moved_up["from"], moved_up["to"]) == ("xeon", "bf16")
    assert moved_up["reason"].startswith("up: ")
    quiet = ClosedLoop(http, "ranked", grpc=grpc, clients=1, pace=0.5)
    with quiet:
        wait_for(
            "the move back down to xeon",
            lambda: (
                (t := _tier(cluster, namespace)).get("current") == "xeon"
                and len(t.get("moves") or []) >= 2
                and t
            ),
            timeout=120,
        )
        time.sleep(1)  # a few more paced requests on the tier it came back to
    assert not busy.failures() and not quiet.failures(), (busy.failures() + quiet.failures())[:3]
    pods = cluster.client.list("v1", "Pod", namespace, {"app.kubernetes.io/instance": "ranked"})
    wait_for(
        "the bf16 tier's pods to go (min 0)",
        lambda: (
            len(
                cluster.client.list(
                    "apps/v1", "Deployment", namespace, {"app.kubernetes.io/instance": "ranked"}
                )
            )
            == 1
        ),
        timeout=60,
    )
    assert pods


def test_a_gpu_tier_without_a_gpu_is_tier_blocked_and_traffic_keeps_flowing(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    if nodes.gpus():
        pytest.skip("this machine has a GPU: the tier would not be blocked")
    gpu = {
        "name": "gpu",
        "hardware": {"pool": "gpu", "backend": "onnxruntime-cuda"},
        "replicas": {"min": 0, "max": 1},
        "capacity": 5000,
    }
    cluster.client.apply(_model(cluster, namespace, [XEON, gpu]))
    wait_for("the first tier to serve", lambda: _serving(cluster, namespace), timeout=90)
    http, grpc = _addresses(cluster, namespace)
    with ClosedLoop(http, "ranked", grpc=grpc, clients=2) as busy:
        blocked = wait_for(
            "TierBlocked",
            lambda: (t := _tier(cluster, namespace)).get("blocked") and t,
            timeout=120,
            describe=lambda: (_tier(cluster, namespace), _rollout(cluster, namespace)),
        )
        served = busy.total()
        wait_for("traffic on while blocked", lambda: busy.total() > served + 50)
        # While the load lasts the move waits for nodes: it is not given up.
        held_until = time.monotonic() + 10
        while time.monotonic() < held_until:
            tier = _tier(cluster, namespace)
            assert tier.get("target") == "gpu", ("given up under load", tier)
            time.sleep(0.5)
    assert blocked["target"] == "gpu" and blocked["current"] == "xeon"
    assert "Unschedulable" in blocked["blocked"]
    assert "nvidia.com/gpu.present=true" in blocked["blocked"] or "node" in blocked["blocked"]
    assert not busy.failures(), busy.failures()[:3]
    # The load falls: the move is given up and the model stays on xeon.
    wait_for(
        "the move given up",
        lambda: "target" not in (t := _tier(cluster, namespace)) and t.get("current") == "xeon",
        timeout=60,
        describe=lambda: (_tier(cluster, namespace), _rollout(cluster, namespace)),
    )
    assert "given up: the load fell" in _tier(cluster, namespace)["moves"][-1]["reason"]
    wait_for(
        "the TierBlocked and TierMoveGivenUp events",
        lambda: {"TierBlocked", "TierMoveGivenUp"} <= set(_reasons(cluster, namespace)),
        describe=lambda: _reasons(cluster, namespace),
    )
    assert _reasons(cluster, namespace).count("TierBlocked") == 1, "said once per move"

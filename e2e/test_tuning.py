"""spec.tuning on the local fleet: a tuning Job per tier measures the model on that tier's
pool, status.tuning says what it found and where, the tier that declares no capacity uses
the measured one, and ``polyserve tune --from-status`` prints the patch to commit."""

from __future__ import annotations

import io
import json
from typing import Any

import yaml

from e2e.conftest import Cluster, Operator, wait_for
from polyserve_operator import api, tuning_commands
from polyserve_operator.render import tuning as tuning_render
from polyserve_sandbox import nodes


def _model(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "measured", "namespace": namespace},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": cluster.artifacts["double"].as_uri()},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "dynamic_batching": {},
            },
            "tiers": [
                {
                    "name": "xeon",
                    "hardware": {"pool": "xeon", "backend": "onnxruntime"},
                    "replicas": {"min": 1, "max": 1},
                },
                {
                    "name": "gpu",
                    "hardware": {"pool": "gpu", "backend": "onnxruntime-cuda"},
                    "replicas": {"min": 0, "max": 1},
                    "capacity": 5000,
                },
            ],
            "tuning": {"sloP95Ms": 50, "budget": "30s", "protocol": "grpc"},
        },
    }


def _body(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "measured") or {}


def _tuning(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    status = _body(cluster, namespace).get("status") or {}
    return {e.get("tier", ""): e for e in status.get("tuning") or []}


def test_spec_tuning_measures_a_tier_and_the_tier_decisions_use_its_capacity(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.require_sandbox("the stand-in artifact is a file on this machine")
    cluster.client.apply(_model(cluster, namespace))
    started = wait_for(
        "a tuning Job per tier",
        lambda: (t := _tuning(cluster, namespace)).keys() == {"xeon", "gpu"} and t,
        timeout=60,
    )
    assert {e["phase"] for e in started.values()} <= {"Running", "Succeeded"}
    done = wait_for(
        "the xeon tier measured",
        lambda: (e := _tuning(cluster, namespace).get("xeon")) and e["phase"] != "Running" and e,
        timeout=240,
        describe=lambda: _tuning(cluster, namespace),
    )
    assert done["phase"] == "Succeeded", done.get("message")
    result = done["result"]
    assert result["capacity"] > 0 and result["p95Ms"] <= 50 and result["sloP95Ms"] == 50
    assert result["baselineCapacity"] > 0 and result["trials"] >= 1
    assert result["node"] == nodes.xeon_node().name
    assert "CPUs" in result["nodeType"]
    assert result["key"] == done["key"]
    assert set(result["config"]) <= {
        "backend",
        "max_batch_size",
        "dynamic_batching",
        "instance_group",
        "parameters",
    }
    # The Job ran where the tier's pods run, and handed its result over as its pod's
    # termination message.
    job = cluster.client.get("batch/v1", "Job", namespace, done["job"]) or {}
    assert job["metadata"]["labels"][tuning_render.TIER_LABEL] == "xeon"
    (pod,) = cluster.client.list(
        "v1", "Pod", namespace, {tuning_render.JOB_NAME_LABEL: done["job"]}
    )
    (state,) = [s["state"] for s in pod["status"]["containerStatuses"]]
    assert json.loads(state["terminated"]["message"])["capacity"] == result["capacity"]
    # The tier that declares no capacity is decided on the measured one.
    wait_for(
        "the measured capacity in the tier decisions",
        lambda: (
            ((_body(cluster, namespace).get("status") or {}).get("tier") or {}).get("capacities")
            == {"xeon": result["capacity"], "gpu": 5000}
        ),
        timeout=30,
        describe=lambda: (_body(cluster, namespace).get("status") or {}).get("tier"),
    )
    # GitOps-safe: the spec is as it was applied; the patch is for a person to commit.
    body = _body(cluster, namespace)
    assert "capacity" not in body["spec"]["tiers"][0]
    assert body["metadata"]["generation"] == 1
    out = io.StringIO()
    code = tuning_commands.run(
        ["--from-status", "measured", "-n", namespace, "--kubeconfig", str(cluster.kubeconfig)],
        out=out,
    )
    assert code == 0
    patch = yaml.safe_load(out.getvalue())
    assert [t.get("capacity") for t in patch["spec"]["tiers"]] == [
        round(result["capacity"], 1),
        5000,
    ]
    if not nodes.gpus():
        # The gpu tier's Job waits for a GPU node like the tier's own pods would.
        gpu = _tuning(cluster, namespace)["gpu"]
        assert gpu["phase"] == "Running"
        (waiting,) = cluster.client.list(
            "v1", "Pod", namespace, {tuning_render.JOB_NAME_LABEL: gpu["job"]}
        )
        assert not waiting["spec"].get("nodeName")

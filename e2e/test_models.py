"""InferenceModels end to end: rendered pods run, serve through their Service, roll and go."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from e2e.conftest import (
    Cluster,
    Operator,
    example,
    fleet_log,
    pod_processes,
    ready_condition,
    runnable,
    wait_for,
    wait_ready,
)
from polyserve_operator import api, k8s
from polyserve_sandbox import nodes

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _model(
    cluster: Cluster, namespace: str, name: str, artifact: str, **spec: Any
) -> dict[str, Any]:
    cluster.require_sandbox("the stand-in artifacts are files on this machine")
    doc: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": cluster.artifacts[artifact].as_uri()},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            },
            **spec,
        },
    }
    return doc


def _infer_http(address: str, model: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(address)
    try:
        inp = httpclient.InferInput("INPUT0", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        result: np.ndarray = client.infer(model, [inp]).as_numpy("OUTPUT0")
        return result
    finally:
        client.close()


def _infer_grpc(address: str, model: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(address)
    try:
        inp = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        result: np.ndarray = client.infer(model, [inp]).as_numpy("OUTPUT0")
        return result
    finally:
        client.close()


def _status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, name) or {}
    return body.get("status") or {}


def test_a_model_runs_in_real_pods_and_serves_through_its_service_over_http_and_grpc(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    c.apply(_model(cluster, namespace, "double", "double", replicas=2))
    wait_ready(cluster, "InferenceModel", namespace, "double")
    status = _status(cluster, namespace, "double")
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    http = cluster.service_address(namespace, "double", "http")
    grpc = cluster.service_address(namespace, "double", "grpc")
    np.testing.assert_allclose(_infer_http(http, "double"), 2 * X)
    np.testing.assert_allclose(_infer_grpc(grpc, "double"), 2 * X)
    budget = c.get("policy/v1", "PodDisruptionBudget", namespace, "double")
    assert budget is not None and budget["spec"]["maxUnavailable"] == 1


def test_every_xeon_example_runs_and_serves_as_rendered(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    (resnet,) = example("resnet-xeon.yaml", namespace)
    c.apply(runnable(cluster, resnet))
    for doc in example("ensemble.yaml", namespace):
        doc["spec"]["replicas"] = min(doc["spec"].get("replicas", 1), 1)
        c.apply(runnable(cluster, doc))
    wait_ready(cluster, "InferenceModel", namespace, "resnet50", timeout=180)
    wait_ready(cluster, "InferenceEnsemble", namespace, "sentiment-pipeline", timeout=180)

    image = np.ones((1, 3, 224, 224), dtype=np.float32)
    client = httpclient.InferenceServerClient(
        cluster.service_address(namespace, "resnet50", "http")
    )
    inp = httpclient.InferInput("input", list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    assert client.infer("resnet50", [inp]).as_numpy("logits").shape == (1, 1000)
    client.close()

    grpc = grpcclient.InferenceServerClient(
        cluster.service_address(namespace, "sentiment-pipeline", "grpc")
    )
    text = np.array([[b"great"], [b"unknown"]], dtype=object)
    words = grpcclient.InferInput("TEXT", list(text.shape), "BYTES")
    words.set_data_from_numpy(text)
    probabilities = grpc.infer("sentiment-pipeline", [words]).as_numpy("PROBABILITIES")
    grpc.close()
    assert probabilities.shape == (2, 2)
    assert probabilities[0, 0] > probabilities[1, 0], "a known word reads more positive"


def test_a_gpu_model_stays_pending_and_says_what_it_needs_where_there_is_no_gpu(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.require_sandbox("a real cluster may well have the GPU")
    if nodes.gpus():
        pytest.skip("this machine has a GPU: the example would schedule (it needs TensorRT)")
    (doc,) = example("bert-gpu.yaml", namespace)
    doc["spec"]["artifact"] = {"uri": cluster.artifacts["double"].as_uri()}
    cluster.client.apply(doc)
    ready = wait_for(
        "Unschedulable",
        lambda: (
            (r := ready_condition(cluster, "InferenceModel", namespace, "bert-trt")).get("reason")
            == "Unschedulable"
            and r
        ),
        timeout=60,
    )
    assert "didn't match Pod's node affinity/selector" in ready["message"]
    assert "nvidia.com/gpu.product=NVIDIA-L4" in ready["message"]
    assert _status(cluster, namespace, "bert-trt")["lastFailure"]["reason"] == "Unschedulable"


def test_a_broken_artifact_uri_fails_the_fetch_and_status_says_so(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    doc = _model(cluster, namespace, "missing", "double")
    doc["spec"]["artifact"] = {"uri": "file:///nonexistent/model.onnx"}
    cluster.client.apply(doc)
    failure = wait_for(
        "the fetch's failure in status",
        lambda: (
            (f := _status(cluster, namespace, "missing").get("lastFailure"))
            and "fetch-missing" in f["message"]
            and f
        ),
        timeout=60,
    )
    assert "not found; check artifact.uri" in failure["message"], failure
    assert ready_condition(cluster, "InferenceModel", namespace, "missing")["status"] == "False"


def test_a_model_that_cannot_load_shows_the_workers_own_reason_within_a_minute(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    broken = cluster.artifacts["claims"].parent / "broken" / "model.onnx"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"this is not an ONNX file")
    cluster.artifacts["broken"] = broken
    cluster.client.apply(_model(cluster, namespace, "corrupt", "broken"))
    failure = wait_for(
        "the worker's reason in status",
        lambda: (
            (f := _status(cluster, namespace, "corrupt").get("lastFailure"))
            and "failed to load" in f["message"]
            and f
        ),
        timeout=60,
    )
    assert "model 'corrupt' failed to load" in failure["message"], failure
    assert "container worker" in failure["message"]


def _load(
    http: str, grpc: str, stop: threading.Event, counts: Counter[str], answers: set[float]
) -> None:
    """A light closed-loop client, HTTP and gRPC in turn, counting every outcome."""
    h = httpclient.InferenceServerClient(http)
    g = grpcclient.InferenceServerClient(grpc)
    try:
        while not stop.is_set():
            for name, call in (
                ("http", _infer_with(h, httpclient)),
                ("grpc", _infer_with(g, grpcclient)),
            ):
                try:
                    answers.add(float(call()[0, 1]))
                    counts[f"{name} ok"] += 1
                except Exception as exc:  # every failure is counted, none is allowed
                    counts[f"{name} failed: {type(exc).__name__}: {exc}"[:160]] += 1
    finally:
        h.close()
        g.close()


def _infer_with(client: Any, module: Any) -> Any:
    def call() -> np.ndarray:
        inp = module.InferInput("INPUT0", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        result: np.ndarray = client.infer("scaled", [inp]).as_numpy("OUTPUT0")
        return result

    return call


def test_a_config_change_rolls_a_new_revision_with_no_failed_request_under_load(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    doc = _model(cluster, namespace, "scaled", "double", replicas=2)
    c.apply(doc)
    wait_ready(cluster, "InferenceModel", namespace, "scaled")
    first = _status(cluster, namespace, "scaled")["revision"]
    http = cluster.service_address(namespace, "scaled", "http")
    grpc = cluster.service_address(namespace, "scaled", "grpc")
    stop, counts, answers = threading.Event(), Counter[str](), set[float]()
    clients = [
        threading.Thread(target=_load, args=(http, grpc, stop, counts, answers), daemon=True)
        for _ in range(2)
    ]
    for client in clients:
        client.start()
    try:
        wait_for("traffic", lambda: counts["http ok"] > 5 and counts["grpc ok"] > 5)
        doc["spec"]["artifact"] = {"uri": cluster.artifacts["triple"].as_uri()}
        doc["spec"]["config"]["dynamic_batching"] = {"max_queue_delay_microseconds": 100}
        c.apply(doc)
        wait_for(
            "the new revision to serve alone",
            lambda: (
                (s := _status(cluster, namespace, "scaled")).get("revision") != first
                and ready_condition(cluster, "InferenceModel", namespace, "scaled").get("status")
                == "True"
                and s.get("replicas") == 2
                and 3.0 in answers
            ),
            timeout=120,
        )
        seen = counts.copy()
        wait_for(
            "more traffic on the new revision", lambda: counts["http ok"] > seen["http ok"] + 5
        )
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    failed = {k: v for k, v in counts.items() if "failed" in k}
    assert not failed, f"failed requests during the rollout: {failed}; {dict(counts)}"
    assert {2.0, 3.0} <= answers
    rev = _status(cluster, namespace, "scaled")["revision"]
    config_maps = c.list("v1", "ConfigMap", namespace, {"app.kubernetes.io/instance": "scaled"})
    names = {m["metadata"]["name"] for m in config_maps}
    assert f"scaled-{rev}" in names and f"scaled-{first}" in names, "each revision its own config"
    owners = {
        m["metadata"]["name"]: {o["kind"] for o in m["metadata"].get("ownerReferences") or []}
        for m in config_maps
    }
    assert owners[f"scaled-{first}"] == {"ReplicaSet"}, owners


def test_deleted_service_and_config_map_come_back(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    c.apply(_model(cluster, namespace, "mended", "double", replicas=0))
    revision = wait_for("a revision", lambda: _status(cluster, namespace, "mended").get("revision"))
    wait_for("the Service", lambda: c.get("v1", "Service", namespace, "mended"))
    c.delete("v1", "Service", namespace, "mended")
    c.delete("v1", "ConfigMap", namespace, f"mended-{revision}")
    wait_for("the Service back", lambda: c.get("v1", "Service", namespace, "mended"))
    wait_for(
        "the ConfigMap back", lambda: c.get("v1", "ConfigMap", namespace, f"mended-{revision}")
    )


def test_deleting_a_model_stops_its_processes_and_its_objects_go(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.require_sandbox("process checks are local")
    c = cluster.client
    c.apply(_model(cluster, namespace, "brief", "double"))
    wait_ready(cluster, "InferenceModel", namespace, "brief")
    assert pod_processes(cluster, namespace, "brief-"), fleet_log(cluster)
    c.delete(api.API_VERSION, "InferenceModel", namespace, "brief")
    wait_for(
        "the model to go",
        lambda: c.get(api.API_VERSION, "InferenceModel", namespace, "brief") is None,
    )
    wait_for(
        "the Deployment, ReplicaSets and pods to go",
        lambda: (
            c.get("apps/v1", "Deployment", namespace, "brief") is None
            and not c.list("v1", "Pod", namespace, {"app.kubernetes.io/instance": "brief"})
        ),
        timeout=60,
    )
    wait_for(
        "the processes to go", lambda: not pod_processes(cluster, namespace, "brief-"), timeout=30
    )
    assert not c.list("v1", "ConfigMap", namespace, {"app.kubernetes.io/instance": "brief"})


def test_the_api_server_refuses_what_the_crds_cel_rules_refuse(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    (doc,) = example("bert-gpu.yaml", namespace)
    doc["spec"]["hardware"]["pool"] = "xeon"
    doc["spec"]["hardware"].pop("gpu")
    with pytest.raises(k8s.ApiError) as refused:
        cluster.client.apply(doc)
    assert refused.value.status == 422
    assert "need a GPU: set hardware.pool to gpu" in str(refused.value)
    assert cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "bert-trt") is None


def test_a_spec_only_the_workers_rules_refuse_reports_invalid_spec_in_status(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    """Past the CRD's rules (a cluster without the webhook), the operator says why in status."""
    doc = _model(cluster, namespace, "bf16", "double")
    doc["spec"]["hardware"]["precision"] = "bf16"  # ONNX Runtime's CPU engine runs fp32 only
    cluster.client.apply(doc)
    ready = wait_for(
        "InvalidSpec",
        lambda: (
            (r := ready_condition(cluster, "InferenceModel", namespace, "bf16")).get("reason")
            == "InvalidSpec"
            and r
        ),
    )
    assert "cannot run precision bf16" in ready["message"]
    assert "bf16 runs on openvino" in ready["message"], "the message names the fix"
    assert cluster.client.get("apps/v1", "Deployment", namespace, "bf16") is None

"""Every framework through the operator: one network in each format goes Ready and serves.

The two-layer perceptron of the worker tests (``tests/worker/framework_models``) is written
as ONNX, TorchScript, a SavedModel directory and an OpenVINO IR directory; each becomes an
InferenceModel on the Xeon pool, mostly with ``hardware.backend`` left to ``auto``, and its
answers through its Service must match the numpy reference. On the sandbox the pods are
real worker processes with the frameworks of this machine, and the kubelet enforces
``limits.cpu`` with cgroups where it runs as root: a worker limited to one CPU runs one
intra-op thread, whatever the node's cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from e2e.conftest import ROOT, Cluster, Operator, pod_processes, wait_for, wait_ready
from polyserve_operator import api
from tests.worker import framework_models

#: name -> (modelFormat, hardware.backend (None: auto), artifact, the backend that serves,
#: input name, output name)
MODELS: dict[str, tuple[str, str | None, str, str, str, str]] = {
    "onnx-auto": ("onnx", None, "onnx/model.onnx", "openvino", "INPUT0", "OUTPUT0"),
    "onnx-ort": ("onnx", "onnxruntime", "onnx/model.onnx", "onnxruntime", "INPUT0", "OUTPUT0"),
    "torchscript": ("pytorch", None, "torch/model.pt", "pytorch", "INPUT__0", "OUTPUT__0"),
    "savedmodel": ("tensorflow", None, "mlp.savedmodel", "tensorflow", "x", "y"),
    "openvino-ir": ("openvino", None, "ir", "openvino", "INPUT0", "OUTPUT0"),
}

#: TorchScript records no tensor names, types or shapes: its config lists them.
TORCHSCRIPT_CONFIG = {
    "max_batch_size": 8,
    "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [8]}],
    "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
}

_BUILD = """
import sys
from pathlib import Path
from tests.worker import framework_models as f
root = Path(sys.argv[1])
f.onnx_mlp(root / "onnx" / "model.onnx")
f.torchscript_mlp(root / "torch" / "model.pt")
f.savedmodel_mlp(root / "mlp.savedmodel")
f.openvino_mlp(root / "ir" / "model.xml", root / "onnx" / "model.onnx")
"""


@pytest.fixture(scope="module")
def frameworks(cluster: Cluster) -> Path:
    """The perceptron in every format, built in a process of its own (the frameworks'
    threads and memory stay out of the process that runs the operator)."""
    cluster.require_sandbox("the artifacts are files on this machine")
    for module, extra in (("torch", "torch"), ("tensorflow", "tensorflow")):
        pytest.importorskip(module, reason=f"needs {module}: pip install polyserve[{extra}]")
    pytest.importorskip("openvino", reason="needs openvino: pip install polyserve[openvino]")
    root = cluster.artifacts["claims"].parent / "frameworks"
    if not (root / "ir" / "model.xml").exists():
        subprocess.run(
            [sys.executable, "-c", _BUILD, str(root)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return root


def _doc(namespace: str, name: str, root: Path, **spec: Any) -> dict[str, Any]:
    fmt, backend, artifact, _, _, _ = MODELS[name]
    hardware: dict[str, Any] = {"pool": "xeon"}
    if backend is not None:
        hardware["backend"] = backend
    body: dict[str, Any] = {
        "modelFormat": {"name": fmt},
        "artifact": {"uri": (root / artifact).as_uri()},
        "hardware": hardware,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        **spec,
    }
    if fmt == "pytorch":
        body["config"] = TORCHSCRIPT_CONFIG
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def _infer(address: str, name: str) -> np.ndarray:
    _, _, _, _, input_name, output_name = MODELS[name]
    x = np.random.default_rng(11).standard_normal((3, framework_models.IN)).astype(np.float32)
    client = httpclient.InferenceServerClient(address)
    try:
        inp = httpclient.InferInput(input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result: np.ndarray = client.infer(name, [inp]).as_numpy(output_name)
    finally:
        client.close()
    np.testing.assert_allclose(result, framework_models.reference(x), rtol=1e-4, atol=1e-4)
    return result


def _rendered_config(cluster: Cluster, namespace: str, name: str) -> str:
    (config_map,) = cluster.client.list(
        "v1", "ConfigMap", namespace, {"app.kubernetes.io/instance": name}
    )
    text: str = config_map["data"][f"{name}.pbtxt"]
    return text


def test_a_model_in_every_framework_goes_ready_and_serves_through_the_operator_on_xeon(
    cluster: Cluster, operator: Operator, namespace: str, frameworks: Path
) -> None:
    for name in MODELS:
        cluster.client.apply(_doc(namespace, name, frameworks))
    for name in MODELS:
        wait_ready(cluster, "InferenceModel", namespace, name, timeout=240)
    for name, (_, _, _, backend, _, _) in MODELS.items():
        assert f'backend: "{backend}"' in _rendered_config(cluster, namespace, name), name
        _infer(cluster.service_address(namespace, name, "http"), name)


def _enforces_cgroups(cluster: Cluster, namespace: str, name: str) -> bool:
    for pid in pod_processes(cluster, namespace, name):
        try:
            if "polyserve-sandbox" in Path(f"/proc/{pid}/cgroup").read_text():
                return True
        except OSError:
            continue
    return False


def _worker_log(cluster: Cluster, namespace: str, name: str) -> str:
    pods = cluster.client.list("v1", "Pod", namespace, {"app.kubernetes.io/instance": name})
    (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    done = cluster.kubectl("logs", "-n", namespace, pod["metadata"]["name"], "-c", "worker")
    return done.stdout


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell 1 from them")
def test_a_worker_limited_to_one_cpu_runs_one_intra_op_thread_not_one_per_core(
    cluster: Cluster, operator: Operator, namespace: str, frameworks: Path
) -> None:
    limited = {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    cluster.client.apply(_doc(namespace, "onnx-ort", frameworks, resources=limited))
    wait_ready(cluster, "InferenceModel", namespace, "onnx-ort")
    if not _enforces_cgroups(cluster, namespace, "onnx-ort"):
        pytest.skip("the sandbox enforces no cgroup limits here (it needs root and cgroupfs)")
    log = wait_for(
        "the instance's thread count in the worker's log",
        lambda: (
            (text := _worker_log(cluster, namespace, "onnx-ort")) and "intra-op" in text and text
        ),
    )
    assert "1 intra-op threads" in log, log[-2000:]
    _infer(cluster.service_address(namespace, "onnx-ort", "http"), "onnx-ort")

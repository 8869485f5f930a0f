"""The operator's ``workerGrpcTransport`` setting on a fleet of its own: every worker pod
serves gRPC on the native front (Rust threads), and answers through its Service.

A fleet of its own because the setting is the operator's, for every pod it renders; the
session's operator keeps the default (grpc.aio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from e2e.conftest import (
    Cluster,
    _build_artifacts,
    pod_processes,
    running_operator,
    sandbox,
    wait_for,
    wait_ready,
)
from polyserve_operator import api, k8s

NS = "fronts"
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _threads(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:
            continue
    return names


@pytest.mark.timeout(300)
def test_the_native_grpc_setting_serves_every_pod_on_the_native_front(tmp_path: Path) -> None:
    built = _build_artifacts(tmp_path / "artifacts")
    with sandbox(tmp_path / "sandbox", built) as folder:
        kubeconfig = folder / "kubeconfig"
        client = k8s.connect(kubeconfig, "polyserve-e2e")
        cluster = Cluster(kubeconfig, client, sandbox=folder, artifacts=built)
        client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        with running_operator(kubeconfig, worker_grpc_transport="native"):
            client.apply(
                {
                    "apiVersion": api.API_VERSION,
                    "kind": "InferenceModel",
                    "metadata": {"name": "double", "namespace": NS},
                    "spec": {
                        "modelFormat": {"name": "onnx"},
                        "artifact": {"uri": built["double"].as_uri()},
                        "hardware": {"pool": "xeon", "backend": "onnxruntime"},
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                    },
                }
            )
            wait_ready(cluster, "InferenceModel", NS, "double")
            grpc = grpcclient.InferenceServerClient(cluster.service_address(NS, "double", "grpc"))
            tensor = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
            tensor.set_data_from_numpy(X)
            result = grpc.infer("double", [tensor]).as_numpy("OUTPUT0")
            grpc.close()
            np.testing.assert_allclose(result, 2 * X)
            (pid,) = wait_for("the worker's process", lambda: pod_processes(cluster, NS, "double"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--grpc-transport=auto" in cmdline
            # pygrpc-native's I/O threads: HTTP/2 is served in Rust, not by grpc.aio's poller
            assert "grpc-native-io" in _threads(pid), _threads(pid)
        client.close()

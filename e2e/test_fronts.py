"""The operator's ``workerGrpcTransport`` setting on a fleet of its own: every worker pod
serves gRPC on the native front (Rust threads), and answers through its Service.

A fleet of its own because the setting is the operator's, for every pod it renders; the
session's operator keeps the default (grpc.aio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from e2e.conftest import (
    Cluster,
    _build_artifacts,
    pod_processes,
    running_operator,
    sandbox,
    wait_for,
    wait_ready,
)
from e2e.test_models import X, _infer_grpc, _model
from polyserve_operator import k8s

NS = "fronts"


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
            client.apply(_model(cluster, NS, "double", "double"))
            wait_ready(cluster, "InferenceModel", NS, "double")
            result = _infer_grpc(cluster.service_address(NS, "double", "grpc"), "double")
            np.testing.assert_allclose(result, 2 * X)
            (pid,) = wait_for("the worker's process", lambda: pod_processes(cluster, NS, "double"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--grpc-transport=auto" in cmdline
            # pygrpc-native's I/O threads: HTTP/2 is served in Rust, not by grpc.aio's poller
            assert "grpc-native-io" in _threads(pid), _threads(pid)
        client.close()

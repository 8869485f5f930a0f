"""spec.tls on the local fleet: the worker pods mount the Secret, pass the kubelet's HTTPS
probes, and serve tritonclient over HTTPS and gRPC with TLS through their Service, with a
certificate a client verifies against the CA made here."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from gevent import ssl as gevent_ssl

from e2e import test_models
from e2e.conftest import Cluster, Operator, wait_for, wait_ready
from polyserve_operator import api
from tests import certificates


def _secret(
    cluster: Cluster, namespace: str, name: str, tmp_path: Path, files: tuple[str, ...]
) -> certificates.Issued:
    """A kubernetes.io/tls Secret ``NAME-tls`` holding ``files`` of a certificate for the
    Service's name, issued by a CA made here."""
    host = f"{name}.{namespace}.svc"
    issued = certificates.issue(certificates.authority(tmp_path / "ca"), tmp_path / "tls", [host])
    data = {f: base64.b64encode((issued.folder / f).read_bytes()).decode() for f in files}
    cluster.client.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-tls", "namespace": namespace},
            "type": "kubernetes.io/tls",
            "data": data,
        }
    )
    return issued


def _model(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """A small model (x2) serving TLS with the Secret ``NAME-tls``."""
    return test_models._model(cluster, namespace, name, "double", tls={"secretName": f"{name}-tls"})


def test_a_model_with_spec_tls_is_probed_over_https_and_serves_tls_through_its_service(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    name = "secure"
    host = f"{name}.{namespace}.svc"
    issued = _secret(cluster, namespace, name, tmp_path, ("tls.crt", "tls.key"))
    cluster.client.apply(_model(cluster, namespace, name))
    wait_ready(cluster, "InferenceModel", namespace, name, timeout=120)  # HTTPS probes passed
    body = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, name) or {}
    assert body["status"]["endpoints"]["http"] == f"https://{host}:8000"
    data_in = np.arange(4, dtype=np.float32).reshape(1, 4)

    http = httpclient.InferenceServerClient(
        cluster.service_address(namespace, name, "http"),
        ssl=True,
        ssl_options={"ca_certs": str(issued.ca), "server_hostname": host},
        ssl_context_factory=gevent_ssl.create_default_context,
    )
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data_in)
    np.testing.assert_allclose(http.infer(name, [tensor]).as_numpy("OUTPUT0"), data_in * 2)
    http.close()

    grpc = grpcclient.InferenceServerClient(
        cluster.service_address(namespace, name, "grpc"),
        ssl=True,
        root_certificates=str(issued.ca),
        channel_args=[("grpc.ssl_target_name_override", host)],
    )
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data_in)
    np.testing.assert_allclose(grpc.infer(name, [tensor]).as_numpy("OUTPUT0"), data_in * 2)
    grpc.close()


def test_a_canary_mirror_between_tls_pods_compares_over_tls_and_rolls_back_wrong_answers(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    """Stable pods copy requests to the canary over TLS, verified with the Secret's ca.crt
    and the Service's name: a release answering wrong numbers is rolled back on agreement
    (copies that could not be sent would leave the analysis inconclusive, not failed)."""
    name = "secure"
    host = f"{name}.{namespace}.svc"
    issued = _secret(cluster, namespace, name, tmp_path, ("tls.crt", "tls.key", "ca.crt"))
    doc = _model(cluster, namespace, name)
    doc["spec"]["rollout"] = {
        "strategy": "Canary",
        "canary": {
            "steps": [{"analysis": {}}, {"setWeight": 50}],
            "analysis": {
                "interval": "3s",
                "count": 2,
                "minSamples": 5,
                "inconclusiveLimit": 10,
                "metrics": [{"name": "mirrorAgreement", "min": 0.99}],
            },
            "mirror": {"percent": 100, "compare": {"*": {"maxAbsDiff": 1e-4}}},
            "progressDeadlineSeconds": 120,
            "abortScaleDownDelaySeconds": 2,
        },
    }
    cluster.client.apply(doc)
    wait_ready(cluster, "InferenceModel", namespace, name, timeout=120)
    grpc = grpcclient.InferenceServerClient(
        cluster.service_address(namespace, name, "grpc"),
        ssl=True,
        root_certificates=str(issued.ca),
        channel_args=[("grpc.ssl_target_name_override", host)],
    )
    data_in = np.arange(4, dtype=np.float32).reshape(1, 4)
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data_in)
    doc["spec"]["artifact"] = {"uri": cluster.artifacts["triple"].as_uri()}
    cluster.client.apply(doc)

    def rolled_back() -> dict[str, Any] | None:
        np.testing.assert_allclose(grpc.infer(name, [tensor]).as_numpy("OUTPUT0"), data_in * 2)
        body = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, name) or {}
        rollout = (body.get("status") or {}).get("rollout") or {}
        return rollout if rollout.get("phase") == "RolledBack" else None

    rollout = wait_for("the rollback on mirror agreement", rolled_back, timeout=120)
    grpc.close()
    assert "mirrorAgreement" in rollout["message"]
    assert rollout["measurements"][-1]["values"]["mirrorAgreement"] < 0.5

"""TLS on the HTTP and gRPC ports (--tls-cert-file, --tls-key-file, --tls-client-ca-file):
real certificates from a CA made here, tritonclient over HTTPS and gRPC with TLS, a renewal
served without a restart, mutual TLS, and the settings that cannot go together."""

from __future__ import annotations

import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import gevent.ssl
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from polyserve_worker import errors, main, tls
from polyserve_worker import settings as worker_settings
from tests import certificates
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker

HOST = "127.0.0.1"


@pytest.fixture()
def secret(tmp_path: Path) -> certificates.Issued:
    ca = certificates.authority(tmp_path / "ca")
    return certificates.issue(ca, tmp_path / "secret", [HOST, "localhost"])


def _tls_worker(
    start_worker: StartWorker, tmp_path: Path, secret: certificates.Issued, **more: object
) -> RunningWorker:
    return start_worker(
        models.triton_repository(tmp_path / "repo"),
        tls_cert_file=secret.cert,
        tls_key_file=secret.key,
        **more,
    )


def _inputs(module: object) -> list[object]:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    found = []
    for name in ("INPUT0", "INPUT1"):
        tensor = module.InferInput(name, [1, 16], "INT32")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(data)
        found.append(tensor)
    return found


def _https_ready(address: str, ca: Path, cert: Path | None = None, key: Path | None = None) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    url = f"https://{address}/v2/health/ready"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return bool(response.status == 200)


def _wait_for(what: str, probe: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except (OSError, InferenceServerException):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_tritonclient_infers_over_https_and_grpc_with_tls_verifying_the_certificate(
    tmp_path: Path, start_worker: StartWorker, secret: certificates.Issued
) -> None:
    worker = _tls_worker(start_worker, tmp_path, secret, grpc_transport="auto")
    assert worker.worker.grpc_transport == "aio", "auto: the native front has no TLS"
    http = httpclient.InferenceServerClient(
        worker.http,
        ssl=True,
        ssl_options={"ca_certs": str(secret.ca)},
        ssl_context_factory=gevent.ssl.create_default_context,
    )
    answer = http.infer("simple", _inputs(httpclient))
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT0")[0], np.arange(16) * 2)
    http.close()
    grpc = grpcclient.InferenceServerClient(worker.grpc, ssl=True, root_certificates=str(secret.ca))
    answer = grpc.infer("simple", _inputs(grpcclient))
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT1")[0], np.zeros(16))
    grpc.close()
    # Plain text gets no answer on either port; the metrics port stays plain HTTP.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{worker.http}/v2/health/ready", timeout=10)
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(worker.grpc).is_server_ready(client_timeout=5)
    with urllib.request.urlopen(worker.metrics, timeout=10) as response:
        assert b"nv_inference_count" in response.read()


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
    tmp_path: Path, start_worker: StartWorker, secret: certificates.Issued
) -> None:
    worker = _tls_worker(start_worker, tmp_path, secret)
    assert _https_ready(worker.http, secret.ca)
    first_ca = shutil.copyfile(secret.ca, tmp_path / "first-ca.crt")
    renewed = certificates.authority(tmp_path / "ca-2", name="renewed-ca")
    certificates.issue(renewed, secret.folder, [HOST])  # the kubelet swaps the Secret's files
    _wait_for("HTTPS with the renewed certificate", lambda: _https_ready(worker.http, secret.ca))
    _wait_for(
        "gRPC with the renewed certificate",
        lambda: grpcclient.InferenceServerClient(
            worker.grpc, ssl=True, root_certificates=str(secret.ca)
        ).is_server_ready(client_timeout=5),
    )
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _https_ready(worker.http, first_ca)


def test_with_a_client_ca_only_clients_with_a_certificate_it_signed_are_served(
    tmp_path: Path, start_worker: StartWorker, secret: certificates.Issued
) -> None:
    clients = certificates.authority(tmp_path / "clients-ca", name="clients-ca")
    client = certificates.issue(clients, tmp_path / "client", ["client"], usage="clientAuth")
    worker = _tls_worker(start_worker, tmp_path, secret, tls_client_ca_file=clients.cert)
    assert _https_ready(worker.http, secret.ca, client.cert, client.key)
    with pytest.raises(OSError):
        _https_ready(worker.http, secret.ca)
    grpc = grpcclient.InferenceServerClient(
        worker.grpc,
        ssl=True,
        root_certificates=str(secret.ca),
        private_key=str(client.key),
        certificate_chain=str(client.cert),
    )
    assert grpc.is_server_ready(client_timeout=10)
    anonymous = grpcclient.InferenceServerClient(
        worker.grpc, ssl=True, root_certificates=str(secret.ca)
    )
    with pytest.raises(InferenceServerException):
        anonymous.is_server_ready(client_timeout=5)


def test_certificate_files_that_cannot_be_served_fail_at_start_naming_them(
    tmp_path: Path, secret: certificates.Issued
) -> None:
    with pytest.raises(errors.ServerError, match=r"missing\.crt"):
        tls.Certificates(tmp_path / "missing.crt", secret.key)
    other = certificates.issue(certificates.authority(tmp_path / "x"), tmp_path / "other", [HOST])
    with pytest.raises(errors.ServerError, match="cannot serve TLS"):
        tls.Certificates(secret.cert, other.key)


def test_tls_settings_that_cannot_go_together_are_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = ["--model-repository", str(tmp_path)]
    pair = ["--tls-cert-file=/c.crt", "--tls-key-file=/c.key"]
    assert worker_settings.parse([*repo, *pair, "--grpc-transport=aio"]).tls
    assert main.main([*repo, *pair, "--grpc-transport=native"]) == 2
    assert "native gRPC front (pygrpc-native) cannot serve TLS" in capsys.readouterr().err
    assert main.main([*repo, "--tls-cert-file=/c.crt"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main.main([*repo, "--tls-client-ca-file=/ca.crt"]) == 2
    assert "needs --tls-cert-file" in capsys.readouterr().err

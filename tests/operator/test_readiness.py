"""Webhook availability: /readyz follows the real webhook server (kopf's, with certificates
from a CA made here), a renewed certificate is served without a restart and its CA reaches
the webhook configuration, and the failure policy is Ignore unless the settings say Fail."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from polyserve_operator import admission, readiness, settings
from tests import certificates

HOST = "polyserve-operator.polyserve-system.svc"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _hook(port: int, folder: Path, **extra: Any) -> settings.Webhook:
    return settings.Webhook(
        enabled=True,
        addr="127.0.0.1",
        port=port,
        host=HOST,
        certfile=folder / "tls.crt",
        pkeyfile=folder / "tls.key",
        cafile=folder / "ca.crt",
        reload_seconds=0.1,
        **extra,
    )


async def _review(data: Any, **_: Any) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {}}


async def _problem(check: readiness.Readiness) -> str | None:
    return await asyncio.to_thread(check.problem)


def _served_certificate(port: int) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


async def _next(configs: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(anext(configs), timeout=20)


async def test_ready_only_while_the_webhook_serves_a_certificate_its_ca_verifies(
    tmp_path: Path,
) -> None:
    ca = certificates.authority(tmp_path / "ca")
    certificates.issue(ca, tmp_path / "secret", [HOST])
    port = _free_port()
    hook = _hook(port, tmp_path / "secret")
    check = readiness.Readiness(hook)
    assert "does not answer" in (await _problem(check) or "")
    # kopf's servers free their socket when their context ends (as kopf itself runs them).
    async with admission.server(hook) as server:
        config = await _next(server(_review))
        assert config["url"] == f"https://{HOST}:{port}"
        assert base64.b64decode(config["caBundle"]) == ca.cert.read_bytes()
        assert await _problem(check) is None
        stranger = certificates.authority(tmp_path / "other-ca")
        wrong = readiness.Readiness(hook.model_copy(update={"cafile": stranger.cert}))
        assert "does not verify" in (await _problem(wrong) or "")
        misnamed = readiness.Readiness(hook.model_copy(update={"host": "elsewhere.svc"}))
        assert "does not verify" in (await _problem(misnamed) or "")
    assert "does not answer" in (await _problem(check) or "")


async def test_a_renewed_certificate_is_served_and_its_ca_configured_without_a_restart(
    tmp_path: Path,
) -> None:
    first = certificates.authority(tmp_path / "ca-1")
    issued = certificates.issue(first, tmp_path / "secret", [HOST])
    port = _free_port()
    hook = _hook(port, issued.folder)
    async with admission.server(hook) as server:
        configs = server(_review)
        await _next(configs)
        before = await asyncio.to_thread(_served_certificate, port)
        assert before == _der(issued.cert)
        # kopf asks for the next configuration at once and so starts watching the files (one
        # step of the task reads them); then cert-manager renews, with a new CA too.
        renewed = asyncio.ensure_future(anext(configs))
        await asyncio.sleep(0)
        second = certificates.authority(tmp_path / "ca-2")
        await asyncio.to_thread(certificates.issue, second, issued.folder, [HOST])
        config = await asyncio.wait_for(renewed, timeout=20)
        assert base64.b64decode(config["caBundle"]) == second.cert.read_bytes()
        assert await asyncio.to_thread(_served_certificate, port) == _der(issued.cert)
        assert await _problem(readiness.Readiness(hook)) is None


def test_readyz_answers_200_or_503_with_the_reason() -> None:
    port = _free_port()
    hook = settings.Webhook(enabled=True, addr="127.0.0.1", port=port, insecure=True)
    server = readiness.serve("127.0.0.1", 0, readiness.Readiness(hook, timeout=1))
    try:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/readyz", timeout=5)
        assert refused.value.code == 503
        assert "does not answer" in refused.value.read().decode()
        refused.value.close()
        with socket.socket() as listening:  # any HTTP server on the port will do
            listening.bind(("127.0.0.1", port))
            listening.listen()
            answered = _answer_once(listening)
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                assert response.status == 200
            answered.join(5)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "/elsewhere", timeout=5)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        server.close()


def _answer_once(sock: socket.socket) -> Any:
    import threading

    def serve() -> None:
        connection, _ = sock.accept()
        with connection:
            connection.recv(1024)
            connection.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_without_the_webhook_the_operator_is_ready_once_it_serves() -> None:
    assert readiness.Readiness(settings.Webhook()).problem() is None


@pytest.mark.parametrize(("policy", "ignore"), [("Ignore", True), ("Fail", False)])
def test_the_failure_policy_setting_is_kopfs_ignore_failures(policy: str, ignore: bool) -> None:
    # What kopf renders from it is read back from the configuration in e2e/test_admission.py.
    hook = settings.Webhook(enabled=True, failure_policy=policy)  # type: ignore[arg-type]
    assert admission.ignore_failures(hook) is ignore


def test_the_default_policy_is_ignore_and_certificates_are_reread_every_minute() -> None:
    hook = settings.Webhook()
    assert hook.failure_policy == "Ignore"
    assert admission.server(hook.model_copy(update={"insecure": True})).file_check_interval == 60

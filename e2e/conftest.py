"""End-to-end fixtures: the real operator (kopf.testing.KopfRunner) against an API server.

Here the API server is kmock's Kubernetes emulator over real HTTP, served from its own
thread (KopfRunner runs kopf in another). ``FixedEmulator`` closes the emulator gaps that
testing-k8s.md lists and that the operator meets: uid/resourceVersion/creationTimestamp/
generation, generateName (kopf's events), and server-side apply creating missing objects.
Still not emulated, so no test pretends they happen: label selectors (our client filters
again), owner-reference garbage collection, schema/CEL validation, admission, controllers.

With ``POLYSERVE_E2E_KUBECONFIG`` pointing at a real cluster (kind/k3d) that has ``crds/``
applied, the ``cluster`` variant of every test runs there too; without it, it skips.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import attrs
import kmock
import pytest
import yaml
from kopf.testing import KopfRunner

from polyserve_operator import api, crds, handlers, k8s, settings

T = TypeVar("T")

REAL_CLUSTER_ENV = "POLYSERVE_E2E_KUBECONFIG"
FIELD_MANAGER = "polyserve-e2e"


def pytest_configure(config: pytest.Config) -> None:
    # kmock 0.8's load_bundled() uses importlib.resources.read_binary, deprecated in 3.11;
    # nothing of ours can avoid it, and warnings are errors everywhere else.
    config.addinivalue_line("filterwarnings", "ignore:read_binary is deprecated:DeprecationWarning")


@attrs.frozen
class UnprocessableError(kmock.KubernetesError):
    """What the API server answers when a JSON patch's ``test`` fails (kopf then re-reads)."""

    status: int = 422
    reason: str = "Invalid"
    message: str = "the JSON patch test failed: the object has changed"


class FixedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the gaps closed that a real operator trips over."""

    _versions = itertools.count(1)

    def _key(self, request: kmock.Request) -> Any:
        return (request.resource, request.namespace, request.name)

    async def _handle(self, request: kmock.Request) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, list) and request.name:
            self._json_patch(request, data)
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self._versions))
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                self._stamp(meta)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                key = self._key(request)
                exists = key in self.objects and not self.objects[key].deleted
                is_apply = "apply-patch" in request.headers.get("Content-Type", "")
                if not exists and is_apply:
                    # Server-side apply creates what is missing.
                    meta.setdefault("name", request.name)
                    meta.setdefault("namespace", request.namespace)
                    self._stamp(meta)
                    self.objects[key] = dict(data)
                elif exists and request.subresource is None and "spec" in data:
                    current = self.objects[key]
                    generation = int(current.get("metadata", {}).get("generation") or 1)
                    if data["spec"] != current.get("spec"):
                        generation += 1
                    meta["generation"] = generation
        return await super()._handle(request)

    def _json_patch(self, request: kmock.Request, ops: list[dict[str, Any]]) -> None:
        """Every write gets a new resourceVersion; a failed ``test`` is a 422, not a 500."""
        key = self._key(request)
        if key not in self.objects or self.objects[key].deleted:
            return
        current = self.objects[key].get("metadata", {}).get("resourceVersion")
        for op in ops:
            is_version_test = (
                op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
            )
            if is_version_test and op.get("value") != current:
                raise UnprocessableError()
        ops.append(
            {"op": "add", "path": "/metadata/resourceVersion", "value": str(next(self._versions))}
        )

    @staticmethod
    def _stamp(meta: dict[str, Any]) -> None:
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault(
            "creationTimestamp",
            datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )


def _register(emulator: kmock.KubernetesEmulator) -> None:
    emulator.resources.load_bundled()
    for document in crds.definitions().values():
        names = document["spec"]["names"]
        emulator.resources[f"{api.GROUP}/{api.VERSION}/{names['plural']}"] = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names["singular"],
            namespaced=True,
            shortnames=set(names["shortNames"]),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"},
        )


class EmulatorThread:
    """Serves a FixedEmulator on 127.0.0.1 (port 0) from a thread of its own."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="kmock-emulator", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = FixedEmulator()
        _register(emulator)
        async with emulator, kmock.Server(emulator) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("the emulator did not start in 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def write_kubeconfig(url: str, folder: Path) -> Path:
    path = folder / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": url}}],
                "users": [{"name": "emu", "user": {"token": "emulated"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
                "current-context": "emu",
            }
        )
    )
    return path


@dataclass
class Cluster:
    """An API server the operator runs against, and a client for the test's own calls."""

    kubeconfig: Path
    client: k8s.Client
    emulated: bool

    def require_emulated(self, why: str) -> None:
        if not self.emulated:
            pytest.skip(f"emulator only: {why}")


@pytest.fixture(scope="session", params=["emulator", "cluster"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    if request.param == "cluster":
        real = os.environ.get(REAL_CLUSTER_ENV)
        if not real:
            pytest.skip(f"no real cluster: set {REAL_CLUSTER_ENV} to a kubeconfig (kind/k3d)")
        path = Path(real)
        client = k8s.connect(path, FIELD_MANAGER)
        yield Cluster(path, client, emulated=False)
        client.close()
        return
    with EmulatorThread() as emulator:
        path = write_kubeconfig(emulator.url, tmp_path_factory.mktemp("kube"))
        client = k8s.connect(path, FIELD_MANAGER)
        yield Cluster(path, client, emulated=True)
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


def operator_settings(kubeconfig: Path, webhook_port: int) -> settings.Settings:
    """Fast status refreshes; the webhook over plain HTTP on 127.0.0.1, unmanaged (the
    emulator runs no admission chain: tests post AdmissionReviews to it themselves)."""
    return settings.Settings(
        kubeconfig=kubeconfig,
        status_interval_seconds=0.5,
        webhook=settings.Webhook(
            enabled=True,
            addr="127.0.0.1",
            port=webhook_port,
            host="127.0.0.1",
            insecure=True,
            managed_configuration=None,
        ),
    )


@dataclass
class Operator:
    runner: KopfRunner
    webhook_url: str


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[Operator]:
    """The real operator, running for the whole session (one per API server)."""
    port = free_port()
    cfg = operator_settings(cluster.kubeconfig, port)
    client = k8s.connect(cluster.kubeconfig, cfg.field_manager)
    registry = handlers.build(cfg, client)
    with KopfRunner(["run", "-A", "--standalone"], registry=registry, timeout=30) as runner:
        # The runner is ready before kopf's webhook server listens: wait for the port.
        wait_for("the webhook server", lambda: _listening(port))
        yield Operator(runner, f"http://127.0.0.1:{port}")
    client.close()
    assert runner.exit_code == 0, runner.output


@pytest.fixture()
def namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace of the test's own (created on a real cluster; the emulator needs none)."""
    name = "e2e-" + uuid.uuid4().hex[:8]
    if not cluster.emulated:
        cluster.client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    _delete_resources(cluster, name)
    if not cluster.emulated:
        cluster.client.delete("v1", "Namespace", None, name)


def _delete_resources(cluster: Cluster, namespace: str) -> None:
    """Each test leaves no resource behind (kopf's finalizers released), so the operator's
    timers stay few and none is mid-request when kopf stops: a sync timer still running
    then is orphaned by kopf and leaks its connection."""
    kinds = ("InferenceEnsemble", "InferenceModel")
    for kind in kinds:
        for item in cluster.client.list(api.API_VERSION, kind, namespace, {}):
            cluster.client.delete(api.API_VERSION, kind, namespace, item["metadata"]["name"])
    wait_for(
        f"the resources of {namespace} to go",
        lambda: not any(cluster.client.list(api.API_VERSION, k, namespace, {}) for k in kinds),
        timeout=30,
    )


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}")


EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "examples"


def example(name: str, namespace: str) -> list[dict[str, Any]]:
    """The documents of an example, moved into ``namespace``."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return docs

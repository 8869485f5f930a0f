"""Helpers of the API server's tests: the server in a thread of its own (for blocking
clients: kubectl, the kubernetes client, kopf), a kubectl runner, and objects to create."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from polyserve_sandbox.apiserver import http
from polyserve_sandbox.apiserver import store as apistore

T = TypeVar("T")
Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"


class ServerThread:
    """A Store and its ApiServer on an event loop in a thread of its own."""

    def __init__(self, *, bookmark_interval: float = 30.0) -> None:
        self.store = apistore.Store()
        self.url = ""
        self._bookmark_interval = bookmark_interval
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: http.ApiServer | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="apiserver", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = http.ApiServer(self.store, bookmark_interval=self._bookmark_interval)
        self.url = await self._server.start()
        self._ready.set()
        await self._stop.wait()
        await self._server.stop()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout=10) or self._failure is not None:
            raise RuntimeError(f"the API server did not start: {self._failure!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def call(self, fn: Callable[[apistore.Store], T]) -> T:
        """Run ``fn(store)`` on the server's loop (the store's own thread) and return its result."""
        assert self._loop is not None
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn(self.store))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)


def kubectl(
    kubeconfig: Path, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl against the kubeconfig's server (its caches under its folder)."""
    folder = kubeconfig.parent
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBECACHEDIR": str(folder / "cache"),
        "HOME": str(folder),
    }
    done = subprocess.run(
        [str(KUBECTL), *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=60,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}")


def pod(name: str, namespace: str = "default", **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1"}], **spec},
    }


def configmap(name: str, namespace: str = "default", **fields: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        **fields,
    }


def deployment(name: str, namespace: str = "default", replicas: int = 1) -> Obj:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "busybox:1"}]},
            },
        },
    }


def model(name: str, namespace: str = "default", **spec: Any) -> Obj:
    """An InferenceModel with a realistic spec (the project's CRDs must be registered)."""
    return {
        "apiVersion": "polyserve.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": f"s3://models/{name}/model.onnx"},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": 1,
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}],
                "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [1000]}],
            },
            **spec,
        },
    }

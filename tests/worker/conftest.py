"""Fixtures: a real worker on 127.0.0.1 port 0, in its own thread and event loop.

The worker runs on a background loop so tests can drive it with tritonclient's ordinary
(blocking) clients, exactly as users do.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from polyserve_worker import server
from polyserve_worker.backends import base
from polyserve_worker.settings import WorkerSettings


@dataclass
class RunningWorker:
    worker: server.Worker
    loop: asyncio.AbstractEventLoop

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.worker.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.worker.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.worker.metrics_port}/metrics"

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the worker's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class WorkerThread:
    def __init__(
        self,
        settings: WorkerSettings,
        extra_backends: Mapping[str, base.Backend] | None = None,
    ) -> None:
        self.settings = settings
        self.extra_backends = extra_backends
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="worker-loop", daemon=True
        )

    def start(self) -> RunningWorker:
        self.thread.start()
        started: Future[server.Worker] = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        self.worker = started.result(60)
        return RunningWorker(self.worker, self.loop)

    async def _start(self) -> server.Worker:
        worker = server.Worker(self.settings, extra_backends=self.extra_backends)
        await worker.start()
        return worker

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.worker.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def settings_for(repo: Path, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "model_repository": repo,
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "metrics_port": 0,
        "exit_timeout_secs": 5,
        # Test clients keep idle keep-alive connections open; waiting the default second for
        # them at every stop would add minutes to the run (drain tests set their own).
        "exit_idle_secs": 0.05,
        # Many repositories here hold broken models on purpose, to show the rest keep
        # serving; exiting on a failed start is tested on its own (test_lifecycle).
        "exit_on_error": False,
    }
    if "POLYSERVE_TEST_HTTP_TRANSPORT" in os.environ:  # the suite runs on either HTTP front
        values["http_transport"] = os.environ["POLYSERVE_TEST_HTTP_TRANSPORT"]
    values.update(overrides)
    return WorkerSettings(**values)


StartWorker = Callable[..., RunningWorker]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``http_fronts`` run once on each HTTP front (--http-transport)."""
    if "http_front" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "http_fronts"
    ):
        metafunc.parametrize("http_front", HTTP_FRONTS)


HTTP_FRONTS = ("aiohttp", "httptools")


@pytest.fixture
def http_front() -> str | None:
    """The HTTP front workers start with: the default unless POLYSERVE_TEST_HTTP_TRANSPORT
    names one (the whole suite runs on either), each in turn for tests marked
    ``http_fronts``."""
    return os.environ.get("POLYSERVE_TEST_HTTP_TRANSPORT")


@pytest.fixture
def start_worker(http_front: str | None) -> Iterator[StartWorker]:
    """Start workers on a repository; every one is stopped at teardown."""
    threads: list[WorkerThread] = []

    def start(
        repo: Path, extra_backends: Mapping[str, base.Backend] | None = None, **overrides: Any
    ) -> RunningWorker:
        if http_front is not None:
            overrides.setdefault("http_transport", http_front)
        thread = WorkerThread(settings_for(repo, **overrides), extra_backends)
        threads.append(thread)
        return thread.start()

    yield start
    for thread in threads:
        thread.stop()


def in_background(call: Callable[[], Any]) -> Future[Any]:
    """Run a blocking client call on its own thread.

    tritonclient.http's ``async_infer`` runs on gevent and sends nothing until the caller
    yields to gevent, so tests that must hold a request in flight while they look at the
    server use a real thread (with its own client) instead.
    """
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="client-call", daemon=True).start()
    return future

"""Assembles one worker process: repository, dataplane, REST, gRPC and metrics servers.

Owns the lifecycle Kubernetes sees: live as soon as the HTTP server answers; ready once the
required models are loaded; on stop, not ready at once, new requests refused, requests in
flight drained within ``exit_timeout_secs``, then the servers close. Every long-lived task is
named and supervised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from polyserve_worker import clock as clocks
from polyserve_worker import dataplane, errors, metrics, repository, shm
from polyserve_worker.backends import base
from polyserve_worker.settings import WorkerSettings
from polyserve_worker.transport import grpc as grpc_transport
from polyserve_worker.transport import rest

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """A model failed to load at start and ``exit_on_error`` is set: the process exits 1."""


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        clock: clocks.Clock | None = None,
        extra_backends: Mapping[str, base.Backend] | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository.Repository(settings.model_repository, clock, extra_backends)
        self.core = dataplane.DataPlane(
            self.repository,
            strict_readiness=settings.strict_readiness,
            control_mode=settings.model_control_mode,
            shared_memory=shm.Registry(settings.allow_client_shm),
        )
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        self._runners: list[web.AppRunner] = []
        self._grpc: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Poll mode: each loaded model's files (names, sizes, mtimes) when it last loaded.
        self._fingerprints: dict[str, tuple[Any, ...]] = {}

    async def start(self) -> None:
        """Bind every port, then load the models (live while loading, ready after)."""
        s = self.settings
        http = rest.RestServer(self.core, s.http_max_input_size)
        self.http_port = await self._serve(http.app, s.http_port)
        self._grpc, self.grpc_port = grpc_transport.create_server(
            self.core, f"{s.host}:{s.grpc_port}", s.http_max_input_size
        )
        await self._grpc.start()
        registry = metrics.registry_for(lambda: [v.stats for v in self.repository.loaded()])

        async def scrape(request: web.Request) -> web.Response:
            body = await asyncio.to_thread(metrics.exposition, registry)
            return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", scrape)
        self.metrics_port = await self._serve(metrics_app, s.metrics_port)
        logger.info(
            "serving HTTP on %d, gRPC on %d, metrics on %d",
            self.http_port,
            self.grpc_port,
            self.metrics_port,
        )
        await self._load_initial()
        self.core.started = True
        if s.model_control_mode == "poll":
            self._spawn(self._poll(), "repository-poll")

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self.settings.exit_timeout_secs
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, port, reuse_port=False)
        await site.start()
        self._runners.append(runner)
        server = site._server  # the bound socket tells the real port when port is 0
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _load_initial(self) -> None:
        s = self.settings
        names = self.repository.scan()
        if s.model_control_mode == "explicit":
            names = names if "*" in s.load_model else list(s.load_model)
        failures: list[str] = []
        for name in names:
            failure = await self._load_from_disk(name)
            if failure:
                failures.append(failure)
        self.core.required = set(s.required_model or names)
        if failures and s.exit_on_error:
            raise StartupError("; ".join(failures))

    async def _load_from_disk(self, name: str) -> str | None:
        """Load one model; in poll mode remember what its files looked like when it loaded.

        A failure is recorded as the model's UNAVAILABLE reason and logged; the reason is
        returned too."""
        polling = self.settings.model_control_mode == "poll"
        before = self.repository.fingerprint(name) if polling else ()
        try:
            await self.repository.load(name)
        except errors.PolyserveError as exc:
            return f"model '{name}' failed to load: {exc}"
        if polling:
            self._fingerprints[name] = before
        return None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            on_disk = set(self.repository.scan())
            entries = self.repository.entries()
            for name in sorted(on_disk):
                if self._fingerprints.get(name) != self.repository.fingerprint(name):
                    await self._load_from_disk(name)
            for name, entry in entries.items():
                if name not in on_disk and entry.versions:
                    self._fingerprints.pop(name, None)
                    await self.repository.unload(name)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.error("task %s died", name, exc_info=t.exception())

        task.add_done_callback(finished)

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests, close servers and models."""
        self.core.accepting = False
        timeout = self.settings.exit_timeout_secs
        deadline = asyncio.get_running_loop().time() + timeout
        while any(v.in_flight for v in self.repository.loaded()):
            if asyncio.get_running_loop().time() > deadline:
                logger.warning("exit timeout reached with requests still in flight")
                break
            await asyncio.sleep(0.01)
        for task in list(self._tasks):
            task.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=min(timeout, 5.0))
        for runner in self._runners:
            await runner.cleanup()
        await self.repository.close()
        logger.info("worker stopped")

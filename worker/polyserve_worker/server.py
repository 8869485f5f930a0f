"""Assembles one worker process: repository, dataplane, REST, gRPC and metrics servers.

Owns the lifecycle Kubernetes sees: live as soon as the HTTP server answers; ready once the
required models are loaded. Every long-lived task is named and supervised.

On stop (SIGTERM) everything happens within one deadline, ``exit_timeout_secs``:

1. Readiness turns false at once, and request mirroring stops (its queued copies are
   dropped, never waited for). The HTTP and gRPC listeners close, so new connections go to
   other replicas; gRPC's ``stop(grace)`` sends GOAWAY (after ``quiesce`` has let every
   call already sent reach the servicer), and calls after it get UNAVAILABLE, which clients
   retry elsewhere.
2. Requests that still arrive on open connections are served: their clients could not have
   known. Each HTTP answer says ``Connection: close``. The drain lasts until no request has
   been in progress for ``exit_idle_secs`` and no open connection has unread bytes, so an
   idle keep-alive connection is never closed under a request its client already sent.
3. Near the deadline, whatever is still queued or running is answered 503/UNAVAILABLE and
   open gRPC streams end with UNAVAILABLE; then the servers close and the models unload.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import json
import logging
import ssl
import termios
from collections.abc import Mapping, MutableSequence
from typing import Any

import aiohttp
from aiohttp import web

from polyserve_worker import clock as clocks
from polyserve_worker import dataplane, errors, metrics, mirroring, repository, shm, tensors, tls
from polyserve_worker.backends import base
from polyserve_worker.settings import WorkerSettings
from polyserve_worker.transport import grpc as grpc_transport
from polyserve_worker.transport import http1, rest

logger = logging.getLogger(__name__)

LINGER_SECS = 1.0

#: On the metrics port with ``--workers N``: one process's own statistics, which the others
#: add to theirs (the statistics extension answers for the whole pod).
OWN_STATISTICS = "/polyserve/statistics/own"


class StartupError(Exception):
    """A model failed to load at start and ``exit_on_error`` is set: the process exits 1."""


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        clock: clocks.Clock | None = None,
        extra_backends: Mapping[str, base.Backend] | None = None,
        rank: int = 0,
        metrics_ports: MutableSequence[int] | None = None,
    ) -> None:
        self.settings = settings
        #: Which of ``settings.workers`` processes this is; only the first serves metrics
        #: on the metrics port, with every process's samples (the others serve theirs on
        #: 127.0.0.1 at a free port, written at their rank in ``metrics_ports``, which the
        #: processes share).
        self.rank = rank
        self.metrics_ports = metrics_ports
        self.repository = repository.Repository(
            settings.model_repository,
            clock,
            extra_backends,
            max_instances=settings.max_model_instances,
        )
        self.mirror = mirroring.Mirror(own_certificate=settings.tls_cert_file)
        self.core = dataplane.DataPlane(
            self.repository,
            strict_readiness=settings.strict_readiness,
            control_mode=settings.model_control_mode,
            shared_memory=shm.Registry(
                settings.allow_client_shm,
                max_regions=settings.max_shm_regions,
                max_bytes=settings.max_shm_bytes,
            ),
            limits=tensors.Limits(settings.max_request_elements, settings.max_request_bytes),
            mirror=self.mirror,
        )
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        # The drain runs in real time whatever clock the batchers are given.
        self._time = clocks.MonotonicClock()
        self._http: tuple[web.AppRunner, web.TCPSite] | None = None
        self._http1: http1.HttpFront | None = None  # --http-transport httptools
        self._metrics: tuple[web.AppRunner, web.TCPSite] | None = None
        self._grpc: grpc_transport.Front | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Poll mode: each loaded model's files (names, sizes, mtimes) when it last loaded.
        self._fingerprints: dict[str, tuple[Any, ...]] = {}

    async def start(self) -> None:
        """Bind every port, then load the models (live while loading, ready after)."""
        s = self.settings
        certificates = None
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            certificates = tls.Certificates(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        http = rest.RestServer(self.core, s.http_max_input_size, s.http_body_timeout_secs)
        ssl_context = certificates.ssl_context() if certificates is not None else None
        if s.http_transport == "httptools":
            self._http1 = http1.HttpFront(http, s.http_idle_timeout_secs, LINGER_SECS)
            self.http_port = await self._http1.start(
                s.host, s.http_port, ssl_context, reuse_port=s.workers > 1 and s.http_port != 0
            )
        else:
            self._http = await self._serve(
                http.app, s.http_port, s.http_idle_timeout_secs, ssl_context
            )
            self.http_port = _port(self._http[1], s.http_port)
        self._grpc = grpc_transport.create_front(
            self.core,
            f"{s.host}:{s.grpc_port}",
            s.http_max_input_size,
            s.max_stream_in_flight,
            s.grpc_transport,
            reuse_port=s.workers > 1,
            certificates=certificates,
        )
        self.grpc_port = self._grpc.port
        await self._grpc.start()
        registry = metrics.registry_for(
            lambda: [v.stats for v in self.repository.loaded()], self.mirror.tallies
        )

        gathering = self.rank == 0 and self.metrics_ports is not None and s.workers > 1

        async def scrape(request: web.Request) -> web.Response:
            body = await asyncio.to_thread(metrics.exposition, registry)
            if gathering:
                body = await self._gathered(body)
            return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

        async def own_statistics(request: web.Request) -> web.Response:
            """This process's statistics alone, for the other ``--workers`` processes."""
            try:
                found = self.core.statistics(
                    request.query.get("name", ""), request.query.get("version", "")
                )
            except errors.ClientError as exc:  # not served here (yet): nothing to add
                return web.json_response({"error": str(exc)}, status=404)
            return web.json_response({"model_stats": [v.to_dict() for v in found]})

        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", scrape)
        if s.workers > 1:
            metrics_app.router.add_get(OWN_STATISTICS, own_statistics)
            self.core.peer_statistics = self._peer_statistics
        metrics_port = s.metrics_port if self.rank == 0 else 0
        self._metrics = await self._serve(
            metrics_app,
            metrics_port,
            s.http_idle_timeout_secs,
            host=s.host if self.rank == 0 else "127.0.0.1",
        )
        self.metrics_port = _port(self._metrics[1], metrics_port)
        if self.metrics_ports is not None:
            self.metrics_ports[self.rank] = self.metrics_port
        logger.info(
            "serving HTTP%s on %d (%s), gRPC on %d (%s%s), metrics on %d",
            "S" if certificates is not None else "",
            self.http_port,
            s.http_transport,
            self.grpc_port,
            self._grpc.name,
            ", TLS" if certificates is not None else "",
            self.metrics_port,
        )
        if s.mirror_config is not None:
            self._spawn(self.mirror.watch(s.mirror_config), "mirror-config")
        await self._load_initial()
        self.core.started = True
        if s.model_control_mode == "poll":
            self._spawn(self._poll(), "repository-poll")

    @property
    def grpc_transport(self) -> str:
        """What serves the gRPC port (``native`` or ``aio``), once started."""
        return self._grpc.name if self._grpc is not None else ""

    async def _from_peers(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> list[tuple[str, bytes]]:
        """``GET path`` on the other ``--workers`` processes' metrics ports: (rank, body) of
        each that answers 200 within a second (one starting, stopping, or without the thing
        asked for is left out)."""
        peers = [
            (str(rank), port)
            for rank, port in enumerate(self.metrics_ports or ())
            if rank != self.rank and port
        ]

        async def fetch(session: aiohttp.ClientSession, port: int) -> bytes | None:
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}", params=params) as got:
                    return await got.read() if got.status == 200 else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.debug("worker process at port %d: %s unread: %s", port, path, exc)
                return None

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            found = await asyncio.gather(*(fetch(session, port) for _, port in peers))
        return [(rank, body) for (rank, _), body in zip(peers, found, strict=True) if body]

    async def _peer_statistics(self, name: str, version: str) -> list[list[dict[str, Any]]]:
        """The other processes' own statistics of (name, version)."""
        answers = await self._from_peers(OWN_STATISTICS, {"name": name, "version": version})
        return [json.loads(body)["model_stats"] for _, body in answers]

    async def _gathered(self, own: bytes) -> bytes:
        """This process's exposition and the other ``--workers`` processes' as one (each
        sample labelled with its process): a scrape of the pod counts all of its traffic."""
        return metrics.merged([(str(self.rank), own), *await self._from_peers("/metrics")])

    async def _serve(
        self,
        app: web.Application,
        port: int,
        idle_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        host: str | None = None,
    ) -> tuple[web.AppRunner, web.TCPSite]:
        # aiohttp's keep-alive timeout also bounds the wait for a complete request header.
        # After an early answer (413, 408) the unread rest of a body is read and dropped for
        # at most LINGER_SECS, so the answer is not lost to a reset, and no longer: a slow
        # client must not hold the connection. At shutdown the runner waits only briefly for
        # handlers: the drain comes first.
        runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=idle_timeout,
            lingering_time=LINGER_SECS,
            shutdown_timeout=self._tail(),
        )
        await runner.setup()
        # With --workers, the processes share the HTTP port; the kernel spreads connections.
        shared = self.settings.workers > 1 and port != 0
        site = web.TCPSite(
            runner,
            host or self.settings.host,
            port,
            reuse_port=shared,
            ssl_context=ssl_context,
        )
        await site.start()
        return runner, site

    def _tail(self) -> float:
        """What the end of a stop keeps for answering what is left and closing."""
        return min(1.0, self.settings.exit_timeout_secs / 5)

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
        """Drain and stop within ``exit_timeout_secs`` (see the module docstring)."""
        if self.core.draining:
            return  # stopping already
        timeout = self.settings.exit_timeout_secs
        deadline = self._time.now() + timeout
        self.core.draining = True
        self.mirror.halt()  # copies are dropped, never waited for
        if self._http is not None:
            await self._http[1].stop()  # no new connections; the open ones are served
        if self._http1 is not None:
            self._http1.stop_accepting()
        grpc_stopped = None
        if self._grpc is not None:
            grpc_stopped = await self._grpc.stop(timeout)
        if self.core.started:  # a failed start has no clients to wait for
            await self._drain(deadline - self._tail())
        self.core.stopping.set()
        self.repository.abort("the server is shutting down; retry on another replica")
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._within(self._http[0].cleanup(), deadline)
        if self._http1 is not None:
            await self._within(self._http1.close(self._tail()), deadline)
        if grpc_stopped is not None:
            await self._within(asyncio.shield(grpc_stopped), deadline)
        if self._metrics is not None:
            await self._within(self._metrics[0].cleanup(), deadline)
        await self._within(self.mirror.close(), deadline)
        await self.repository.close(max(0.0, deadline - self._time.now()))
        logger.info("worker stopped")

    async def _drain(self, until: float) -> None:
        """Serve what arrives on open connections until they have gone quiet, or ``until``."""
        idle = self.settings.exit_idle_secs
        started = self._time.now()
        while self._time.now() < until:
            quiet = min(self.core.activity.quiet_for(), self._time.now() - started)
            if quiet >= idle and not self._unread_requests():
                return
            await asyncio.sleep(min(0.01, max(0.0, until - self._time.now())))
        logger.warning("exit deadline near with requests still arriving; answering the rest 503")

    def _unread_requests(self) -> bool:
        """Whether any open HTTP connection has bytes the server has not read yet: a request
        its client has sent, which closing the connection now would drop."""
        server = self._http[0].server if self._http is not None else None
        transports = [c.transport for c in server.connections] if server is not None else []
        if self._http1 is not None:
            transports = [*self._http1.transports()]
        for transport in transports:
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None and _unread_bytes(sock.fileno()):
                return True
        return False

    async def _within(self, step: Any, deadline: float) -> None:
        """Await a shutdown step, giving up at the deadline (the process exits anyway)."""
        try:
            await asyncio.wait_for(step, max(0.0, deadline - self._time.now()))
        except TimeoutError:
            logger.warning("a shutdown step was still running at the exit deadline")


def _port(site: web.TCPSite, asked: int) -> int:
    server = site._server  # the bound socket tells the real port when port is 0
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else asked


def _unread_bytes(fd: int) -> int:
    buffer = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buffer, True)
    except OSError:
        return 0
    return buffer[0]

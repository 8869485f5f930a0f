"""The API server over HTTP: ``ApiServer`` (aiohttp on 127.0.0.1, port 0 by default) and a
kubeconfig that points kubectl, helm, kopf and the Python client at it. What each request
does is ``handling``'s.

    store = apistore.Store()
    server = http.ApiServer(store)
    url = await server.start()            # http://127.0.0.1:PORT
    http.write_kubeconfig(url, path)      # any token is accepted
    ...
    await server.stop()

``faults`` sets or replaces the fault plan (``faults.FaultPlan``; None: no faults),
``requests`` holds the request counts that ``/metrics`` serves, and ``audit_log`` (a path;
None: none) writes every request to an audit log (``auditing``).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import yaml
from aiohttp import web

from polyserve_sandbox.apiserver import auditing, handling, metrics
from polyserve_sandbox.apiserver import faults as apifaults
from polyserve_sandbox.apiserver.store import Store

CONTEXT = "polyserve-sandbox"


class ApiServer:
    """The store over HTTP. Watches end when it stops; the store lives on."""

    def __init__(
        self,
        store: Store,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bookmark_interval: float = 30.0,
        faults: apifaults.FaultPlan | None = None,
        audit_log: Path | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.url = ""
        self.audit = auditing.AuditLog(audit_log) if audit_log is not None else None
        self._handler = handling.Handler(
            store, bookmark_interval=bookmark_interval, fault_plan=faults, audit=self.audit
        )
        self._runner: web.AppRunner | None = None

    @property
    def faults(self) -> apifaults.Faults:
        """The fault plan at work, and what it injected."""
        return self._handler.faults

    @faults.setter
    def faults(self, plan: apifaults.FaultPlan | None) -> None:
        self._handler.faults = apifaults.Faults(plan)

    @property
    def requests(self) -> metrics.Requests:
        """Every request served so far, counted as ``/metrics`` shows them."""
        return self._handler.requests

    async def start(self) -> str:
        """Listen; returns the URL (``http://host:port``, the port chosen when 0)."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handler.handle)
        # Cancel a handler whose client went (a watch waiting for changes holds nothing else).
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        # Bind the socket here, so the port chosen for 0 is known without aiohttp internals.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        """End the open watches (their streams close cleanly), then stop listening."""
        self._handler.closing.set()
        self.store.log.wake()
        if self._handler.watches:
            await asyncio.wait(list(self._handler.watches), timeout=5)
        for task in list(self._handler.watches):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.audit is not None:
            self.audit.close()


def kubeconfig(
    url: str, *, namespace: str = "default", token: str = "sandbox"
) -> dict[str, object]:
    """A kubeconfig for ``url``. Any token is accepted, and taken as the user's name (what
    the audit log says): ``system:serviceaccount:NS:NAME`` acts as that account would."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": {"token": token}}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT,
    }


def write_kubeconfig(
    url: str, path: Path, *, namespace: str = "default", token: str = "sandbox"
) -> Path:
    """Write a kubeconfig for ``url`` at ``path`` (its folder is created); returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = kubeconfig(url, namespace=namespace, token=token)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path

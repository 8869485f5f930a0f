"""Services: a cluster IP per Service, Endpoints from ready pods, and a proxy per port.

Each Service gets a ``spec.clusterIP`` from the sandbox's loopback range when it is created
(an admission hook, as the real API server allocates it), and a TCP proxy on
``clusterIP:port`` for each of its ports, so clients use the Service's own ports (8000, 8001,
8002 for a worker). The proxy balances connections, like kube-proxy: each new connection goes
to the next ready endpoint (round robin); a connection stays with its pod for its life, so
HTTP keep-alive and gRPC channels keep their backend. Endpoints are the pods the selector
matches that are Ready and not terminating, written as an ``Endpoints`` object too, so
``kubectl get endpoints`` and ``describe service`` show them.

Routing is a seam: a ``Router`` picks the backend of each connection from the ready
endpoints; the default routes round robin. Weighted splits per request (a canary's HTTPRoute
and GRPCRoute weights) are the Gateways' work (``polyserve_sandbox.gateways``), which read
``endpoints()`` here for every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from polyserve_sandbox.apiserver import store as apistore

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Endpoint:
    """One ready pod behind a Service port."""

    pod: str
    ip: str
    port: int


class Router(Protocol):
    """Chooses the endpoint of each new connection to a Service port."""

    def choose(self, service: Key, port: str, endpoints: list[Endpoint]) -> Endpoint | None: ...


class RoundRobin:
    """kube-proxy's behaviour for our purposes: spread connections over ready endpoints."""

    def __init__(self) -> None:
        self._turns: dict[tuple[Key, str], itertools.count[int]] = {}

    def choose(self, service: Key, port: str, endpoints: list[Endpoint]) -> Endpoint | None:
        if not endpoints:
            return None
        turn = next(self._turns.setdefault((service, port), itertools.count()))
        return endpoints[turn % len(endpoints)]


class Addresses:
    """Hands out loopback addresses from a block, never one still in use."""

    def __init__(self, network: str) -> None:
        self._hosts = ipaddress.ip_network(network).hosts()
        self._free: list[str] = []
        self._used: set[str] = set()

    def take(self, wanted: str | None = None) -> str:
        if wanted:
            self._used.add(wanted)
            return wanted
        address = self._free.pop() if self._free else str(next(self._hosts))
        self._used.add(address)
        return address

    def give_back(self, address: str) -> None:
        if address in self._used:
            self._used.discard(address)
            self._free.append(address)


def _target_port(service_port: Obj, pod: Obj) -> int | None:
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int) or str(target).isdigit():
        return int(str(target))
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


def _ready(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return ready and bool(status.get("podIP"))


@dataclass
class _Proxy:
    server: asyncio.base_events.Server
    port: Obj
    connections: set[asyncio.Task[None]] = field(default_factory=set)


class Services:
    """Cluster IPs, Endpoints and proxies for every Service in the store."""

    def __init__(self, store: apistore.Store, network: str, router: Router | None = None) -> None:
        self.store = store
        self.addresses = Addresses(network)
        self.router: Router = router or RoundRobin()
        self._endpoints: dict[Key, dict[str, list[Endpoint]]] = {}
        self._proxies: dict[tuple[Key, str], _Proxy] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        # A change resolves only the Services it can concern: the pods' labels and the
        # Services' selectors are indexed by (namespace, label, value) from the store's
        # changes, so neither a pod's change nor a Service's resolution reads every pod.
        self._dirty: set[Key] = set()
        self._selectors: dict[Key, dict[str, str]] = {}
        self._selecting: dict[tuple[str, str, str], set[Key]] = {}  # a selector's first pair
        self._labels: dict[Key, dict[str, str]] = {}  # pod -> its labels
        self._labelled: dict[tuple[str, str, str], set[str]] = {}  # (ns, label, value) -> pods

    # Admission: the API server allocates a Service's cluster IP at creation.
    def admit(self, operation: str, new: Obj, old: Obj | None) -> None:
        spec = new.setdefault("spec", {})
        if operation == "CREATE":
            if spec.get("clusterIP") != "None" and spec.get("type", "ClusterIP") != "ExternalName":
                spec["clusterIP"] = self.addresses.take(spec.get("clusterIP") or None)
                spec["clusterIPs"] = [spec["clusterIP"]]
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        elif operation == "UPDATE" and old is not None:
            old_spec = old.get("spec") or {}
            # The cluster IP is immutable; an apply that omits it keeps it.
            if old_spec.get("clusterIP"):
                spec["clusterIP"] = old_spec["clusterIP"]
                spec["clusterIPs"] = old_spec.get("clusterIPs") or [old_spec["clusterIP"]]

    def start(self) -> None:
        self._unsubscribe = self.store.listen(
            self._changed, kinds=[("v1", "Service"), ("v1", "Pod")], shared=True
        )
        for pod in self.store.list("v1", "Pod"):
            self._index_pod(pod, gone=False)
        for service in self.store.list("v1", "Service"):
            self._index_service(service, gone=False)
        self._task = asyncio.create_task(self._run(), name="sandbox-services")
        self._wake.set()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for key in list(self._proxies):
            await self._close(key)

    def _changed(self, event: apistore.Event) -> None:
        gone = event.type == "DELETED"
        if event.object.get("kind") == "Service":
            if gone:
                address = (event.object.get("spec") or {}).get("clusterIP")
                if address and address != "None":
                    self.addresses.give_back(address)
            self._index_service(event.object, gone=gone)
        else:
            self._index_pod(event.object, gone=gone)
            for pod in (event.old, event.object):
                if pod is not None:
                    self._dirty.update(self._selecting_pod(pod))
        self._wake.set()

    def _index_service(self, service: Obj, *, gone: bool) -> None:
        meta = service["metadata"]
        key = (meta.get("namespace", "default"), meta["name"])
        self._dirty.add(key)
        before = self._selectors.pop(key, None)
        if before:
            first = (key[0], *min(before.items()))
            self._selecting.get(first, set()).discard(key)
        selector = dict((service.get("spec") or {}).get("selector") or {})
        if selector and not gone:
            self._selectors[key] = selector
            self._selecting.setdefault((key[0], *min(selector.items())), set()).add(key)

    def _index_pod(self, pod: Obj, *, gone: bool) -> None:
        meta = pod["metadata"]
        key = (meta.get("namespace", "default"), meta["name"])
        for label, value in self._labels.pop(key, {}).items():
            self._labelled.get((key[0], label, value), set()).discard(key[1])
        if gone:
            return
        labels = dict(meta.get("labels") or {})
        self._labels[key] = labels
        for label, value in labels.items():
            self._labelled.setdefault((key[0], label, value), set()).add(key[1])

    def _selecting_pod(self, pod: Obj) -> set[Key]:
        """The Services whose selector matches the pod's labels."""
        namespace = pod["metadata"].get("namespace", "default")
        labels = pod["metadata"].get("labels") or {}
        found = set()
        for label, value in labels.items():
            for key in self._selecting.get((namespace, label, value), ()):
                selector = self._selectors.get(key) or {}
                if all(labels.get(k) == v for k, v in selector.items()):
                    found.add(key)
        return found

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except Exception:
                logger.exception("syncing services failed; retrying on the next change")

    def endpoints(self, namespace: str, name: str) -> Mapping[str, list[Endpoint]]:
        """The ready endpoints of each port of a Service, by port name (or number)."""
        return self._endpoints.get((namespace, name), {})

    async def sync(self) -> None:
        """Resolve the Services a change since the last sync can concern."""
        dirty, self._dirty = self._dirty, set()
        for key in sorted(dirty):
            service = self.store.try_get("v1", "Service", *key)
            if service is None:
                for proxy in [k for k in self._proxies if k[0] == key]:
                    await self._close(proxy)
                self._endpoints.pop(key, None)
                continue
            self._endpoints[key] = self._resolve(service)
            self._write_endpoints(service, self._endpoints[key])
            await self._serve(key, service)

    def _resolve(self, service: Obj) -> dict[str, list[Endpoint]]:
        spec = service.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            return {}
        namespace = service["metadata"]["namespace"]
        candidates = min(
            (self._labelled.get((namespace, k, v), set()) for k, v in selector.items()), key=len
        )
        pods = [
            pod
            for name in sorted(candidates)
            if (pod := self.store.try_get("v1", "Pod", namespace, name)) is not None
            and all((pod["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
            and _ready(pod)
        ]
        found: dict[str, list[Endpoint]] = {}
        for port in spec.get("ports") or []:
            name = str(port.get("name") or port["port"])
            found[name] = [
                Endpoint(p["metadata"]["name"], p["status"]["podIP"], target)
                for p in sorted(pods, key=lambda p: p["metadata"]["name"])
                if (target := _target_port(port, p)) is not None
            ]
        return found

    def _write_endpoints(self, service: Obj, endpoints: dict[str, list[Endpoint]]) -> None:
        meta = service["metadata"]
        subsets = []
        for port in (service.get("spec") or {}).get("ports") or []:
            name = str(port.get("name") or port["port"])
            ready = endpoints.get(name) or []
            if ready:
                subsets.append(
                    {
                        "addresses": [
                            {
                                "ip": e.ip,
                                "targetRef": {
                                    "kind": "Pod",
                                    "name": e.pod,
                                    "namespace": meta["namespace"],
                                },
                            }
                            for e in ready
                        ],
                        "ports": [
                            {"name": port.get("name"), "port": ready[0].port, "protocol": "TCP"}
                        ],
                    }
                )
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "labels": meta.get("labels") or {},
            },
            "subsets": subsets,
        }
        current = self.store.try_get("v1", "Endpoints", meta["namespace"], meta["name"])
        if current is not None and current.get("subsets") == subsets:
            return
        try:
            self.store.patch(
                "v1",
                "Endpoints",
                meta["namespace"],
                meta["name"],
                body,
                patch_type="apply",
                field_manager="endpoint-controller",
                force=True,
            )
        except apistore.ApiError as exc:
            logger.debug("endpoints of %s/%s not written: %s", meta["namespace"], meta["name"], exc)

    async def _serve(self, key: Key, service: Obj) -> None:
        spec = service.get("spec") or {}
        address = spec.get("clusterIP")
        if not address or address == "None":
            return
        wanted = {str(p.get("name") or p["port"]): p for p in spec.get("ports") or []}
        for port_key in [k for k in self._proxies if k[0] == key and k[1] not in wanted]:
            await self._close(port_key)
        for name, port in wanted.items():
            existing = self._proxies.get((key, name))
            if existing is not None and existing.port.get("port") == port.get("port"):
                continue
            if existing is not None:
                await self._close((key, name))
            try:
                server = await asyncio.start_server(
                    functools.partial(self._connect, key, name),
                    host=address,
                    port=int(port["port"]),
                    reuse_address=True,
                )
            except OSError as exc:
                logger.warning(
                    "service %s/%s port %s cannot listen on %s:%s: %s",
                    key[0],
                    key[1],
                    name,
                    address,
                    port["port"],
                    exc,
                )
                continue
            self._proxies[(key, name)] = _Proxy(server, port)

    async def _close(self, key: tuple[Key, str]) -> None:
        proxy = self._proxies.pop(key, None)
        if proxy is None:
            return
        proxy.server.close()
        for task in list(proxy.connections):
            task.cancel()
        with contextlib.suppress(Exception):
            await proxy.server.wait_closed()

    async def _connect(
        self, key: Key, port: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        proxy = self._proxies.get((key, port))
        task = asyncio.current_task()
        if proxy is not None and task is not None:
            proxy.connections.add(task)
        try:
            endpoint = self.router.choose(key, port, list(self.endpoints(*key).get(port, [])))
            if endpoint is None:
                return  # no ready endpoint: refuse, as kube-proxy rejects the connection
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    endpoint.ip, endpoint.port
                )
            except OSError:
                return
            await _pipe(reader, writer, upstream_reader, upstream_writer)
        finally:
            if proxy is not None and task is not None:
                proxy.connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


async def _pipe(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until either side closes; half-closes are passed on."""

    async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            pass

    tasks = [
        asyncio.create_task(copy(client_reader, upstream_writer)),
        asyncio.create_task(copy(upstream_reader, client_writer)),
    ]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # One direction ended: give the other a moment to deliver what is in flight.
        if pending:
            await asyncio.wait(pending, timeout=30)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            upstream_writer.close()

"""The sandbox's Gateway API controller: GatewayClass ``polyserve-sandbox``, its Gateways'
addresses and ports, the routes' tables, and every status, kept current from the store.

Two paces. On every committed change of a kind that matters (GatewayClass, Gateway,
HTTPRoute, GRPCRoute, Service, Namespace, ReferenceGrant) the plan is rebuilt at once, in
the store's listener, and the tables of the ports already served are swapped: a weight
written is the weight of the next request, before the write's answer reaches its client.
Binding new ports, closing old ones (their requests in flight finish first) and writing
statuses happen in a supervised task right after.

Addresses: each Gateway gets one loopback address of its own from the block it is given
(the top quarter of the fleet's network, which Services never use), kept for the Gateway's
life, so every listener's ``address:port`` is free whatever the port. A Gateway may ask for
one with ``spec.addresses`` (``type: IPAddress``, a 127.0.0.0/8 address); any other request
is ``Accepted=False`` (UnsupportedAddress).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from polyserve_sandbox import services
from polyserve_sandbox.apiserver import objects
from polyserve_sandbox.apiserver import store as apistore
from polyserve_sandbox.gateways import attaching, routes, serving, statuses, tables, upstreams
from polyserve_sandbox.gateways import grpc as grpc_proxy

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]

CLASS_NAME = "polyserve-sandbox"
API_VERSION = f"{routes.GROUP}/v1"
MANAGER = "polyserve-sandbox-gateway"
#: Longest a closed port waits for its requests and calls in flight.
CLOSE_GRACE_SECONDS = 30.0
WATCHED = [
    (API_VERSION, "GatewayClass"),
    (API_VERSION, "Gateway"),
    (API_VERSION, routes.HTTP_ROUTE),
    (API_VERSION, routes.GRPC_ROUTE),
    (f"{routes.GROUP}/v1beta1", "ReferenceGrant"),
    ("v1", "Service"),
    ("v1", "Namespace"),
]


def gateway_class() -> Obj:
    """The sandbox's GatewayClass, as the fleet registers it."""
    return {
        "apiVersion": API_VERSION,
        "kind": "GatewayClass",
        "metadata": {"name": CLASS_NAME},
        "spec": {
            "controllerName": attaching.CONTROLLER,
            "description": "Gateways of the polyserve sandbox: loopback addresses, weighted "
            "HTTPRoute and GRPCRoute backends per request",
        },
    }


class Gateways:
    """Gateways, routes and their proxies for every GatewayClass of ours in the store."""

    def __init__(
        self,
        store: apistore.Store,
        services_: services.Services,
        network: str,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.store = store
        self.addresses = services.Addresses(network)
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._picker = upstreams.Upstreams(services_, rng)
        self._channels = grpc_proxy.Channels()
        self._session: aiohttp.ClientSession | None = None
        self._assigned: dict[str, str] = {}  # Gateway uid -> address
        self._servers: dict[tuple[str, int], serving.PortServer] = {}
        self._bindings: dict[Any, str | None] = {}
        self._plan = attaching.Plan()
        self._classes: list[Obj] = []
        self._routes = 0  # how many routes the last plan saw
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Register the GatewayClass (Accepted at once) and start serving Gateways."""
        if self.store.try_get(API_VERSION, "GatewayClass", None, CLASS_NAME) is None:
            self.store.create(gateway_class(), field_manager=MANAGER)
        self._unsubscribe = self.store.listen(self._changed, kinds=WATCHED, shared=True)
        self._session = serving.session()
        self._replan()
        self._write_statuses()
        self._task = asyncio.create_task(self._run(), name="sandbox-gateways")
        self._wake.set()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for key in list(self._servers):
            self._close(key, grace=1.0)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._channels.close()
        if self._session is not None:
            await self._session.close()

    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the gateways are not started"
        return self._session

    # -- the plan ------------------------------------------------------------------------

    def _changed(self, event: apistore.Event) -> None:
        if event.object.get("kind") == "Service" and not self._routes:
            return  # Services matter only as routes' backends: no route, nothing to plan
        self._replan()
        self._wake.set()

    def _replan(self) -> None:
        self._classes = [
            c
            for c in self.store.list(API_VERSION, "GatewayClass")
            if (c.get("spec") or {}).get("controllerName") == attaching.CONTROLLER
        ]
        names = {c["metadata"]["name"] for c in self._classes}
        gateways = [
            g
            for g in self.store.list(API_VERSION, "Gateway")
            if (g.get("spec") or {}).get("gatewayClassName") in names
        ]
        world = attaching.World(
            gateways=gateways,
            routes=[
                *self.store.list(API_VERSION, routes.HTTP_ROUTE),
                *self.store.list(API_VERSION, routes.GRPC_ROUTE),
            ],
            services={
                (s["metadata"]["namespace"], s["metadata"]["name"]): s
                for s in self.store.list("v1", "Service")
            },
            namespaces={
                n["metadata"]["name"]: n["metadata"].get("labels") or {}
                for n in self.store.list("v1", "Namespace")
            },
            grants=self.store.list(f"{routes.GROUP}/v1beta1", "ReferenceGrant"),
        )
        self._routes = len(world.routes)
        addresses, problems = self._assign(gateways)
        plan = attaching.plan(world, addresses, self._bindings)
        for key, problem in problems.items():
            plan.gateways[key].conditions = [
                ("Accepted", "False", "UnsupportedAddress", problem),
                ("Programmed", "False", "AddressNotUsable", problem),
            ]
        self._plan = plan
        for port, server in self._servers.items():
            server.table = plan.tables.get(port) or tables.PortTable()

    def _assign(self, gateways: list[Obj]) -> tuple[dict[Key, str | None], dict[Key, str]]:
        """Each Gateway's address (kept for its life) and why one could not be given."""
        addresses: dict[Key, str | None] = {}
        problems: dict[Key, str] = {}
        live = set()
        for gateway in gateways:
            meta = gateway["metadata"]
            key, uid = (meta["namespace"], meta["name"]), str(meta.get("uid"))
            live.add(uid)
            address = self._assigned.get(uid)
            if address is None:
                wanted, problem = _requested(gateway)
                taken = set(self._assigned.values())
                if problem is None and wanted in taken:
                    problem = f"address {wanted} is already another Gateway's"
                if problem is not None:
                    problems[key] = problem
                    addresses[key] = None
                    continue
                address = self.addresses.take(wanted)
                self._assigned[uid] = address
            addresses[key] = address
        for uid in [u for u in self._assigned if u not in live]:
            address = self._assigned.pop(uid)
            if not any(k[0] == address for k in self._servers):
                self.addresses.give_back(address)
        return addresses, problems

    # -- ports and statuses --------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._reconcile()
            except Exception:
                logger.exception("reconciling gateways failed; retrying on the next change")

    async def _reconcile(self) -> None:
        wanted = self._plan.tables
        for key in [k for k in self._servers if k not in wanted]:
            self._close(key, grace=CLOSE_GRACE_SECONDS)
        for key in [k for k in self._bindings if k not in wanted]:
            del self._bindings[key]
        bound = False
        for key, table in list(wanted.items()):
            if key in self._servers:
                continue
            server = serving.PortServer(
                key[0], key[1], table, self._picker, self.session, self._channels
            )
            try:
                await server.start()
            except OSError as exc:
                error = f"cannot listen on {key[0]}:{key[1]}: {exc.strerror or exc}"
                if self._bindings.get(key) != error:
                    bound = True
                self._bindings[key] = error
                continue
            server.table = self._plan.tables.get(key) or tables.PortTable()
            self._servers[key] = server
            self._bindings[key] = None
            bound = True
            logger.info("gateway listening on %s:%s", *key)
        if bound:
            self._replan()
        self._write_statuses()

    def _close(self, key: tuple[str, int], grace: float) -> None:
        server = self._servers.pop(key)
        self._bindings.pop(key, None)
        server.stop_accepting()  # at once: the port is gone before the status says so

        async def closing() -> None:
            await server.close(grace)
            if server.address not in self._assigned.values() and not any(
                k[0] == server.address for k in self._servers
            ):
                self.addresses.give_back(server.address)

        task = asyncio.create_task(closing(), name=f"gateway-close-{key[0]}:{key[1]}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _write_statuses(self) -> None:
        plan, now = self._plan, objects.timestamp(self._clock())
        for cls in self._classes:
            self._write(cls, statuses.gateway_class(cls, now))
        for gateway in plan.gateways.values():
            self._write(gateway.obj, statuses.gateway(gateway, now))
        for (kind, namespace, name), ours in plan.parents.items():
            route = self.store.try_get(API_VERSION, kind, namespace, name)
            if route is not None:
                self._write(route, statuses.route(route, ours, now))

    def _write(self, obj: Obj, status: Obj) -> None:
        meta = obj["metadata"]
        current = self.store.try_get(
            obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]
        )
        if current is None or all(
            (current.get("status") or {}).get(k) == v for k, v in status.items()
        ):
            return
        try:
            self.store.patch(
                current["apiVersion"],
                current["kind"],
                current["metadata"].get("namespace"),
                current["metadata"]["name"],
                {"status": status},
                patch_type="merge",
                subresource="status",
                field_manager=MANAGER,
            )
        except apistore.ApiError as exc:
            logger.debug("status of %s %s not written: %s", obj["kind"], meta["name"], exc)


def _requested(gateway: Obj) -> tuple[str | None, str | None]:
    """The address a Gateway asks for (None: any), or why it cannot have it."""
    asked = (gateway.get("spec") or {}).get("addresses") or []
    if not asked:
        return None, None
    first = asked[0]
    kind, value = first.get("type", "IPAddress"), str(first.get("value", ""))
    if kind != "IPAddress":
        return None, f"address type {kind} is not supported: the sandbox assigns loopback IPs"
    try:
        if ipaddress.ip_address(value) in ipaddress.ip_network("127.0.0.0/8"):
            return value, None
    except ValueError:
        pass
    return None, f"address {value!r} is not a loopback address (127.0.0.0/8)"

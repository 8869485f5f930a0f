"""What one Gateway port serves: its listeners and their routes' entries, in precedence
order, and the lookups the proxies make per request (HTTP) or per call (gRPC).

Pure and immutable: the controller builds a new ``PortTable`` whenever something changes
and swaps it in whole, so a request sees one consistent table from start to end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from polyserve_sandbox.gateways import routes


@dataclass(frozen=True)
class HttpEntry:
    """One HTTP match of one rule, as attached to a listener."""

    hostnames: tuple[str, ...]
    match: routes.HttpMatch
    action: routes.Action
    order: tuple[Any, ...]


@dataclass(frozen=True)
class GrpcEntry:
    """One gRPC match of one rule, as attached to a listener."""

    match: routes.GrpcMatch
    action: routes.Action
    order: tuple[Any, ...]


@dataclass(frozen=True)
class ListenerTable:
    """The routes one listener serves (HTTP ones by Host; gRPC ones for any host)."""

    name: str
    hostname: str | None
    http: tuple[HttpEntry, ...] = ()
    grpc: tuple[GrpcEntry, ...] = ()


@dataclass(frozen=True)
class PortTable:
    """Everything one Gateway serves on one port: its listeners, most specific first."""

    listeners: tuple[ListenerTable, ...] = ()
    grpc: tuple[GrpcEntry, ...] = ()

    def listener_for(self, host: str) -> ListenerTable | None:
        """The listener whose hostname matches ``host`` most specifically."""
        best: tuple[tuple[int, int], ListenerTable] | None = None
        for listener in self.listeners:
            rank = routes.host_rank((listener.hostname,) if listener.hostname else (), host)
            if rank is not None and (best is None or rank > best[0]):
                best = (rank, listener)
        return best[1] if best else None

    def http_action(
        self,
        host: str,
        method: str,
        path: str,
        headers: Callable[[str], Sequence[str]],
        query: Callable[[str], Sequence[str]],
    ) -> routes.Action | None:
        """The action of the best matching HTTP rule, or None (404)."""
        listener = self.listener_for(host)
        if listener is None:
            return None
        best: tuple[tuple[Any, ...], HttpEntry] | None = None
        for entry in listener.http:
            rank = routes.host_rank(entry.hostnames, host)
            if rank is None or not entry.match.holds(method, path, headers, query):
                continue
            key = (-rank[0], -rank[1], *entry.order)
            if best is None or key < best[0]:
                best = (key, entry)
        return best[1].action if best else None

    def grpc_action(
        self, full_method: str, metadata: Callable[[str], Sequence[str]]
    ) -> routes.Action | None:
        """The action of the best matching gRPC rule, or None (UNIMPLEMENTED)."""
        for entry in self.grpc:  # kept in precedence order
            if entry.match.holds(full_method, metadata):
                return entry.action
        return None

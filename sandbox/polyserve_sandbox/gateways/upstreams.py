"""Where one request goes: a backend by weight, then one of its Service's ready endpoints.

Per request (HTTP) or per call (gRPC), as Envoy's weighted clusters do: the backend is drawn
at random in proportion to the weights (so a 90/10 split is binomial, never a fixed
pattern), then the endpoint goes round robin over the Service port's ready endpoints, read
live from the Services controller, so a pod turning ready or going away counts for the
next request. An invalid backend's share is an error (500 / UNAVAILABLE), as the spec says;
a valid backend with no ready endpoint answers 503 (UNAVAILABLE), as Envoy does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from polyserve_sandbox import services
from polyserve_sandbox.gateways import routes


@dataclass(frozen=True)
class Pick:
    """The endpoint a request goes to, or why it goes nowhere (``status`` is HTTP's)."""

    endpoint: services.Endpoint | None
    status: int = 200
    reason: str = ""


class Upstreams:
    """Draws backends and endpoints for the proxies."""

    def __init__(self, services_: services.Services, rng: random.Random | None = None) -> None:
        self._services = services_
        self._rng = rng or random.Random()
        self._turns = services.RoundRobin()

    def pick(self, action: routes.Action) -> Pick:
        backend = routes.choose(action.backends, self._rng)
        if backend is None:
            return Pick(None, 500, "no backend with a weight above 0")
        if backend.problem is not None or backend.port is None:
            return Pick(None, 500, f"invalid backend: {backend.problem}")
        ready = list(
            self._services.endpoints(backend.namespace, backend.name).get(backend.port, [])
        )
        endpoint = self._turns.choose((backend.namespace, backend.name), backend.port, ready)
        if endpoint is None:
            return Pick(None, 503, f"no healthy upstream: Service {backend.name} has no ready pod")
        return Pick(endpoint)

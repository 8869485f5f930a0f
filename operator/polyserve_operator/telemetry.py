"""The operator's own metrics: what it reconciles, how it fails, where each rollout stands.

Prometheus' text exposition on a port of its own (``Settings.metrics_port``), served by
``main`` from a thread, so a scrape is answered even while the event loop is busy. The
handlers report through the module's functions, which write to one process-wide
``Telemetry``; tests build their own and read its exposition. Two calls cover a handler:
``with telemetry.counted(kind):`` around its body counts the run by outcome, and
``telemetry.status(kind, namespace, name, status)`` after it writes status sets readiness,
the rollout's phase and step and the tier, and counts rollout events and tier moves from the
changes it sees. Bookkeeping only: no kopf, no Kubernetes client, no decisions.

Series per resource carry ``kind``, ``namespace`` and ``name`` (the custom resource); the
workers' series carry ``namespace`` and ``name`` too (the PodMonitor in
``deploy/observability`` copies the pod's ``app.kubernetes.io/instance`` label), so
dashboards and alerts join the two ``on (namespace, name)``.

    polyserve_operator_reconciles_total{kind, result}     every handler run, by outcome
    polyserve_operator_errors_total{kind, reason}         failures, by reason
    polyserve_operator_resource_ready{kind, namespace, name}          1 while Ready
    polyserve_operator_rollout_phase{kind, namespace, name, phase}    1 for the current phase
    polyserve_operator_rollout_step{kind, namespace, name}            the canary step index
    polyserve_operator_rollout_changed_timestamp_seconds{...}   when phase or step last moved
    polyserve_operator_rollouts_total{kind, namespace, name, event}   started|promoted|rolled_back
    polyserve_operator_tier{kind, namespace, name, tier}              1 for the current tier
    polyserve_operator_tier_blocked{kind, namespace, name, tier}      1 while a move there waits
    polyserve_operator_tier_moves_total{kind, namespace, name, source, target}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

#: How a handler run ended: ``success``; ``retry`` (kopf.TemporaryError: it runs again);
#: ``invalid`` (kopf.PermanentError: the spec must change); ``error`` (anything unexpected).
Result = Literal["success", "retry", "invalid", "error"]
#: The phases of ``status.rollout.phase`` (api.RolloutStatus), every one exported so a phase
#: that ends drops to 0 instead of going stale.
PHASES = ("Healthy", "Progressing", "Paused", "Promoting", "RolledBack")
RolloutEvent = Literal["started", "promoted", "rolled_back"]
#: The kinds the operator reconciles.
KINDS = ("InferenceModel", "InferenceEnsemble")

Key = tuple[str, str, str]  # kind, namespace, name


class Telemetry:
    """The operator's metrics on a registry of its own (never prometheus_client's global
    one, so tests and several operators in one process never collide)."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        # Wall time, not a monotonic clock: the timestamps are read by Prometheus, in
        # `time() - ...` expressions, on another machine.
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._rollouts: dict[Key, tuple[str, int | None]] = {}
        self._tiers: dict[Key, str] = {}
        self._wanted: dict[Key, set[str]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        resource = ["kind", "namespace", "name"]
        self._reconciles = Counter(
            "polyserve_operator_reconciles",
            "Handler runs of the operator, by resource kind and how they ended",
            ["kind", "result"],
            registry=self.registry,
        )
        self._errors = Counter(
            "polyserve_operator_errors",
            "Failed handler runs and failed API calls, by resource kind and reason",
            ["kind", "reason"],
            registry=self.registry,
        )
        self._ready = Gauge(
            "polyserve_operator_resource_ready",
            "1 while the resource's Ready condition is True, else 0",
            resource,
            registry=self.registry,
        )
        self._phase = Gauge(
            "polyserve_operator_rollout_phase",
            "1 for the rollout's current phase (status.rollout.phase), 0 for the others",
            [*resource, "phase"],
            registry=self.registry,
        )
        self._step = Gauge(
            "polyserve_operator_rollout_step",
            "Index of the canary step the rollout is at (status.rollout.stepIndex)",
            resource,
            registry=self.registry,
        )
        self._changed = Gauge(
            "polyserve_operator_rollout_changed_timestamp_seconds",
            "Unix time the rollout last changed phase or step: a stuck rollout stops moving",
            resource,
            registry=self.registry,
        )
        self._rollout_events = Counter(
            "polyserve_operator_rollouts",
            "Canary rollouts started, promoted and rolled back",
            [*resource, "event"],
            registry=self.registry,
        )
        self._tier = Gauge(
            "polyserve_operator_tier",
            "1 for the hardware tier (pool) the resource serves from",
            [*resource, "tier"],
            registry=self.registry,
        )
        self._blocked = Gauge(
            "polyserve_operator_tier_blocked",
            "1 while the resource cannot run on the tier it wants (no node fits, quota), else 0",
            [*resource, "tier"],
            registry=self.registry,
        )
        self._moves = Counter(
            "polyserve_operator_tier_moves",
            "Moves of a resource from one hardware tier to another",
            [*resource, "source", "target"],
            registry=self.registry,
        )
        # Counters exist at 0 before their first event: increase() and rate() see nothing
        # in a series that is born at 1, so the first error or rollback would go unseen.
        for kind in KINDS:
            for result in get_args(Result):
                self._reconciles.labels(kind, result)

    def reconciled(self, kind: str, result: Result) -> None:
        """One handler run for a resource of ``kind`` ended with ``result``."""
        self._reconciles.labels(kind, result).inc()

    def failed(self, kind: str, reason: str) -> None:
        """A failure worth counting apart (``reason``: a short CamelCase word, never a
        message: each distinct value is a series of its own)."""
        self._errors.labels(kind, reason).inc()

    def ready(self, kind: str, namespace: str, name: str, ready: bool) -> None:
        """The resource's Ready condition, as the operator just wrote it."""
        self._ready.labels(kind, namespace, name).set(1.0 if ready else 0.0)

    def rollout(
        self,
        namespace: str,
        name: str,
        phase: str,
        *,
        kind: str = "InferenceModel",
        step: int | None = None,
    ) -> None:
        """Where the resource's rollout stands now (``status.rollout``); call it on every
        reconcile: the change timestamp moves only when the phase or the step does, and a
        change of phase this process saw counts its event (started: Progressing after
        Healthy or RolledBack; promoted: Healthy after Promoting; rolled_back: RolledBack),
        so a restarted operator counts nothing twice."""
        if phase not in PHASES:
            raise ValueError(f"unknown rollout phase {phase!r}; expected one of {PHASES}")
        key = (kind, namespace, name)
        with self._lock:
            previous = self._rollouts.get(key)
            self._rollouts[key] = (phase, step)
        moved = previous != (phase, step)
        self._events_exist(key)
        event = _event(previous[0], phase) if previous is not None else None
        if event is not None:
            self._rollout_events.labels(*key, event).inc()
        for each in PHASES:
            self._phase.labels(*key, each).set(1.0 if each == phase else 0.0)
        if step is not None:
            self._step.labels(*key).set(step)
        if moved:
            self._changed.labels(*key).set(self._wall_clock())

    def rollout_event(
        self, namespace: str, name: str, event: RolloutEvent, *, kind: str = "InferenceModel"
    ) -> None:
        """A rollout started, was promoted or was rolled back, for a handler that knows it
        without ``rollout`` (which counts these from the phases it sees: not both)."""
        key = (kind, namespace, name)
        self._events_exist(key)
        self._rollout_events.labels(*key, event).inc()

    def _events_exist(self, key: Key) -> None:
        for event in get_args(RolloutEvent):
            self._rollout_events.labels(*key, event)

    def tier(self, namespace: str, name: str, tier: str, *, kind: str = "InferenceModel") -> None:
        """The hardware tier (pool) the resource serves from now; a change counts a move."""
        key = (kind, namespace, name)
        with self._lock:
            previous = self._tiers.get(key)
            self._tiers[key] = tier
        if previous is not None and previous != tier:
            _remove(self._tier, (*key, previous))
            self._moves.labels(*key, previous, tier).inc()
        self._tier.labels(*key, tier).set(1.0)

    def tier_blocked(
        self, namespace: str, name: str, target: str, blocked: bool, *, kind: str = "InferenceModel"
    ) -> None:
        """Whether a move of the resource to the tier ``target`` is blocked now."""
        key = (kind, namespace, name)
        with self._lock:
            self._wanted.setdefault(key, set()).add(target)
        self._blocked.labels(*key, target).set(1.0 if blocked else 0.0)

    def status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Every gauge of a resource from its ``status`` as the operator wrote it: the Ready
        condition, ``rollout`` (phase, stepIndex) and ``tier`` (current, target, blocked).
        Parts the status lacks are left as they were."""
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if "Ready" in conditions:
            self.ready(kind, namespace, name, conditions["Ready"] == "True")
        rollout = status.get("rollout") or {}
        if rollout.get("phase") in PHASES:
            step = rollout.get("stepIndex")
            self.rollout(
                namespace,
                name,
                rollout["phase"],
                kind=kind,
                step=step if isinstance(step, int) else None,
            )
        tier = status.get("tier") or {}
        if tier.get("current"):
            self.tier(namespace, name, tier["current"], kind=kind)
        if tier.get("target"):
            self.tier_blocked(namespace, name, tier["target"], bool(tier.get("blocked")), kind=kind)
        with self._lock:
            wanted = set(self._wanted.get((kind, namespace, name), set()))
        for target in wanted - {tier.get("target")}:
            self.tier_blocked(namespace, name, target, False, kind=kind)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop the series of a deleted resource (its counters stay until the process ends,
        as counters must)."""
        key = (kind, namespace, name)
        with self._lock:
            rollout = self._rollouts.pop(key, None)
            tier = self._tiers.pop(key, None)
            wanted = self._wanted.pop(key, set())
        _remove(self._ready, key)
        if rollout is not None:
            for each in PHASES:
                _remove(self._phase, (*key, each))
            _remove(self._step, key)
            _remove(self._changed, key)
        if tier is not None:
            _remove(self._tier, (*key, tier))
        for target in wanted:
            _remove(self._blocked, (*key, target))

    def exposition(self) -> bytes:
        """The text exposition (format 0.0.4) of every series."""
        text: bytes = generate_latest(self.registry)
        return text

    def serve(self, host: str, port: int) -> Server:
        """Serve ``/metrics`` from a daemon thread (prometheus_client's own server, one
        thread per scrape); port 0 picks a free one."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        return Server(httpd, thread)


@dataclass
class Server:
    """A running exposition server."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _event(previous: str, phase: str) -> RolloutEvent | None:
    if phase == previous:
        return None
    if phase == "Progressing" and previous in ("Healthy", "RolledBack"):
        return "started"
    if phase == "Healthy" and previous == "Promoting":
        return "promoted"
    if phase == "RolledBack":
        return "rolled_back"
    return None


@contextmanager
def counted(kind: str, into: Telemetry | None = None) -> Iterator[None]:
    """Count the handler run inside as one reconcile of ``kind``: ``success`` when it
    returns, else by its exception (re-raised): kopf's TemporaryError is ``retry``, its
    PermanentError ``invalid``, anything else ``error``. The exceptions are told by their
    classes' names, so this module needs no kopf."""
    target = into or current
    try:
        yield
    except Exception as exc:
        names = {cls.__name__ for cls in type(exc).__mro__}
        result: Result = "error"
        if "TemporaryError" in names:
            result = "retry"
        elif "PermanentError" in names:
            result = "invalid"
        target.reconciled(kind, result)
        raise
    target.reconciled(kind, "success")


def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        return


#: The process's telemetry: what ``main`` serves and the module functions write.
current = Telemetry()


def reconciled(kind: str, result: Result) -> None:
    current.reconciled(kind, result)


def failed(kind: str, reason: str) -> None:
    current.failed(kind, reason)


def ready(kind: str, namespace: str, name: str, ready: bool) -> None:
    current.ready(kind, namespace, name, ready)


def rollout(
    namespace: str, name: str, phase: str, *, kind: str = "InferenceModel", step: int | None = None
) -> None:
    current.rollout(namespace, name, phase, kind=kind, step=step)


def rollout_event(
    namespace: str, name: str, event: RolloutEvent, *, kind: str = "InferenceModel"
) -> None:
    current.rollout_event(namespace, name, event, kind=kind)


def tier(namespace: str, name: str, tier: str, *, kind: str = "InferenceModel") -> None:
    current.tier(namespace, name, tier, kind=kind)


def tier_blocked(
    namespace: str, name: str, target: str, blocked: bool, *, kind: str = "InferenceModel"
) -> None:
    current.tier_blocked(namespace, name, target, blocked, kind=kind)


def status(kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    current.status(kind, namespace, name, status)


def forget(kind: str, namespace: str, name: str) -> None:
    current.forget(kind, namespace, name)

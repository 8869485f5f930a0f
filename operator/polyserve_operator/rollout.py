"""The canary rollout as a pure state machine: (status, observation, clock) -> the next plan.

``plan`` is called on every reconcile. It reads the previous ``status.rollout`` (everything a
restarted operator needs lives there), what the operator sees now (the canary's ready pods,
a window of traffic for analysis, a person's action) and the time, and returns the next
status and what to run: each revision's replicas, the canary's traffic weight, whether the
stable pods mirror to the canary. It never does I/O.

    Healthy --new revision--> Progressing --steps...--> Promoting --canary serves--> Healthy
                 Progressing <--> Paused (a pause step, too little traffic, a person)
                 Progressing/Paused --analysis failed, deadline, abort--> RolledBack
                 RolledBack --retry, or a newer revision--> Progressing

Steps follow Argo Rollouts: ``setWeight`` waits until the canary is Ready at the replicas
that weight needs (traffic never goes to a canary that is not Ready), ``pause`` waits for its
duration or a person, ``analysis`` takes ``count`` measurements, one per interval of live
traffic. Too little traffic is Inconclusive: never a pass, never a fail.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from polyserve_operator import analysis, api

Obj = dict[str, Any]
Event = tuple[str, str, str]  # (Normal|Warning, reason, message)
Target = Literal["stable", "both", "canary"]

#: How many measurements status keeps (the current step's, and those of a rollback).
KEPT_MEASUREMENTS = 10


def seconds(duration: str) -> float:
    """An Argo-style duration (``1h30m``, ``45s``, ``250ms``) in seconds."""
    total = 0.0
    for number, unit in re.findall(r"([0-9]+)(ms|s|m|h)", duration):
        total += int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def stamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Observation:
    """What the operator sees of the rollout now."""

    canary_ready: int = 0
    """Ready pods of the canary revision."""
    stable_ready: int = 0
    """Ready pods of the stable revision."""
    canary_pods: int = 0
    """Pods of the canary revision, ready or not."""
    stable_pods: int = 0
    """Pods of the stable revision, ready or not (0 once they are all gone)."""
    canary_trouble: str | None = None
    """Why the canary's pods are not coming up, when they are stuck, as ``Reason: message``
    (``Unschedulable: ...``, ``CrashLoopBackOff: ...``): the rollout says so while it waits."""
    traffic: analysis.Window | None = None
    """The traffic since the last measurement (or the step's start), when measured."""
    action: str | None = None
    """A person's new action: promote, abort or retry."""
    existing_revision: str | None = None
    """The revision that runs when a resource first becomes a canary (switching strategy)."""


@dataclass(frozen=True)
class Plan:
    """What to run next and the status that says so."""

    status: Obj
    stable_revision: str
    canary_revision: str | None
    stable_replicas: int
    canary_replicas: int
    weight: int
    """Percent of traffic for the canary (route weights; the Service's selection)."""
    target: Target
    """What the main Service selects: the stable pods, both revisions (replica ratio), or
    the canary (promoting)."""
    mirror: bool
    """Whether stable's pods copy requests to the canary now."""
    reset_window: bool
    """Start a new analysis window now (a step started or a measurement was taken)."""
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Spec:
    """The parts of the resource the state machine reads."""

    canary: api.Canary
    replicas: int
    revision: str
    """The revision the spec asks for."""
    gateway: bool = False
    """Traffic split by a Gateway API route (exact weights) rather than by replica ratio."""
    stable_size: int | None = None
    """The stable revision's own size when it differs from the new one's (a move between
    query tiers: the tier it leaves keeps its replicas until the move is done)."""


def canary_replicas(spec: Spec, weight: int) -> int:
    """Canary pods for a weight: with a route, a share of the replicas that carries its share
    of the traffic; by replica ratio, enough that canary / all ~ weight. Never under one
    during a rollout (the canary takes mirrored traffic and must be Ready before any)."""
    n = max(spec.replicas, 1)
    if weight >= 100:
        return n
    if spec.gateway or spec.canary.capacity_mode == "InPlace":
        return max(1, math.ceil(n * weight / 100))
    return max(1, round(n * weight / (100 - weight)))


def stable_replicas(spec: Spec, canary: int) -> int:
    size = spec.replicas if spec.stable_size is None else spec.stable_size
    if spec.canary.capacity_mode == "InPlace":
        return max(size - canary, 0)
    return size


def _weight_now(step_weights: list[int]) -> int:
    return step_weights[-1] if step_weights else 0


def _weight_at(spec: Spec, index: int) -> int:
    """The weight in force at step ``index``: the last setWeight before or at it."""
    weights = [s.set_weight for s in spec.canary.steps[: index + 1] if s.set_weight is not None]
    return _weight_now(weights)


def actual_weight(spec: Spec, obs: Observation, weight: int, target: Target) -> float:
    if spec.gateway or target != "both":
        return float(weight if target != "stable" or spec.gateway else 0)
    ready = obs.canary_ready + obs.stable_ready
    return round(100.0 * obs.canary_ready / ready, 1) if ready else 0.0


def _analysis_of(spec: Spec, step: api.CanaryStep) -> tuple[api.Analysis, float, int]:
    base = spec.canary.analysis or api.Analysis()
    override = step.analysis or api.StepAnalysis()
    interval = seconds(override.interval or base.interval)
    return base, interval, override.count or base.count


def plan(
    spec: Spec, previous: Mapping[str, Any] | None, obs: Observation, now: datetime.datetime
) -> Plan:
    """The next plan; see the module docstring."""
    status: Obj = dict(previous or {})
    events: list[Event] = []
    phase = status.get("phase")
    stable = status.get("stableRevision")
    if not stable:
        # The first revision (or the one running when the strategy became Canary) is stable.
        stable = obs.existing_revision or spec.revision
        status = {"phase": "Healthy", "stableRevision": stable}
        phase = "Healthy"
    canary = status.get("canaryRevision")

    # A person's action first.
    if obs.action:
        verb = obs.action.split("/", 1)[0]
        status["lastAction"] = obs.action
        if verb == "abort" and phase in ("Progressing", "Paused"):
            return _rolled_back(spec, status, obs, now, "aborted by a person", events)
        if verb == "retry" and phase == "RolledBack" and canary == spec.revision:
            events.append(("Normal", "RolloutRetried", f"retrying revision {canary}"))
            return _start(spec, status, obs, now, events, stable)
        if verb == "promote" and phase in ("Progressing", "Paused"):
            events.append(
                ("Normal", "StepPromoted", f"step {status.get('stepIndex')} skipped by a person")
            )
            status["phase"] = "Progressing"
            return _advance(spec, status, obs, now, events, stable)

    if spec.revision == stable:
        if phase in ("Progressing", "Paused", "Promoting"):
            events.append(
                ("Normal", "RolloutCancelled", f"the spec went back to revision {stable}")
            )
        status.update(phase="Healthy", stableRevision=stable)
        for key in (
            "canaryRevision",
            "stepIndex",
            "stepStartedAt",
            "weight",
            "actualWeight",
            "measurements",
        ):
            status.pop(key, None)
        status["message"] = f"revision {stable} serves"
        return Plan(status, stable, None, spec.replicas, 0, 0, "stable", False, False, events)

    if phase == "RolledBack" and canary == spec.revision:
        return _stay_rolled_back(spec, status, obs, now, events)

    if phase in ("Healthy", "RolledBack") or canary != spec.revision:
        if phase in ("Progressing", "Paused", "Promoting") and canary:
            events.append(
                ("Normal", "RolloutRestarted", f"revision {spec.revision} replaces canary {canary}")
            )
        else:
            events.append(
                ("Normal", "RolloutStarted", f"canary {spec.revision} next to stable {stable}")
            )
        return _start(spec, status, obs, now, events, stable)

    if phase == "Promoting":
        return _promote(spec, status, obs, now, events, stable)
    return _step(spec, status, obs, now, events, stable)


def _start(
    spec: Spec,
    status: Obj,
    obs: Observation,
    now: datetime.datetime,
    events: list[Event],
    stable: str,
) -> Plan:
    status.update(
        phase="Progressing",
        stableRevision=stable,
        canaryRevision=spec.revision,
        stepIndex=0,
        stepStartedAt=stamp(now),
        weight=0,
        measurements=[],
    )
    status["message"] = f"canary {spec.revision}: step 0 starts"
    return _step(spec, status, obs, now, events, stable, fresh=True)


def _run(
    spec: Spec,
    status: Obj,
    obs: Observation,
    stable: str,
    weight: int,
    *,
    reset: bool,
    events: list[Event],
    target: Target | None = None,
) -> Plan:
    canary = canary_replicas(spec, weight)
    chosen: Target = target or ("stable" if weight == 0 else "both")
    if spec.gateway and chosen == "both":
        chosen = "stable"  # the route splits; the main Service stays on stable
    status["weight"] = weight
    status["actualWeight"] = actual_weight(spec, obs, weight, chosen)
    return Plan(
        status=status,
        stable_revision=stable,
        canary_revision=spec.revision,
        stable_replicas=stable_replicas(spec, canary),
        canary_replicas=canary,
        weight=weight,
        target=chosen,
        mirror=spec.canary.mirror is not None,
        reset_window=reset,
        events=events,
    )


def _step(
    spec: Spec,
    status: Obj,
    obs: Observation,
    now: datetime.datetime,
    events: list[Event],
    stable: str,
    *,
    fresh: bool = False,
) -> Plan:
    index = int(status.get("stepIndex") or 0)
    if index >= len(spec.canary.steps):
        return _promote(spec, status, obs, now, events, stable, entering=True)
    step = spec.canary.steps[index]
    started = parse_time(status.get("stepStartedAt")) or now
    weight = _weight_at(spec, index)
    previous_weight = _weight_at(spec, index - 1) if index else 0
    wanted = canary_replicas(spec, weight)
    # Traffic never goes to a canary that is not Ready: until it is, keep the previous weight.
    if obs.canary_ready < wanted:
        elapsed = (now - started).total_seconds()
        if elapsed > spec.canary.progress_deadline_seconds:
            return _rolled_back(
                spec,
                status,
                obs,
                now,
                (
                    f"the canary was not Ready within progressDeadlineSeconds "
                    f"({spec.canary.progress_deadline_seconds}): {obs.canary_ready}/{wanted} ready"
                    + (f"; {obs.canary_trouble}" if obs.canary_trouble else "")
                ),
                events,
            )
        trouble = f" ({obs.canary_trouble})" if obs.canary_trouble else ""
        # No node can take the canary (on a GPU pool: no free GPU): say so; InPlace
        # capacity makes room by replacing stable pods instead of adding to them.
        unschedulable = (obs.canary_trouble or "").startswith("Unschedulable")
        blocked = "CapacityBlocked: " if unschedulable else ""
        status["message"] = (
            f"step {index}: {blocked}waiting for the canary: {obs.canary_ready}/{wanted} "
            f"ready{trouble}"
        )
        status["phase"] = "Progressing"
        held = _run(
            spec, status, obs, stable, min(previous_weight, weight), reset=fresh, events=events
        )
        # Grow the canary to what the step needs while traffic stays where it was.
        grown = max(held.canary_replicas, wanted)
        return dataclasses.replace(
            held, canary_replicas=grown, stable_replicas=stable_replicas(spec, grown)
        )
    if step.set_weight is not None:
        events.append(("Normal", "WeightSet", f"step {index}: canary weight {weight}%"))
        status["weight"] = weight
        return _advance(spec, status, obs, now, events, stable)
    if step.pause is not None:
        if step.pause.duration is None:
            status["phase"] = "Paused"
            status["message"] = (
                f"step {index}: paused until a person promotes (polyserve rollout promote NAME)"
            )
            return _run(spec, status, obs, stable, weight, reset=fresh, events=events)
        waited = (now - started).total_seconds()
        if waited >= seconds(step.pause.duration):
            return _advance(spec, status, obs, now, events, stable)
        status["phase"] = "Progressing"
        status["message"] = f"step {index}: pause {step.pause.duration} ({waited:.0f}s elapsed)"
        return _run(spec, status, obs, stable, weight, reset=fresh, events=events)
    return _analyse(spec, status, obs, now, events, stable, index, step, weight, fresh)


def _analyse(
    spec: Spec,
    status: Obj,
    obs: Observation,
    now: datetime.datetime,
    events: list[Event],
    stable: str,
    index: int,
    step: api.CanaryStep,
    weight: int,
    fresh: bool,
) -> Plan:
    base, interval, count = _analysis_of(spec, step)
    measurements = list(status.get("measurements") or [])
    if status.get("phase") == "Paused":
        return _run(spec, status, obs, stable, weight, reset=False, events=events)
    status["phase"] = "Progressing"
    if fresh or obs.traffic is None or obs.traffic.seconds < interval:
        seen = 0.0 if obs.traffic is None else obs.traffic.seconds
        passed = sum(1 for m in measurements if m["verdict"] == "Successful")
        status["message"] = (
            f"step {index}: analysis {passed}/{count}, "
            f"next measurement in {max(interval - seen, 0):.0f}s"
        )
        return _run(
            spec, status, obs, stable, weight, reset=fresh or obs.traffic is None, events=events
        )
    metrics = [m.model_dump(by_alias=True, exclude_none=True) for m in base.metrics]
    measurement = analysis.measure(metrics, base.min_samples, obs.traffic, stamp(now))
    measurements = [*measurements, measurement][-KEPT_MEASUREMENTS:]
    status["measurements"] = measurements
    verdicts = [m["verdict"] for m in measurements]
    failed, inconclusive = verdicts.count("Failed"), verdicts.count("Inconclusive")
    if failed > base.failure_limit:
        return _rolled_back(
            spec, status, obs, now, f"analysis failed: {measurement['message']}", events
        )
    if inconclusive > base.inconclusive_limit:
        status["phase"] = "Paused"
        status["message"] = (
            f"step {index}: analysis inconclusive {inconclusive} times ({measurement['message']}); "
            "send traffic, or `polyserve rollout promote NAME` to go on, or abort"
        )
        events.append(("Warning", "AnalysisInconclusive", status["message"]))
        return _run(spec, status, obs, stable, weight, reset=True, events=events)
    if verdicts.count("Successful") >= count:
        events.append(
            ("Normal", "AnalysisSuccessful", f"step {index}: {count} successful measurement(s)")
        )
        return _advance(spec, status, obs, now, events, stable)
    status["message"] = (
        f"step {index}: analysis {verdicts.count('Successful')}/{count}: {measurement['message']}"
    )
    return _run(spec, status, obs, stable, weight, reset=True, events=events)


def _advance(
    spec: Spec,
    status: Obj,
    obs: Observation,
    now: datetime.datetime,
    events: list[Event],
    stable: str,
) -> Plan:
    index = int(status.get("stepIndex") or 0) + 1
    status.update(stepIndex=index, stepStartedAt=stamp(now), measurements=[], phase="Progressing")
    if index >= len(spec.canary.steps):
        return _promote(spec, status, obs, now, events, stable, entering=True)
    return _step(spec, status, obs, now, events, stable, fresh=True)


def _promote(
    spec: Spec,
    status: Obj,
    obs: Observation,
    now: datetime.datetime,
    events: list[Event],
    stable: str,
    *,
    entering: bool = False,
) -> Plan:
    if entering:
        events.append(("Normal", "Promoting", f"canary {spec.revision} passed every step"))
    status["phase"] = "Promoting"
    n = max(spec.replicas, 1)
    if obs.canary_ready >= n:
        # The canary serves at full size: all traffic moves to it and the old pods go.
        events.append(("Normal", "Promoted", f"revision {spec.revision} is stable (was {stable})"))
        new: Obj = {
            "phase": "Healthy",
            "stableRevision": spec.revision,
            "message": f"revision {spec.revision} serves (promoted from canary)",
        }
        if status.get("lastAction"):
            new["lastAction"] = status["lastAction"]
        return Plan(new, spec.revision, None, spec.replicas, 0, 0, "stable", False, False, events)
    status["message"] = f"promoting: the canary grows to {n} ready ({obs.canary_ready} so far)"
    status["weight"] = _weight_now(
        [s.set_weight for s in spec.canary.steps if s.set_weight is not None]
    )
    growing = _run(spec, status, obs, stable, int(status["weight"]), reset=False, events=events)
    shrinking = spec.canary.capacity_mode == "InPlace"
    size = spec.replicas if spec.stable_size is None else spec.stable_size
    return dataclasses.replace(
        growing,
        canary_replicas=n,
        stable_replicas=max(size - obs.canary_ready, 0) if shrinking else size,
    )


def _rolled_back(
    spec: Spec, status: Obj, obs: Observation, now: datetime.datetime, why: str, events: list[Event]
) -> Plan:
    stable = str(status.get("stableRevision"))
    status.update(phase="RolledBack", weight=0, actualWeight=0.0, stepStartedAt=stamp(now))
    status["message"] = (
        f"revision {spec.revision} rolled back: {why}. Stable {stable} serves; fix the spec, "
        "or `polyserve rollout retry NAME`"
    )
    events.append(("Warning", "RolledBack", status["message"]))
    return _stay_rolled_back(spec, status, obs, now, events)


def _stay_rolled_back(
    spec: Spec, status: Obj, obs: Observation, now: datetime.datetime, events: list[Event]
) -> Plan:
    stable = str(status.get("stableRevision"))
    since = parse_time(status.get("stepStartedAt")) or now
    keep = (now - since).total_seconds() < spec.canary.abort_scale_down_delay_seconds
    return Plan(
        status=status,
        stable_revision=stable,
        canary_revision=spec.revision if keep else None,
        stable_replicas=spec.replicas if spec.stable_size is None else spec.stable_size,
        canary_replicas=1 if keep else 0,
        weight=0,
        target="stable",
        mirror=False,
        reset_window=False,
        events=events,
    )

"""Query tiers: which hardware a model's load needs now. A pure decision with hysteresis.

A model lists its tiers cheapest first (Xeon with ONNX Runtime, Xeon with OpenVINO BF16, a
GPU with TensorRT, ...), each with the queries per second one replica serves at the latency
SLO (its capacity: declared, else measured by spec.tuning, ``measured``; a tier with neither
yet moves on latency alone). ``decide`` reads the previous ``status.tier``, the model's query rate
and p95 latency now, and the time, and returns the tier the model should be on:

- up one tier when the rate stays above ``promoteAbove`` x the current tier's capacity (all
  its replicas), or the p95 above the SLO while the tier is loaded (the rate at least
  ``demoteBelow`` x its capacity), for ``promoteAfter``;
- down one tier when the rate stays below ``demoteBelow`` x the lower tier's capacity for
  ``demoteAfter``;
- never two moves within ``minDwell``, one move at a time, and a move that cannot get its pods
  (the target tier blocked: no node for it yet) is given up when the load falls back or
  ``provisioningDeadline`` passes.

A move itself is a canary rollout (the target tier's revision next to the current one,
traffic in steps): the handler runs it with the rollout state machine and tells ``decide``
when it has finished (``arrived``) or failed (``blocked``). Everything lives in status, so a
restarted operator keeps its timers.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from polyserve_operator import api, rollout

Obj = dict[str, Any]
#: How many moves status remembers.
KEPT_MOVES = 5


@dataclass(frozen=True)
class Load:
    """The model's traffic now, over all its pods."""

    rate: float | None
    """Requests per second (None: not measured yet)."""
    p95_ms: float | None = None
    """Request latency p95 in milliseconds, when measured."""


@dataclass(frozen=True)
class Decision:
    target: int
    """The tier the model should be on (an index into the tiers)."""
    status: Obj
    events: list[tuple[str, str, str]] = field(default_factory=list)


def capacity(tier: api.Tier) -> float | None:
    """Requests per second a tier serves at the SLO with all its replicas (None: unknown)."""
    if tier.capacity is None:
        return None
    return tier.capacity * max(tier.replicas.max, 1)


def measured(
    tiers: Sequence[api.Tier], tuning: Sequence[Mapping[str, Any]] | None
) -> list[api.Tier]:
    """The tiers, each without a declared capacity given the one ``status.tuning`` measured
    for it (the last successful run's, kept while a new one runs)."""
    found: dict[str, float] = {}
    for entry in tuning or []:
        result = entry.get("result") or {}
        if result.get("capacity"):
            found[str(entry.get("tier") or "")] = float(result["capacity"])
    return [
        t.model_copy(update={"capacity": found[t.name]})
        if t.capacity is None and t.name in found
        else t
        for t in tiers
    ]


def _since(status: Mapping[str, Any], key: str) -> datetime.datetime | None:
    return rollout.parse_time(status.get(key))


def decide(
    tiers: Sequence[api.Tier],
    tiering: api.Tiering,
    previous: Mapping[str, Any] | None,
    load: Load,
    now: datetime.datetime,
    *,
    arrived: bool = False,
    blocked: str | None = None,
) -> Decision:
    """The tier to be on; see the module docstring. ``arrived``: the move to the target has
    finished (its revision serves); ``blocked``: why the target tier gets no pods."""
    status: Obj = dict(previous or {})
    events: list[tuple[str, str, str]] = []
    stamp = rollout.stamp(now)
    names = [t.name for t in tiers]
    current = _index(names, status.get("current"), default=0)
    target = _index(names, status.get("target"), default=current)
    status.setdefault("current", names[current])
    status.setdefault("since", stamp)
    if load.rate is not None:
        status["rate"] = round(load.rate, 3)
    if load.p95_ms is not None:
        status["p95Ms"] = round(load.p95_ms, 3)
    known = {t.name: t.capacity for t in tiers if t.capacity is not None}
    if known:
        status["capacities"] = known
    else:
        status.pop("capacities", None)

    if target != current:  # a move is under way
        if arrived:
            status.update(current=names[target], since=stamp)
            status.pop("target", None)
            status.pop("blocked", None)
            events.append(("Normal", "TierMoved", f"now on tier {names[target]}"))
            return Decision(target, _settled(status), events)
        if blocked:
            if not status.get("blocked"):  # said once, when the move first finds no pods
                events.append(
                    (
                        "Warning",
                        "TierBlocked",
                        f"tier {names[target]} gets no pods ({blocked}); serving on "
                        f"{names[current]} until it does, the load falls or "
                        f"provisioningDeadline ({tiering.provisioning_deadline}) passes",
                    )
                )
            status["blocked"] = blocked
            deadline = rollout.seconds(tiering.provisioning_deadline)
            started = _since(status, "moveStartedAt") or now
            falling = not _wants_up(tiers, tiering, current, load)
            if falling or (now - started).total_seconds() > deadline:
                why = "the load fell" if falling else "provisioningDeadline passed"
                _record(status, stamp, names[target], names[current], f"given up: {why}", load)
                status.pop("target", None)
                status["since"] = stamp  # the dwell counts from here too
                events.append(
                    (
                        "Warning",
                        "TierMoveGivenUp",
                        f"tier {names[target]} got no pods ({blocked}); {why}",
                    )
                )
                return Decision(current, _settled(status), events)
        else:
            status.pop("blocked", None)
        return Decision(target, status, events)

    dwell = rollout.seconds(tiering.min_dwell)
    settled_for = (now - (_since(status, "since") or now)).total_seconds()
    up = current + 1 < len(tiers) and _wants_up(tiers, tiering, current, load)
    down = current > 0 and _wants_down(tiers, tiering, current, load)
    status = _track(status, "upSince", up, stamp)
    status = _track(status, "downSince", down, stamp)
    if up:
        waited = (now - (_since(status, "upSince") or now)).total_seconds()
        if waited >= rollout.seconds(tiering.promote_after) and settled_for >= dwell:
            return _move(status, names, current, current + 1, stamp, load, "up", events)
    if down:
        waited = (now - (_since(status, "downSince") or now)).total_seconds()
        if waited >= rollout.seconds(tiering.demote_after) and settled_for >= dwell:
            return _move(status, names, current, current - 1, stamp, load, "down", events)
    return Decision(current, status, events)


def _wants_up(tiers: Sequence[api.Tier], tiering: api.Tiering, current: int, load: Load) -> bool:
    if current + 1 >= len(tiers):
        return False
    top = capacity(tiers[current])
    busy = load.rate is not None and top is not None and load.rate > tiering.promote_above * top
    # A slow p95 asks for more hardware only under load: at a trickle (below the share of the
    # tier's capacity that would let it move down) a slow request is a cold start, a big
    # input or a noisy neighbour, which a bigger tier would not fix.
    loaded = load.rate is not None and (top is None or load.rate >= tiering.demote_below * top)
    slow = (
        tiering.latency_slo_ms is not None
        and load.p95_ms is not None
        and load.p95_ms > tiering.latency_slo_ms
        and loaded
    )
    return busy or slow


def _wants_down(tiers: Sequence[api.Tier], tiering: api.Tiering, current: int, load: Load) -> bool:
    below = capacity(tiers[current - 1]) if current > 0 else None
    if below is None or load.rate is None:
        return False
    return load.rate < tiering.demote_below * below


def _track(status: Obj, key: str, holds: bool, stamp: str) -> Obj:
    if holds:
        status.setdefault(key, stamp)
    else:
        status.pop(key, None)
    return status


def _move(
    status: Obj,
    names: list[str],
    current: int,
    target: int,
    stamp: str,
    load: Load,
    direction: str,
    events: list[tuple[str, str, str]],
) -> Decision:
    status.update(target=names[target], moveStartedAt=stamp)
    status.pop("upSince", None)
    status.pop("downSince", None)
    rate = f"{load.rate:.1f} req/s" if load.rate is not None else "no rate"
    reason = f"{direction}: {rate}" + (f", p95 {load.p95_ms:.1f} ms" if load.p95_ms else "")
    _record(status, stamp, names[current], names[target], reason, load)
    events.append(("Normal", "TierMoving", f"{names[current]} -> {names[target]} ({reason})"))
    return Decision(target, status, events)


def _record(status: Obj, stamp: str, source: str, target: str, reason: str, load: Load) -> None:
    moves = list(status.get("moves") or [])
    moves.append({"time": stamp, "from": source, "to": target, "reason": reason, "rate": load.rate})
    status["moves"] = moves[-KEPT_MOVES:]


def _settled(status: Obj) -> Obj:
    for key in ("moveStartedAt", "upSince", "downSince"):
        status.pop(key, None)
    return status


def _index(names: list[str], name: Any, default: int) -> int:
    return names.index(name) if isinstance(name, str) and name in names else default

"""Tier decisions on a fake clock with synthetic load: hysteresis, dwell, blocked tiers."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

from polyserve_operator import api, tiers

T0 = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)
TIERS = [
    api.Tier.model_validate(
        {
            "name": "xeon",
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": {"min": 1, "max": 1},
            "capacity": 100,
        }
    ),
    api.Tier.model_validate(
        {
            "name": "bf16",
            "hardware": {"pool": "xeon", "backend": "openvino", "precision": "bf16"},
            "replicas": {"min": 0, "max": 2},
            "capacity": 400,
        }
    ),
    api.Tier.model_validate(
        {
            "name": "gpu",
            "hardware": {"pool": "gpu", "backend": "tensorrt"},
            "replicas": {"min": 0, "max": 1},
            "capacity": 5000,
        }
    ),
]
TIERING = api.Tiering.model_validate(
    {
        "promoteAbove": 0.8,
        "demoteBelow": 0.5,
        "promoteAfter": "1m",
        "demoteAfter": "5m",
        "minDwell": "10m",
        "provisioningDeadline": "10m",
        "latencySloMs": 50,
    }
)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def step(status: dict[str, Any] | None, rate: float, t: float, **kw: Any) -> tiers.Decision:
    decision = tiers.decide(TIERS, TIERING, status, tiers.Load(rate), at(t), **kw)
    json.loads(json.dumps(decision.status))  # what status stores
    api.TierStatus.model_validate(decision.status)
    return decision


def test_the_model_starts_on_the_cheapest_tier() -> None:
    assert step(None, 0, 0).target == 0


def test_high_load_moves_up_only_after_it_has_lasted_promote_after() -> None:
    d = step(None, 10, 0)
    d = step(d.status, 90, 601)  # 90 > 0.8 x 100: up wanted from now
    assert d.target == 0 and d.status["upSince"]
    d = step(d.status, 95, 640)
    assert d.target == 0, "40 s is not a minute"
    d = step(d.status, 95, 662)
    assert d.target == 1 and d.status["target"] == "bf16"
    assert d.events[0][1] == "TierMoving"
    assert d.status["moves"][-1]["reason"].startswith("up: 95.0 req/s")


def test_a_spike_shorter_than_promote_after_is_ignored() -> None:
    d = step(None, 10, 0)
    d = step(d.status, 500, 601)
    d = step(d.status, 20, 630)  # over before a minute
    d = step(d.status, 500, 640)  # the clock starts again
    d = step(d.status, 500, 690)
    assert d.target == 0


def test_a_broken_latency_slo_under_load_asks_for_the_next_tier_too() -> None:
    d = step(None, 10, 0)
    # 60 req/s: under promoteAbove (80) but loaded (at least demoteBelow x 100), and slow.
    d = tiers.decide(TIERS, TIERING, d.status, tiers.Load(60, p95_ms=80), at(601))
    d = tiers.decide(TIERS, TIERING, d.status, tiers.Load(60, p95_ms=80), at(662))
    assert d.target == 1
    assert "p95 80.0 ms" in d.status["moves"][-1]["reason"]


def test_a_slow_p95_at_a_trickle_moves_nothing() -> None:
    # 2 req/s on a tier that serves 100: slow answers are not load; more hardware would not
    # make them faster.
    d = step(None, 2, 0)
    for t in range(601, 1200, 30):
        d = tiers.decide(TIERS, TIERING, d.status, tiers.Load(2, p95_ms=400), at(t))
        assert d.target == 0 and "upSince" not in d.status


def _on_bf16(t: float = 700) -> tiers.Decision:
    """Up to bf16: high load from 601, the move at 662, arrived at ``t``."""
    d = step(None, 10, 0)
    d = step(d.status, 95, 601)
    d = step(d.status, 95, 662)
    assert d.target == 1
    return step(d.status, 95, t, arrived=True)


def test_the_move_finishes_when_the_handler_says_it_arrived_and_low_load_moves_down() -> None:
    d = _on_bf16(700)
    assert d.status["current"] == "bf16" and "target" not in d.status
    d = step(d.status, 40, 800)  # 40 < 0.5 x 100 (the tier below): down wanted
    d = step(d.status, 40, 1101)
    assert d.target == 1, "the dwell (10 min from 700) is not over"
    d = step(d.status, 40, 1301)
    assert d.target == 0


def test_oscillating_load_makes_at_most_one_move_per_dwell_over_an_hour() -> None:
    status: dict[str, Any] | None = None
    moves = 0
    moving_since: float | None = None
    for second in range(0, 3600, 5):
        rate = 70 + 60 * math.sin(second / 90)  # crosses both thresholds every few minutes
        arrived = moving_since is not None and second - moving_since >= 30  # a move takes 30 s
        d = step(status, rate, second, arrived=arrived)
        if arrived:
            moving_since = None
        if any(e[1] == "TierMoving" for e in d.events):
            moves += 1
            moving_since = second
        status = d.status
    assert 1 <= moves <= 3600 // 600 + 1, moves


def test_a_blocked_tier_is_given_up_when_the_load_falls_and_traffic_stays() -> None:
    d = _on_bf16(700)
    d = step(d.status, 370, 1300)  # well under 0.8 x 400 x 2 replicas
    assert d.target == 1
    d = step(d.status, 700, 1300)
    d = step(d.status, 700, 1361)
    assert d.target == 2, "the GPU tier is wanted"
    why = "Unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node selector"
    d = step(d.status, 700, 1370, blocked=why)
    assert d.target == 2 and d.status["blocked"] == why, "it waits for a node"
    assert [(kind, reason) for kind, reason, _ in d.events] == [("Warning", "TierBlocked")]
    assert why in d.events[0][2] and "serving on bf16" in d.events[0][2]
    d = step(d.status, 700, 1375, blocked=why)
    assert d.target == 2 and d.events == [], "said once, not at every refresh"
    d = step(d.status, 100, 1380, blocked=why)
    assert d.target == 1, "the load fell: the move is given up"
    assert "given up: the load fell" in d.status["moves"][-1]["reason"]
    assert d.events[-1][:2] == ("Warning", "TierMoveGivenUp")


def test_a_blocked_tier_is_given_up_after_the_provisioning_deadline() -> None:
    d = _on_bf16(700)
    d = step(d.status, 700, 1300)
    d = step(d.status, 700, 1361)
    assert d.target == 2
    d = step(d.status, 700, 1500, blocked="Unschedulable: no GPU")
    assert d.target == 2
    d = step(d.status, 700, 1361 + 601, blocked="Unschedulable: no GPU")
    assert d.target == 1 and "provisioningDeadline passed" in d.status["moves"][-1]["reason"]

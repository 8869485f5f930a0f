"""The canary state machine and its analysis, on a fake clock: every transition, pure."""

from __future__ import annotations

import datetime
import json
from typing import Any

import numpy as np
import pytest

from polyserve_operator import analysis, api, rollout

T0 = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)
#: The worker's request-duration buckets (seconds), as metrics.py declares them.
BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    float("inf"),
)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def canary(**fields: Any) -> api.Canary:
    body: dict[str, Any] = {
        "steps": [
            {"setWeight": 20},
            {"pause": {"duration": "1m"}},
            {"analysis": {}},
            {"setWeight": 50},
            {"pause": {}},
        ],
        "analysis": {
            "interval": "30s",
            "count": 2,
            "minSamples": 10,
            "failureLimit": 0,
            "inconclusiveLimit": 1,
            "metrics": [
                {"name": "successRate", "min": 0.95},
                {"name": "latencyP95", "relativeToStable": 1.5},
            ],
        },
        "progressDeadlineSeconds": 300,
        "abortScaleDownDelaySeconds": 30,
    }
    body.update(fields)
    return api.Canary.model_validate(body)


def spec(revision: str = "new", replicas: int = 4, **fields: Any) -> rollout.Spec:
    gateway = fields.pop("gateway", False)
    return rollout.Spec(
        canary=canary(**fields), replicas=replicas, revision=revision, gateway=gateway
    )


def sample(success: float, failure: float = 0.0, latency_ms: float = 10.0) -> analysis.Sample:
    """Every request took ``latency_ms``."""
    n = success + failure
    buckets = tuple((b, n if b * 1000 >= latency_ms else 0.0) for b in BUCKETS)
    return analysis.Sample(success, failure, analysis.Histogram(buckets))


def traffic(seconds: float, canary_: analysis.Sample, stable: analysis.Sample) -> analysis.Window:
    return analysis.Window(canary=canary_, stable=stable, seconds=seconds)


def roundtrip(status: dict[str, Any]) -> dict[str, Any]:
    """Status as the API server stores it (JSON), and as a restarted operator reads it."""
    loaded: dict[str, Any] = json.loads(json.dumps(status))
    api.RolloutStatus.model_validate(loaded)
    return loaded


def healthy(stable: str = "old") -> dict[str, Any]:
    return {"phase": "Healthy", "stableRevision": stable}


# analysis -----------------------------------------------------------------------------------


def test_histogram_quantiles_match_numpy_within_a_bucket() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(mean=-4.5, sigma=0.8, size=5000)  # seconds, around 11 ms
    counts = tuple((b, float(np.sum(values <= b))) for b in BUCKETS)
    histogram = analysis.Histogram(counts)
    for q in (0.5, 0.95, 0.99):
        got = histogram.quantile(q)
        want = float(np.quantile(values, q))
        assert got is not None
        upper = next(b for b in BUCKETS if b >= want)
        lower = max((b for b in BUCKETS if b < want), default=0.0)
        assert lower <= got <= upper, (q, got, want)


def test_a_quantile_beyond_the_last_finite_bucket_is_its_bound_and_none_without_data() -> None:
    assert analysis.Histogram(((1.0, 0.0), (float("inf"), 10.0))).quantile(0.9) == 1.0
    assert analysis.Histogram(((1.0, 0.0), (float("inf"), 0.0))).quantile(0.9) is None


def test_a_window_counts_restarted_and_new_pods_and_forgets_gone_ones() -> None:
    before = {"a": sample(100), "b": sample(50), "gone": sample(70)}
    after = {"a": sample(130), "b": sample(5), "new": sample(9)}
    delta = analysis.window(before, after)
    assert delta.success == 30 + 5 + 9


def test_a_measurement_fails_on_a_bound_and_says_which() -> None:
    failing = traffic(30, sample(80, failure=20), sample(100))
    verdict = analysis.measure([{"name": "successRate", "min": 0.95}], 10, failing, "t")
    assert verdict["verdict"] == "Failed"
    assert verdict["values"]["successRate"] == 0.8
    assert "successRate 0.8 < min 0.95" in verdict["message"]


def test_latency_relative_to_stable_fails_a_slower_canary() -> None:
    slow = traffic(30, sample(100, latency_ms=30), sample(100, latency_ms=8))
    verdict = analysis.measure([{"name": "latencyP95", "relativeToStable": 1.2}], 10, slow, "t")
    assert verdict["verdict"] == "Failed"
    assert verdict["values"]["latencyP95"] > verdict["values"]["stable.latencyP95"]
    assert "x stable's" in verdict["message"]


def test_too_little_traffic_is_inconclusive_and_says_how_much() -> None:
    thin = traffic(30, sample(3), sample(300))
    verdict = analysis.measure([{"name": "successRate", "min": 0.95}], 10, thin, "t")
    assert verdict["verdict"] == "Inconclusive"
    assert "3 of 10 samples" in verdict["message"]


def test_mirror_agreement_counts_agreeing_copies_only() -> None:
    copies = analysis.Sample(mirror={"agree": 45, "disagree": 5, "error": 50})
    window = traffic(30, analysis.Sample(), copies)  # stable's pods count the copies
    verdict = analysis.measure([{"name": "mirrorAgreement", "min": 0.95}], 10, window, "t")
    assert verdict["verdict"] == "Failed"
    assert verdict["values"]["mirrorAgreement"] == 0.9


# the state machine --------------------------------------------------------------------------


def test_the_first_revision_is_stable_at_once() -> None:
    plan = rollout.plan(spec("first"), None, rollout.Observation(), T0)
    assert plan.status["phase"] == "Healthy"
    assert (plan.stable_revision, plan.canary_revision, plan.stable_replicas) == ("first", None, 4)


def test_a_new_revision_starts_a_canary_that_gets_no_traffic_until_ready() -> None:
    plan = rollout.plan(spec(), healthy(), rollout.Observation(), T0)
    assert plan.status["phase"] == "Progressing"
    assert plan.status["stepIndex"] == 0
    assert (plan.canary_revision, plan.weight, plan.target) == ("new", 0, "stable")
    assert plan.canary_replicas == 1, "20% of 4 next to 4 stable: one pod"
    assert plan.events[0][:2] == ("Normal", "RolloutStarted")
    ready = rollout.plan(
        spec(), roundtrip(plan.status), rollout.Observation(canary_ready=1, stable_ready=4), at(5)
    )
    assert ready.status["stepIndex"] == 1, "setWeight done once the canary is Ready"
    assert (ready.weight, ready.target) == (20, "both")
    assert ready.status["actualWeight"] == 20.0


def test_a_canary_not_ready_within_the_deadline_rolls_back_with_the_reason() -> None:
    started = rollout.plan(spec(), healthy(), rollout.Observation(), T0)
    obs = rollout.Observation(
        canary_trouble="Unschedulable: pod new-x is Pending: 0/1 nodes are available: 1 "
        "Insufficient nvidia.com/gpu"
    )
    waiting = rollout.plan(spec(), roundtrip(started.status), obs, at(100))
    message = waiting.status["message"]
    assert message.startswith("step 0: CapacityBlocked: waiting for the canary: 0/1 ready")
    assert "Insufficient nvidia.com/gpu" in message
    gone = rollout.plan(spec(), roundtrip(waiting.status), obs, at(301))
    assert gone.status["phase"] == "RolledBack"
    assert "progressDeadlineSeconds" in gone.status["message"]
    assert gone.weight == 0 and gone.target == "stable"


def _through_pause(replicas: int = 4) -> dict[str, Any]:
    ready = rollout.Observation(canary_ready=1, stable_ready=replicas)
    status = rollout.plan(spec(replicas=replicas), healthy(), ready, T0).status
    status = rollout.plan(spec(replicas=replicas), roundtrip(status), ready, at(1)).status
    assert status["stepIndex"] == 1
    status = rollout.plan(spec(replicas=replicas), roundtrip(status), ready, at(30)).status
    assert status["stepIndex"] == 1, "the 1m pause still runs"
    status = rollout.plan(spec(replicas=replicas), roundtrip(status), ready, at(62)).status
    assert status["stepIndex"] == 2, "the pause is over"
    return status


def test_a_timed_pause_ends_on_the_clock_and_survives_a_restart() -> None:
    _through_pause()


def test_analysis_needs_count_successes_one_per_interval_and_never_passes_on_no_data() -> None:
    status = _through_pause()
    ready = rollout.Observation(canary_ready=1, stable_ready=4)
    plan = rollout.plan(spec(), status, ready, at(63))
    assert plan.status["stepIndex"] == 2 and not plan.status["measurements"]
    assert plan.reset_window, "a baseline is taken at the start"
    # An interval not yet over, then one over with good traffic.
    early = rollout.Observation(
        canary_ready=1, stable_ready=4, traffic=traffic(10, sample(100), sample(400))
    )
    plan = rollout.plan(spec(), roundtrip(plan.status), early, at(73))
    assert not plan.status["measurements"] and not plan.reset_window
    good = rollout.Observation(
        canary_ready=1, stable_ready=4, traffic=traffic(31, sample(100), sample(400))
    )
    plan = rollout.plan(spec(), roundtrip(plan.status), good, at(94))
    assert [m["verdict"] for m in plan.status["measurements"]] == ["Successful"]
    assert plan.reset_window
    plan = rollout.plan(spec(), roundtrip(plan.status), good, at(125))
    assert plan.status["stepIndex"] == 3, "two successes: the step is done"
    assert ("Normal", "AnalysisSuccessful") in [e[:2] for e in plan.events]


def test_one_failed_measurement_over_the_limit_rolls_back_with_the_values() -> None:
    status = rollout.plan(
        spec(), _through_pause(), rollout.Observation(canary_ready=1), at(63)
    ).status
    bad = rollout.Observation(
        canary_ready=1, stable_ready=4, traffic=traffic(31, sample(80, 20), sample(400))
    )
    plan = rollout.plan(spec(), roundtrip(status), bad, at(95))
    assert plan.status["phase"] == "RolledBack"
    assert plan.status["measurements"][-1]["values"]["successRate"] == 0.8
    assert "analysis failed: successRate 0.8 < min 0.95" in plan.status["message"]
    assert plan.events[-1][:2] == ("Warning", "RolledBack")
    assert (plan.weight, plan.target, plan.canary_replicas) == (0, "stable", 1)
    later = rollout.plan(spec(), roundtrip(plan.status), rollout.Observation(), at(95 + 31))
    assert later.canary_replicas == 0 and later.canary_revision is None, (
        "scaled down after the delay"
    )
    assert later.status["phase"] == "RolledBack", "the same revision is not tried again by itself"


def test_too_little_traffic_pauses_for_a_person_after_the_inconclusive_limit() -> None:
    status = rollout.plan(
        spec(), _through_pause(), rollout.Observation(canary_ready=1), at(63)
    ).status
    thin = rollout.Observation(
        canary_ready=1, stable_ready=4, traffic=traffic(31, sample(2), sample(8))
    )
    plan = rollout.plan(spec(), roundtrip(status), thin, at(95))
    assert plan.status["phase"] == "Progressing", "one inconclusive is within the limit"
    plan = rollout.plan(spec(), roundtrip(plan.status), thin, at(127))
    assert plan.status["phase"] == "Paused"
    assert "2 of 10 samples" in plan.status["message"]
    assert plan.canary_revision == "new", "never a rollback for want of data"
    promoted = rollout.plan(
        spec(),
        roundtrip(plan.status),
        rollout.Observation(canary_ready=1, action="promote/1"),
        at(130),
    )
    assert promoted.status["stepIndex"] == 3 and promoted.status["lastAction"] == "promote/1"


def test_an_untimed_pause_waits_for_a_person_then_the_canary_is_promoted() -> None:
    s = spec(steps=[{"setWeight": 50}, {"pause": {}}])
    ready = rollout.Observation(canary_ready=4, stable_ready=4)
    plan = rollout.plan(s, healthy(), ready, T0)
    assert plan.status["phase"] == "Paused" and "until a person promotes" in plan.status["message"]
    plan = rollout.plan(s, roundtrip(plan.status), ready, at(600))
    assert plan.status["phase"] == "Paused", "no timer ends a pause without a duration"
    plan = rollout.plan(
        s,
        roundtrip(plan.status),
        rollout.Observation(canary_ready=4, stable_ready=4, action="promote/a"),
        at(601),
    )
    assert plan.status["phase"] == "Healthy"
    assert (plan.stable_revision, plan.canary_revision) == ("new", None)
    assert ("Normal", "Promoted") in [e[:2] for e in plan.events]


def test_promotion_grows_the_canary_first_then_moves_all_traffic() -> None:
    s = spec(steps=[{"setWeight": 50}])
    plan = rollout.plan(s, healthy(), rollout.Observation(canary_ready=4, stable_ready=4), T0)
    assert plan.status["phase"] == "Healthy", "already big enough: promoted at once"
    plan = rollout.plan(s, healthy(), rollout.Observation(canary_ready=4, stable_ready=4), T0)
    small = rollout.Observation(canary_ready=1, stable_ready=4)
    s4 = spec(steps=[{"setWeight": 20}])
    plan = rollout.plan(s4, healthy(), small, T0)
    assert plan.status["phase"] == "Promoting"
    assert (plan.canary_replicas, plan.stable_replicas) == (4, 4)
    assert plan.target == "both"
    done = rollout.plan(
        s4, roundtrip(plan.status), rollout.Observation(canary_ready=4, stable_ready=4), at(10)
    )
    assert (done.stable_revision, done.stable_replicas, done.canary_revision) == ("new", 4, None)
    assert done.target == "stable"


def test_in_place_capacity_replaces_stable_pods_one_for_one() -> None:
    s = spec(steps=[{"setWeight": 25}, {"pause": {}}], capacityMode="InPlace")
    plan = rollout.plan(s, healthy(), rollout.Observation(canary_ready=1, stable_ready=3), T0)
    assert (plan.canary_replicas, plan.stable_replicas) == (1, 3)


def test_replica_ratio_reports_the_weight_it_really_gives() -> None:
    s = spec(replicas=2, steps=[{"setWeight": 10}, {"pause": {}}])
    plan = rollout.plan(s, healthy(), rollout.Observation(canary_ready=1, stable_ready=2), T0)
    assert plan.weight == 10 and plan.canary_replicas == 1
    assert plan.status["actualWeight"] == pytest.approx(33.3, abs=0.1)
    routed = spec(replicas=2, steps=[{"setWeight": 10}, {"pause": {}}], gateway=True)
    plan = rollout.plan(routed, healthy(), rollout.Observation(canary_ready=1, stable_ready=2), T0)
    assert plan.status["actualWeight"] == 10 and plan.target == "stable", "the route splits"


def test_a_newer_revision_mid_rollout_restarts_the_canary_with_it() -> None:
    status = _through_pause()
    plan = rollout.plan(spec("newer"), status, rollout.Observation(stable_ready=4), at(70))
    assert (plan.status["stepIndex"], plan.status["canaryRevision"]) == (0, "newer")
    assert plan.status["stableRevision"] == "old"
    assert plan.events[0][:2] == ("Normal", "RolloutRestarted")


def test_going_back_to_the_stable_revision_cancels_the_canary() -> None:
    plan = rollout.plan(spec("old"), _through_pause(), rollout.Observation(), at(70))
    assert plan.status["phase"] == "Healthy" and plan.canary_revision is None


def test_abort_then_retry() -> None:
    status = _through_pause()
    aborted = rollout.plan(
        spec(), status, rollout.Observation(canary_ready=1, action="abort/1"), at(70)
    )
    assert (
        aborted.status["phase"] == "RolledBack"
        and "aborted by a person" in aborted.status["message"]
    )
    retried = rollout.plan(
        spec(), roundtrip(aborted.status), rollout.Observation(action="retry/2"), at(80)
    )
    assert retried.status["phase"] == "Progressing" and retried.status["stepIndex"] == 0


@pytest.mark.parametrize("stop", range(12))
def test_a_restart_at_any_point_resumes_the_same_step_with_the_same_timers(stop: int) -> None:
    """Run a whole rollout; at tick ``stop`` the operator 'restarts' (status through JSON, no
    memory): the plans after it must equal those of the run that never stopped."""
    ready = rollout.Observation(canary_ready=4, stable_ready=4)
    good = rollout.Observation(
        canary_ready=4, stable_ready=4, traffic=traffic(31, sample(100), sample(400))
    )
    ticks = [
        (0, ready),
        (5, ready),
        (65, ready),
        (66, ready),
        (97, good),
        (128, good),
        (129, ready),
        (130, ready),
        (131, rollout.Observation(canary_ready=4, stable_ready=4, action="promote/x")),
        (132, ready),
        (133, ready),
        (134, ready),
    ]
    straight: list[dict[str, Any]] = []
    status: dict[str, Any] | None = healthy()
    for t, obs in ticks:
        status = rollout.plan(spec(), status, obs, at(t)).status
        straight.append(status)
    resumed: dict[str, Any] | None = healthy()
    for i, (t, obs) in enumerate(ticks):
        if i == stop:
            resumed = roundtrip(resumed or {})
        resumed = rollout.plan(spec(), resumed, obs, at(t)).status
        assert roundtrip(resumed) == roundtrip(straight[i]), (i, t)
    assert straight[-1]["phase"] == "Healthy" and straight[-1]["stableRevision"] == "new"

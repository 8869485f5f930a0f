"""The operator's own metrics (telemetry.py), read back through their exposition."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from polyserve_operator import settings, telemetry


def samples(t: telemetry.Telemetry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, keyed by name and labels."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(t.exposition().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(t: telemetry.Telemetry, metric: str, **labels: str) -> float | None:
    return samples(t).get((metric, frozenset(labels.items())))


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


MODEL = {"kind": "InferenceModel", "namespace": "ml", "name": "resnet"}


def test_reconciles_are_counted_by_kind_and_result() -> None:
    t = telemetry.Telemetry()
    t.reconciled("InferenceModel", "success")
    t.reconciled("InferenceModel", "success")
    t.reconciled("InferenceEnsemble", "retry")
    t.failed("InferenceModel", "ApplyFailed")
    total = "polyserve_operator_reconciles_total"
    assert value(t, total, kind="InferenceModel", result="success") == 2
    assert value(t, total, kind="InferenceEnsemble", result="retry") == 1
    errors = "polyserve_operator_errors_total"
    assert value(t, errors, kind="InferenceModel", reason="ApplyFailed") == 1
    # Every outcome exists at 0 before it happens, so that increase() sees the first one.
    assert value(t, total, kind="InferenceEnsemble", result="error") == 0


def test_rollout_phase_is_one_for_the_current_phase_and_zero_for_the_others() -> None:
    t = telemetry.Telemetry()
    t.rollout("ml", "resnet", "Progressing", step=2)
    phases = {
        p: value(t, "polyserve_operator_rollout_phase", **MODEL, phase=p) for p in telemetry.PHASES
    }
    assert phases == {p: (1.0 if p == "Progressing" else 0.0) for p in telemetry.PHASES}
    assert value(t, "polyserve_operator_rollout_step", **MODEL) == 2


def test_rollout_change_time_moves_only_when_the_phase_or_the_step_does() -> None:
    clock = Clock()
    t = telemetry.Telemetry(wall_clock=clock)
    changed = "polyserve_operator_rollout_changed_timestamp_seconds"
    t.rollout("ml", "resnet", "Progressing", step=0)
    assert value(t, changed, **MODEL) == clock.now
    first = clock.now
    clock.now += 60
    t.rollout("ml", "resnet", "Progressing", step=0)  # a reconcile that saw no change
    assert value(t, changed, **MODEL) == first
    t.rollout("ml", "resnet", "Progressing", step=1)
    assert value(t, changed, **MODEL) == clock.now


def test_an_unknown_rollout_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rollout phase"):
        telemetry.Telemetry().rollout("ml", "resnet", "Exploding")


def test_rollout_events_are_counted_per_resource() -> None:
    t = telemetry.Telemetry()
    t.rollout_event("ml", "resnet", "started")
    t.rollout_event("ml", "resnet", "rolled_back")
    total = "polyserve_operator_rollouts_total"
    assert value(t, total, **MODEL, event="started") == 1
    assert value(t, total, **MODEL, event="rolled_back") == 1
    # At 0 before the first promotion, so that increase() sees the first one.
    assert value(t, total, **MODEL, event="promoted") == 0


def test_a_tier_change_counts_one_move_and_leaves_one_current_tier() -> None:
    t = telemetry.Telemetry()
    t.tier("ml", "resnet", "xeon")
    t.tier("ml", "resnet", "xeon")
    t.tier("ml", "resnet", "gpu")
    tiers = {
        dict(labels)["tier"]: v
        for (name, labels), v in samples(t).items()
        if name == "polyserve_operator_tier"
    }
    assert tiers == {"gpu": 1.0}
    moves = "polyserve_operator_tier_moves_total"
    assert value(t, moves, **MODEL, source="xeon", target="gpu") == 1


def test_status_sets_ready_rollout_and_tier_blocked_from_what_the_operator_wrote() -> None:
    t = telemetry.Telemetry()
    t.status(
        "InferenceModel",
        "ml",
        "resnet",
        {
            "conditions": [{"type": "Ready", "status": "False"}],
            "rollout": {"phase": "Paused", "stepIndex": 1},
            "tier": {"current": "xeon", "target": "gpu", "blocked": "Unschedulable: no node"},
        },
    )
    assert value(t, "polyserve_operator_resource_ready", **MODEL) == 0
    assert value(t, "polyserve_operator_rollout_phase", **MODEL, phase="Paused") == 1
    assert value(t, "polyserve_operator_tier", **MODEL, tier="xeon") == 1
    assert value(t, "polyserve_operator_tier_blocked", **MODEL, tier="gpu") == 1
    # The move is given up: no target any more, so nothing is blocked.
    t.status("InferenceModel", "ml", "resnet", {"tier": {"current": "xeon"}})
    assert value(t, "polyserve_operator_tier_blocked", **MODEL, tier="gpu") == 0


def test_forgetting_a_resource_drops_its_gauges_but_keeps_its_counters() -> None:
    t = telemetry.Telemetry()
    t.ready("InferenceModel", "ml", "resnet", True)
    t.rollout("ml", "resnet", "Healthy")
    t.tier("ml", "resnet", "xeon")
    t.tier_blocked("ml", "resnet", "gpu", True)
    t.rollout_event("ml", "resnet", "started")
    t.forget("InferenceModel", "ml", "resnet")
    left = {name for (name, labels), _ in samples(t).items() if ("name", "resnet") in labels}
    assert left == {"polyserve_operator_rollouts_total", "polyserve_operator_rollouts_created"}


def test_metrics_are_served_over_http_on_the_port_asked_for() -> None:
    t = telemetry.Telemetry()
    t.reconciled("InferenceModel", "success")
    server = t.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            body = r.read().decode()
    finally:
        server.close()
    assert 'polyserve_operator_reconciles_total{kind="InferenceModel",result="success"} 1.0' in body


def test_the_metrics_port_is_not_the_liveness_port_by_default() -> None:
    assert settings.Settings().metrics_port not in (0, 8080)


def test_rollout_events_are_counted_from_the_phase_changes_this_process_sees() -> None:
    t = telemetry.Telemetry()
    total = "polyserve_operator_rollouts_total"
    t.rollout("ml", "resnet", "Progressing")  # first sight (a restart): nothing counted
    assert value(t, total, **MODEL, event="started") == 0
    for phase in ("Promoting", "Healthy", "Progressing", "Paused", "RolledBack", "Progressing"):
        t.rollout("ml", "resnet", phase)
    counts = {e: value(t, total, **MODEL, event=e) for e in ("started", "promoted", "rolled_back")}
    assert counts == {"started": 2, "promoted": 1, "rolled_back": 1}


class TemporaryError(Exception):
    """Named as kopf's is: counted tells kopf's errors by their class names."""


class PermanentError(Exception):
    pass


def test_counted_runs_count_success_retry_invalid_and_error_and_reraise() -> None:
    t = telemetry.Telemetry()
    with telemetry.counted("InferenceModel", into=t):
        pass
    for error in (TemporaryError("wait"), PermanentError("bad spec"), KeyError("bug")):
        with pytest.raises(type(error)), telemetry.counted("InferenceModel", into=t):
            raise error
    total = "polyserve_operator_reconciles_total"
    counts = {
        r: value(t, total, kind="InferenceModel", result=r)
        for r in ("success", "retry", "invalid", "error")
    }
    assert counts == {"success": 1, "retry": 1, "invalid": 1, "error": 1}


def test_counted_tells_kopf_errors_apart() -> None:
    kopf = pytest.importorskip("kopf")
    t = telemetry.Telemetry()
    with pytest.raises(kopf.TemporaryError), telemetry.counted("InferenceModel", into=t):
        raise kopf.TemporaryError("wait", delay=1)
    with pytest.raises(kopf.PermanentError), telemetry.counted("InferenceModel", into=t):
        raise kopf.PermanentError("bad spec")
    total = "polyserve_operator_reconciles_total"
    assert value(t, total, kind="InferenceModel", result="retry") == 1
    assert value(t, total, kind="InferenceModel", result="invalid") == 1

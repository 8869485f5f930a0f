"""`polyserve rollout`: what a person reads, and the annotation an action writes."""

from __future__ import annotations

from typing import Any

from polyserve_operator import rollout_commands


def _body(rollout: dict[str, Any] | None) -> dict[str, Any]:
    steps = [{"setWeight": 20}, {"pause": {}}, {"analysis": {}}]
    return {
        "kind": "InferenceModel",
        "metadata": {"name": "scorer", "namespace": "demo"},
        "spec": {"rollout": {"strategy": "Canary", "canary": {"steps": steps}}},
        "status": {"rollout": rollout} if rollout else {},
    }


def test_status_shows_the_step_the_weights_and_each_measurement() -> None:
    text = rollout_commands.describe(
        _body(
            {
                "phase": "Paused",
                "stableRevision": "aaa",
                "canaryRevision": "bbb",
                "stepIndex": 1,
                "weight": 20,
                "actualWeight": 33.3,
                "message": "step 1: paused until a person promotes",
                "measurements": [
                    {"time": "t1", "verdict": "Successful", "values": {"successRate": 1.0}}
                ],
            }
        )
    )
    assert "phase:    Paused" in text
    assert "step:     2/3 pause (until promoted)" in text
    assert "weight:   20% to the canary (really 33.3%)" in text
    assert "measured: t1 Successful: successRate=1.0" in text


def test_status_of_a_resource_without_a_canary_says_so() -> None:
    body = _body(None)
    body["spec"]["rollout"] = {"strategy": "RollingUpdate"}
    assert "no canary rollout (strategy RollingUpdate)" in rollout_commands.describe(body)


def test_watch_stops_when_the_rollout_ends_or_waits_for_a_person() -> None:
    assert {"Healthy", "RolledBack", "Paused"} == set(rollout_commands.FINAL)

"""Status from Deployment and pod state: never Ready over crashing or Pending pods."""

from __future__ import annotations

import datetime
from typing import Any

from polyserve_operator import conditions

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=5)


def _deployment(*, ready: int, updated: int, replicas: int, generation: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
        },
    }


def _pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "worker-1"}, "status": status}


def _compute(obs: conditions.Observation, desired: int = 2, **kw: Any) -> dict[str, Any]:
    return conditions.compute(
        generation=7, desired_replicas=desired, observation=obs, previous=None, now=NOW, **kw
    )


def _conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_replicas_ready_and_updated_is_ready() -> None:
    status = _compute(conditions.Observation(_deployment(ready=2, updated=2, replicas=2)))
    c = _conds(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "AllReplicasReady")
    assert c["Progressing"]["status"] == "False"
    assert c["Degraded"]["status"] == "False"
    assert status["observedGeneration"] == 7
    assert c["Ready"]["observedGeneration"] == 7


def test_a_crash_looping_pod_is_never_ready_even_when_the_deployment_counts_it() -> None:
    pod = _pod(
        phase="Running",
        containerStatuses=[
            {
                "name": "worker",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m"}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
            }
        ],
    )
    obs = conditions.Observation(_deployment(ready=2, updated=2, replicas=2), [pod])
    status = _compute(obs)
    c = _conds(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "CrashLoopBackOff")
    assert "OOMKilled" in c["Ready"]["message"]
    assert c["Degraded"]["status"] == "True"
    assert status["lastFailure"]["reason"] == "CrashLoopBackOff"


def test_a_failing_fetch_says_to_check_the_artifact() -> None:
    pod = _pod(
        phase="Pending",
        initContainerStatuses=[
            {"name": "fetch-bert", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
        ],
    )
    status = _compute(conditions.Observation(_deployment(ready=0, updated=1, replicas=1), [pod]))
    assert "check artifact.uri" in _conds(status)["Ready"]["message"]


def test_a_fetch_running_again_between_back_offs_stays_degraded_until_it_succeeds() -> None:
    last = {"terminated": {"reason": "Error", "exitCode": 1, "message": "fetch: not found"}}
    retrying = {
        "name": "fetch-bert",
        "state": {"running": {"startedAt": "2026-11-27T12:00:00Z"}},
        "lastState": last,
        "restartCount": 2,
        "ready": False,
    }
    pod = _pod(phase="Pending", initContainerStatuses=[retrying])
    c = _conds(_compute(conditions.Observation(_deployment(ready=0, updated=1, replicas=1), [pod])))
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "CrashLoopBackOff")
    assert "fetch: not found" in c["Degraded"]["message"]
    assert "check artifact.uri" in c["Degraded"]["message"]
    done = {**retrying, "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}
    pod = _pod(phase="Pending", initContainerStatuses=[done])
    c = _conds(_compute(conditions.Observation(_deployment(ready=0, updated=1, replicas=1), [pod])))
    assert c["Degraded"]["status"] == "False"


def test_a_worker_that_restarted_once_and_is_ready_now_is_no_problem() -> None:
    worker = {
        "name": "worker",
        "state": {"running": {}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        "restartCount": 1,
        "ready": True,
    }
    pod = _pod(phase="Running", containerStatuses=[worker])
    c = _conds(_compute(conditions.Observation(_deployment(ready=2, updated=2, replicas=2), [pod])))
    assert c["Ready"]["status"] == "True" and c["Degraded"]["status"] == "False"


def test_the_workers_own_last_words_reach_status_the_moment_it_exits() -> None:
    log_tail = (
        "2026-12-01 INFO polyserve_worker: loading 'mlp'\n"
        "polyserve-worker: exiting: model 'mlp' failed to load: model 'mlp': input 'x' has "
        "dims [4] but the model says [8] (start with --exit-on-error=false to serve the "
        "other models anyway)\n"
    )
    exited = _pod(
        phase="Running",
        containerStatuses=[
            {
                "name": "worker",
                "restartCount": 0,
                "state": {"terminated": {"reason": "Error", "exitCode": 1, "message": log_tail}},
            }
        ],
    )
    status = _compute(conditions.Observation(_deployment(ready=0, updated=1, replicas=1), [exited]))
    failure = status["lastFailure"]
    assert failure["reason"] == "Error"
    assert (
        "container worker exited: Error, code 1: polyserve-worker: exiting: model 'mlp'"
        in (failure["message"])
    )
    assert "loading 'mlp'" not in failure["message"], "only the last line, the reason"
    backing_off = _pod(
        phase="Running",
        containerStatuses=[
            {
                "name": "worker",
                "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {
                    "terminated": {"reason": "Error", "exitCode": 1, "message": log_tail}
                },
            }
        ],
    )
    status = _compute(
        conditions.Observation(_deployment(ready=0, updated=1, replicas=1), [backing_off])
    )
    assert "last exit: Error, code 1: polyserve-worker: exiting" in status["lastFailure"]["message"]


def test_a_pending_pod_on_the_gpu_pool_says_what_it_needs() -> None:
    pod = _pod(
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    obs = conditions.Observation(_deployment(ready=0, updated=1, replicas=1), [pod])
    status = _compute(obs, placement_hint="gpu pool node with 1 allocatable nvidia.com/gpu")
    ready = _conds(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    assert "1 allocatable nvidia.com/gpu" in ready["message"]


def test_a_rollout_in_progress_is_progressing_and_not_ready() -> None:
    obs = conditions.Observation(_deployment(ready=1, updated=1, replicas=3))
    c = _conds(_compute(obs))
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "ReplicasNotReady")
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("True", "RollingOut")


def test_a_deployment_that_has_not_seen_its_new_spec_is_not_ready() -> None:
    dep = _deployment(ready=2, updated=2, replicas=2)
    dep["metadata"]["generation"] = 3
    assert _conds(_compute(conditions.Observation(dep)))["Ready"]["status"] == "False"


def test_an_exceeded_progress_deadline_is_degraded() -> None:
    dep = _deployment(ready=0, updated=1, replicas=1)
    dep["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    ]
    c = _conds(_compute(conditions.Observation(dep), desired=1))
    assert c["Degraded"]["reason"] == "ProgressDeadlineExceeded"


def test_transition_times_change_only_when_a_status_changes() -> None:
    first = _compute(conditions.Observation(_deployment(ready=1, updated=2, replicas=2)))
    second = conditions.compute(
        generation=7,
        desired_replicas=2,
        observation=conditions.Observation(_deployment(ready=2, updated=2, replicas=2)),
        previous=first,
        now=LATER,
    )
    a, b = _conds(first), _conds(second)
    assert a["Degraded"]["lastTransitionTime"] == b["Degraded"]["lastTransitionTime"]
    assert a["Ready"]["lastTransitionTime"] != b["Ready"]["lastTransitionTime"]


def test_recovery_clears_the_last_failure() -> None:
    failed = _compute(None, failure=conditions.Problem("ApplyFailed", "boom"))
    assert failed["lastFailure"]["reason"] == "ApplyFailed"
    healthy = conditions.compute(
        generation=7,
        desired_replicas=2,
        observation=conditions.Observation(_deployment(ready=2, updated=2, replicas=2)),
        previous=failed,
        now=LATER,
    )
    assert healthy["lastFailure"] is None


def test_zero_replicas_is_not_ready_and_says_why() -> None:
    c = _conds(_compute(conditions.Observation(_deployment(ready=0, updated=0, replicas=0)), 0))
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "ScaledToZero")

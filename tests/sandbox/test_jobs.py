"""The sandbox's Job controller on the real store: pods, retries, deadlines, conditions.

Pods are not run here (the kubelet's part, tested on its own); a test plays the kubelet's one
visible act, a pod's phase, with a status patch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from polyserve_sandbox import defaults, jobs
from polyserve_sandbox.apiserver import errors
from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.test_fleet_controllers import until

Obj = dict[str, Any]
NS = "batch-work"


@pytest.fixture
async def store() -> AsyncIterator[apistore.Store]:
    s = apistore.Store()
    defaults.register(s)
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield s


@pytest.fixture
async def controller(store: apistore.Store) -> AsyncIterator[jobs.JobController]:
    c = jobs.JobController(store)
    c.start()
    yield c
    await c.stop()


def job(name: str, restart: str | None = "Never", **spec: Any) -> Obj:
    pod_spec: Obj = {"containers": [{"name": "tune", "image": "tools:1"}]}
    if restart is not None:
        pod_spec["restartPolicy"] = restart
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"template": {"metadata": {"labels": {"app": "tune"}}, "spec": pod_spec}, **spec},
    }


def pods_of(store: apistore.Store, name: str) -> list[Obj]:
    return store.list("v1", "Pod", NS, label_selector={jobs.JOB_NAME: name})


def active(store: apistore.Store, name: str) -> list[Obj]:
    return [
        p
        for p in pods_of(store, name)
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        and not p["metadata"].get("deletionTimestamp")
    ]


def finish(store: apistore.Store, pod: Obj, phase: str) -> None:
    store.patch(
        "v1",
        "Pod",
        NS,
        pod["metadata"]["name"],
        {"status": {"phase": phase}},
        patch_type="merge",
        subresource="status",
    )


def conditions(store: apistore.Store, name: str) -> list[tuple[str, str, str]]:
    found = store.get("batch/v1", "Job", NS, name)
    return [
        (c["type"], c["reason"], c["message"])
        for c in (found.get("status") or {}).get("conditions") or []
    ]


async def test_a_job_runs_one_pod_labelled_and_owned_as_the_real_controller_does(
    store: apistore.Store, controller: jobs.JobController
) -> None:
    created = store.create(job("tune-a"))
    assert created["spec"]["completions"] == 1 and created["spec"]["backoffLimit"] == 6
    assert created["spec"]["selector"] == {"matchLabels": {jobs.JOB_NAME: "tune-a"}}
    (pod,) = await until("the job's pod", lambda: pods_of(store, "tune-a"))
    labels = pod["metadata"]["labels"]
    assert labels["app"] == "tune"
    assert labels[jobs.JOB_NAME] == labels[jobs.LEGACY_JOB_NAME] == "tune-a"
    assert labels[jobs.CONTROLLER_UID] == created["metadata"]["uid"]
    assert pod["metadata"]["name"].startswith("tune-a-")
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "Job",
        created["metadata"]["uid"],
        True,
    )
    status = await until(
        "the job's status",
        lambda: (
            (store.get("batch/v1", "Job", NS, "tune-a").get("status") or {}).get("startTime")
            and store.get("batch/v1", "Job", NS, "tune-a")["status"]
        ),
    )
    assert status["active"] == 1 and status["succeeded"] == 0 and status["failed"] == 0


async def test_a_job_whose_pod_succeeds_is_complete_with_the_real_conditions(
    store: apistore.Store, controller: jobs.JobController
) -> None:
    store.create(job("tune-b"))
    (pod,) = await until("the job's pod", lambda: pods_of(store, "tune-b"))
    finish(store, pod, "Succeeded")
    await until("Complete", lambda: jobs.finished(store.get("batch/v1", "Job", NS, "tune-b")))
    assert conditions(store, "tune-b") == [
        ("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
        ("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
    ]
    status = store.get("batch/v1", "Job", NS, "tune-b")["status"]
    assert (status["succeeded"], status["active"]) == (1, 0) and status["completionTime"]
    assert len(pods_of(store, "tune-b")) == 1  # nothing more is started


async def test_failed_pods_are_replaced_until_the_backoff_limit_then_the_job_fails(
    store: apistore.Store, controller: jobs.JobController
) -> None:
    store.create(job("tune-c", backoffLimit=1))
    for attempt in (1, 2):
        (pod,) = await until(f"attempt {attempt}", lambda: active(store, "tune-c"))
        finish(store, pod, "Failed")
    await until("Failed", lambda: jobs.finished(store.get("batch/v1", "Job", NS, "tune-c")))
    assert conditions(store, "tune-c") == [
        ("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
        ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
    ]
    assert store.get("batch/v1", "Job", NS, "tune-c")["status"]["failed"] == 2
    assert len(pods_of(store, "tune-c")) == 2


async def test_a_job_past_its_active_deadline_fails_and_its_pods_are_deleted(
    store: apistore.Store, controller: jobs.JobController
) -> None:
    store.create(job("tune-d", activeDeadlineSeconds=1))
    await until("the job's pod", lambda: pods_of(store, "tune-d"))
    await until(
        "DeadlineExceeded",
        lambda: jobs.finished(store.get("batch/v1", "Job", NS, "tune-d")),
        seconds=10,
    )
    assert conditions(store, "tune-d")[-1] == (
        "Failed",
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    await until("its pod gone", lambda: not active(store, "tune-d"))


async def test_a_job_whose_pods_would_restart_forever_is_refused(store: apistore.Store) -> None:
    for restart in (None, "Always"):
        with pytest.raises(errors.ApiError) as refused:
            store.create(job("tune-e", restart=restart))
        assert refused.value.status == 422
        assert "spec.template.spec.restartPolicy" in refused.value.message

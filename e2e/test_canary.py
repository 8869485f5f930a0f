"""Canary rollouts run by the operator, on the local fleet with real traffic the whole time.

A closed-loop client calls the model through its Service while each rollout runs; every
request's outcome is recorded with its time. Each test prints its rollout's timeline (step,
weight, verdict), which `pytest -s` shows.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from e2e.conftest import Cluster, Operator, wait_for
from e2e.loads import ClosedLoop
from polyserve_operator import api, cli
from tests.sandbox import gateway_schemas

ANALYSIS: dict[str, Any] = {
    "interval": "3s",
    "count": 2,
    "minSamples": 5,
    "inconclusiveLimit": 3,
    "metrics": [
        {"name": "successRate", "min": 0.99},
        {"name": "latencyP95", "relativeToStable": 3.0},
    ],
}


#: A canary judged on mirrored copies first: it takes no client traffic until it answers like
#: stable. The stable pods pick up the mirror's ConfigMap a moment after the canary starts (a
#: kubelet syncs mounted ConfigMaps); measurements before that are Inconclusive.
MIRRORED: dict[str, Any] = {
    "steps": [{"analysis": {}}, {"setWeight": 50}],
    "analysis": {
        **ANALYSIS,
        "inconclusiveLimit": 10,
        "metrics": [
            {"name": "successRate", "min": 0.99},
            {"name": "mirrorAgreement", "min": 0.99},
        ],
    },
    "mirror": {"percent": 100, "compare": {"*": {"maxAbsDiff": 1e-4}}},
}


def _model(
    cluster: Cluster,
    namespace: str,
    artifact: str,
    *,
    steps: list[dict[str, Any]] | None = None,
    analysis: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    **canary: Any,
) -> dict[str, Any]:
    cluster.require_sandbox("the stand-in artifacts are files on this machine")
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "scorer", "namespace": namespace},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": cluster.artifacts[artifact].as_uri()},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                **(config or {}),
            },
            "rollout": {
                "strategy": "Canary",
                "canary": {
                    "steps": steps or [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}],
                    "analysis": analysis or ANALYSIS,
                    "progressDeadlineSeconds": 120,
                    "abortScaleDownDelaySeconds": 2,
                    **canary,
                },
            },
        },
    }


def _rollout(cluster: Cluster, namespace: str, kind: str = "InferenceModel") -> dict[str, Any]:
    body = cluster.client.get(api.API_VERSION, kind, namespace, "scorer") or {}
    rollout: dict[str, Any] = (body.get("status") or {}).get("rollout") or {}
    return rollout


@dataclass
class Timeline:
    """The rollout's status as it changes, for the test's printout and assertions."""

    cluster: Cluster
    namespace: str
    kind: str = "InferenceModel"
    rows: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Timeline:
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._poll()  # the state the test ended on
        # sys.__stdout__: the in-process operator (kopf's runner) holds sys.stdout meanwhile.
        text = "\n".join(f"{t:6.1f}s  {row}" for t, row in self.rows)
        print(f"\ntimeline:\n{text}", file=sys.__stdout__, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._poll()

    def _poll(self) -> None:
        try:
            r = _rollout(self.cluster, self.namespace, self.kind)
        except Exception as exc:  # the API may be busy; the next poll catches up
            self.rows.append((time.monotonic() - self._start, f"(status unread: {exc})"))
            return
        measured = (r.get("measurements") or [{}])[-1]
        row = (
            f"{r.get('phase', '-'):<11} step {r.get('stepIndex', '-')!s:<2} "
            f"weight {r.get('weight', '-')!s:>3}% (actual {r.get('actualWeight', '-')}) "
            f"{measured.get('verdict', '')} {measured.get('values', '') or ''}"
        )
        if not self.rows or self.rows[-1][1] != row:
            self.rows.append((time.monotonic() - self._start, row))

    def phases(self) -> list[str]:
        return [row.split()[0] for _, row in self.rows]


def _deploy_stable(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> str:
    cluster.client.apply(doc)
    wait_for(
        "the first revision to serve",
        lambda: (
            _rollout(cluster, namespace).get("phase") == "Healthy" and _ready(cluster, namespace)
        ),
        timeout=90,
    )
    return str(_rollout(cluster, namespace)["stableRevision"])


def _ready(cluster: Cluster, namespace: str, kind: str = "InferenceModel") -> bool:
    body = cluster.client.get(api.API_VERSION, kind, namespace, "scorer") or {}
    conds = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    return (conds.get("Ready") or {}).get("status") == "True"


def _addresses(cluster: Cluster, namespace: str) -> tuple[str, str]:
    return (
        cluster.service_address(namespace, "scorer", "http"),
        cluster.service_address(namespace, "scorer", "grpc"),
    )


def _deployments(cluster: Cluster, namespace: str) -> list[str]:
    found = cluster.client.list(
        "apps/v1", "Deployment", namespace, {"app.kubernetes.io/instance": "scorer"}
    )
    return sorted(d["metadata"]["name"] for d in found)


def test_a_good_release_is_promoted_with_no_failed_request(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    doc = _model(cluster, namespace, "double")
    first = _deploy_stable(cluster, namespace, doc)
    http, grpc = _addresses(cluster, namespace)
    with ClosedLoop(http, "scorer", grpc=grpc) as load, Timeline(cluster, namespace) as timeline:
        wait_for("traffic", lambda: load.total() > 20)
        doc["spec"]["artifact"] = {"uri": cluster.artifacts["triple"].as_uri()}
        cluster.client.apply(doc)
        wait_for(
            "the canary to be promoted",
            lambda: (
                (r := _rollout(cluster, namespace)).get("phase") == "Healthy"
                and r.get("stableRevision") != first
            ),
            timeout=120,
        )
        wait_for("the new revision to serve alone", lambda: load.served(3.0) > 20)
    assert not load.failures(), load.failures()[:5]
    assert load.served(2.0) > 0 and load.served(3.0) > 0
    assert "Progressing" in timeline.phases()
    new = _rollout(cluster, namespace)["stableRevision"]
    wait_for(
        "the old revision's Deployment to go",
        lambda: _deployments(cluster, namespace) == [f"scorer-{new}"],
    )


def test_a_release_failing_requests_rolls_back_and_its_failures_stop_with_its_traffic(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    doc = _model(cluster, namespace, "double")
    first = _deploy_stable(cluster, namespace, doc)
    http, grpc = _addresses(cluster, namespace)
    # One request in five has a batch of 3; the new config takes at most 2: the canary fails
    # 20% of requests (400s, which Triton counts as failures), stable none.
    load = ClosedLoop(http, "scorer", grpc=grpc, batches=(1, 1, 3, 1, 1))
    with load, Timeline(cluster, namespace):
        wait_for("traffic", lambda: load.total() > 20)
        doc["spec"]["config"]["max_batch_size"] = 2
        cluster.client.apply(doc)
        rolled = wait_for(
            "the rollback",
            lambda: (r := _rollout(cluster, namespace)).get("phase") == "RolledBack" and r,
            timeout=120,
        )
        rolled_back_at = time.monotonic()
        wait_for(
            "traffic after the rollback",
            lambda: load.counts(since=rolled_back_at + 2)["ok"] > 20,
        )
    assert rolled["stableRevision"] == first
    assert "successRate" in rolled["message"]
    failures = load.failures()
    assert failures, "the canary did get traffic and fail some of it"
    assert all(f.batch == 3 for f in failures), "only what the canary cannot take failed"
    assert not [f for f in failures if f.at > rolled_back_at + 2], "no failure after the rollback"
    big = [o for o in load.outcomes if o.batch == 3]
    share = len(failures) / len(big)
    assert share < 0.9, f"stable kept serving batches of 3 during the canary: {share:.0%} failed"


def test_a_release_three_times_slower_rolls_back_on_latency_relative_to_stable(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    doc = _model(cluster, namespace, "double")
    first = _deploy_stable(cluster, namespace, doc)
    http, grpc = _addresses(cluster, namespace)
    with ClosedLoop(http, "scorer", grpc=grpc) as load, Timeline(cluster, namespace):
        wait_for("traffic", lambda: load.total() > 20)
        # Every request of the new revision waits 30 ms for a batch that never fills.
        doc["spec"]["config"]["dynamic_batching"] = {
            "max_queue_delay_microseconds": 30000,
            "preferred_batch_size": [8],
        }
        cluster.client.apply(doc)
        rolled = wait_for(
            "the rollback",
            lambda: (r := _rollout(cluster, namespace)).get("phase") == "RolledBack" and r,
            timeout=120,
        )
    assert rolled["stableRevision"] == first
    assert "latencyP95" in rolled["message"] and "x stable's" in rolled["message"]
    assert not load.failures(), "slow is not failed: every request was answered"


def test_a_release_that_answers_200s_with_wrong_numbers_rolls_back_on_mirror_agreement(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    # The canary takes no client traffic at all: stable copies requests to it and compares.
    doc = _model(cluster, namespace, "double", **MIRRORED)
    first = _deploy_stable(cluster, namespace, doc)
    http, grpc = _addresses(cluster, namespace)
    with ClosedLoop(http, "scorer", grpc=grpc) as load, Timeline(cluster, namespace):
        wait_for("traffic", lambda: load.total() > 20)
        doc["spec"]["artifact"] = {"uri": cluster.artifacts["triple"].as_uri()}
        cluster.client.apply(doc)
        rolled = wait_for(
            "the rollback",
            lambda: (r := _rollout(cluster, namespace)).get("phase") == "RolledBack" and r,
            timeout=120,
        )
    assert rolled["stableRevision"] == first
    assert "mirrorAgreement" in rolled["message"]
    assert rolled["measurements"][-1]["values"]["mirrorAgreement"] < 0.5
    assert not load.failures() and load.served(3.0) == 0, "clients only ever saw stable"


def _pods_of(cluster: Cluster, namespace: str, revision: str) -> list[str]:
    found = cluster.client.list("v1", "Pod", namespace, {"polyserve.io/revision": revision})
    return [p["metadata"]["name"] for p in found]


def _settled(rollout: dict[str, Any], first: str, bad: str) -> dict[str, Any] | None:
    """The rollout once a release after ``bad`` has ended: promoted, or rolled back."""
    promoted = rollout.get("phase") == "Healthy" and rollout.get("stableRevision") != first
    rolled_back = rollout.get("phase") == "RolledBack" and rollout.get("canaryRevision") != bad
    return rollout if promoted or rolled_back else None


def test_a_good_release_right_after_a_rollback_is_judged_on_its_own_answers(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    # The rolled-back pods keep serving for 30 s after the rollback: the next release starts
    # while they do, and the stable pods' mirror must reach its canary, never them.
    doc = _model(cluster, namespace, "double", **MIRRORED, abortScaleDownDelaySeconds=30)
    first = _deploy_stable(cluster, namespace, doc)
    http, grpc = _addresses(cluster, namespace)
    with ClosedLoop(http, "scorer", grpc=grpc) as load, Timeline(cluster, namespace):
        wait_for("traffic", lambda: load.total() > 20)
        doc["spec"]["artifact"] = {"uri": cluster.artifacts["triple"].as_uri()}
        cluster.client.apply(doc)
        wait_for(
            "the rollback",
            lambda: _rollout(cluster, namespace).get("phase") == "RolledBack",
            timeout=120,
        )
        bad = _rollout(cluster, namespace)["canaryRevision"]
        # The same answers as stable under another revision (a smaller batch limit).
        doc["spec"]["artifact"] = {"uri": cluster.artifacts["double"].as_uri()}
        doc["spec"]["config"]["max_batch_size"] = 4
        cluster.client.apply(doc)
        wait_for(
            "the next release to start while the rolled-back pods still serve",
            lambda: _rollout(cluster, namespace).get("canaryRevision") not in (None, bad),
        )
        assert _pods_of(cluster, namespace, bad), (
            "the rolled-back revision's pods were still there when the next release started"
        )
        ended = wait_for(
            "the good release to be promoted (or rolled back)",
            lambda: _settled(_rollout(cluster, namespace), first, bad),
            timeout=120,
        )
    assert ended["phase"] == "Healthy", ended.get("message")
    assert not load.failures(), load.failures()[:5]


def _gateway(cluster: Cluster, namespace: str) -> str:
    """A Gateway of the sandbox's class with one HTTP listener; its address."""
    cluster.require_sandbox("the sandbox's gateway class; a real cluster brings its own")
    cluster.client.apply(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "inference", "namespace": namespace},
            "spec": {
                "gatewayClassName": "polyserve-sandbox",
                "listeners": [{"name": "http", "protocol": "HTTP", "port": 8080}],
            },
        }
    )
    gateway = wait_for(
        "the gateway's address",
        lambda: (
            (
                g := cluster.client.get(
                    "gateway.networking.k8s.io/v1", "Gateway", namespace, "inference"
                )
            )
            and (g.get("status") or {}).get("addresses")
            and g
        ),
    )
    return f"{gateway['status']['addresses'][0]['value']}:8080"


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_with_the_gateway_api_the_route_carries_exact_weights_and_a_person_promotes(
    cluster: Cluster, operator: Operator, namespace: str, kind: str
) -> None:
    address = _gateway(cluster, namespace)
    doc = _model(
        cluster,
        namespace,
        "double",
        steps=[{"setWeight": 30}, {"pause": {}}],
        trafficRouting={
            "gatewayAPI": {
                "parentRefs": [{"name": "inference", "sectionName": "http"}],
                "routeKind": kind,
            }
        },
    )
    _deploy_stable(cluster, namespace, doc)
    doc["spec"]["artifact"] = {"uri": cluster.artifacts["triple"].as_uri()}
    cluster.client.apply(doc)
    wait_for(
        "the pause at 30%",
        lambda: (
            (r := _rollout(cluster, namespace)).get("phase") == "Paused" and r.get("weight") == 30
        ),
        timeout=90,
    )
    route = cluster.client.get("gateway.networking.k8s.io/v1", kind, namespace, "scorer") or {}
    gateway_schemas.validate({k: v for k, v in route.items() if k != "status"})
    weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}
    canary = _rollout(cluster, namespace)["canaryRevision"]
    assert weights == {"scorer-stable": 70, f"scorer-canary-{canary}": 30}
    # One connection (one keep-alive HTTP connection, or one gRPC channel): split per request.
    grpc = kind == "GRPCRoute"
    load = ClosedLoop(
        None if grpc else address,
        "scorer",
        grpc=address if grpc else None,
        clients=1,
        reconnect=10_000,
    )
    with load:
        wait_for("400 answers", lambda: load.total() >= 400, timeout=60)
    answered = [
        o
        for o in load.outcomes
        if o.ok and o.protocol == ("grpc" if kind == "GRPCRoute" else "http")
    ]
    share = sum(1 for o in answered if o.scale == 3.0) / len(answered)
    assert 0.22 <= share <= 0.38, f"{share:.0%} of requests reached the canary at weight 30"
    assert not [
        o
        for o in load.outcomes
        if not o.ok and o.protocol == ("grpc" if kind == "GRPCRoute" else "http")
    ]
    command = [
        "polyserve",
        "rollout",
        "promote",
        "scorer",
        "-n",
        namespace,
        "--kubeconfig",
        str(cluster.kubeconfig),
    ]
    assert cli.main(command[1:]) == 0
    wait_for(
        "the promotion",
        lambda: (
            (r := _rollout(cluster, namespace)).get("phase") == "Healthy"
            and r.get("lastAction", "").startswith("promote/")
        ),
        timeout=60,
    )
    route = cluster.client.get("gateway.networking.k8s.io/v1", kind, namespace, "scorer") or {}
    weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}
    assert weights["scorer-stable"] == 100


@pytest.mark.timeout(300)  # two rollouts, about 40 s on a quiet machine
def test_an_ensemble_canary_rolls_back_a_member_that_answers_wrong_then_promotes_a_good_one(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    """The ensemble's revision follows its members: a member's new artifact is a canary of
    the ensemble, measured and mirrored on the ensemble's own requests."""
    member = _model(cluster, namespace, "double")
    member["metadata"]["name"] = "scorer-member"
    member["spec"]["replicas"] = 0  # served only inside the ensemble
    del member["spec"]["rollout"]
    ensemble = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceEnsemble",
        "metadata": {"name": "scorer", "namespace": namespace},
        "spec": {
            "maxBatchSize": 8,
            "inputs": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            "outputs": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            "steps": [
                {
                    "name": "score",
                    "modelRef": "scorer-member",
                    "inputs": {"INPUT0": "INPUT0"},
                    "outputs": {"OUTPUT0": "OUTPUT0"},
                }
            ],
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "rollout": {
                "strategy": "Canary",
                "canary": {
                    **MIRRORED,
                    "progressDeadlineSeconds": 120,
                    "abortScaleDownDelaySeconds": 2,
                },
            },
        },
    }
    c = cluster.client
    c.apply(member)
    c.apply(ensemble)
    wait_for(
        "the ensemble to serve",
        lambda: (
            _rollout(cluster, namespace, "InferenceEnsemble").get("phase") == "Healthy"
            and _ready(cluster, namespace, "InferenceEnsemble")
        ),
        timeout=90,
    )
    first = _rollout(cluster, namespace, "InferenceEnsemble")["stableRevision"]
    http, grpc = _addresses(cluster, namespace)
    timeline = Timeline(cluster, namespace, kind="InferenceEnsemble")
    with ClosedLoop(http, "scorer", grpc=grpc) as load, timeline:
        wait_for("traffic", lambda: load.total() > 20)
        member["spec"]["artifact"] = {"uri": cluster.artifacts["triple"].as_uri()}
        c.apply(member)
        rolled = wait_for(
            "the ensemble's canary to roll back",
            lambda: (
                (r := _rollout(cluster, namespace, "InferenceEnsemble")).get("phase")
                == "RolledBack"
                and r
            ),
            timeout=120,
        )
        assert rolled["stableRevision"] == first
        assert "mirrorAgreement" in rolled["message"]
        bad = rolled["canaryRevision"]
        member["spec"]["artifact"] = {"uri": cluster.artifacts["double"].as_uri()}
        # The same answers under a new revision (another batching delay).
        member["spec"]["config"]["dynamic_batching"] = {"max_queue_delay_microseconds": 200}
        c.apply(member)
        ended = wait_for(
            "the good release to be promoted (or rolled back)",
            lambda: _settled(_rollout(cluster, namespace, "InferenceEnsemble"), first, bad),
            timeout=120,
        )
    assert ended["phase"] == "Healthy", ended.get("message")
    assert not load.failures(), load.failures()[:5]
    assert load.served(3.0) == 0, "clients never saw the wrong member's answers"

"""The operator's API client against the sandbox's API server with faults injected: what a
server refuses for a passing reason is tried again with back-off, a 429 waits its
Retry-After, a client mistake is not tried again, and a retried write whose reply was lost
leaves one object."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import parser as prometheus_parser

from polyserve_operator import k8s
from polyserve_sandbox.apiserver import http
from tests.sandbox.apiserver_support import ServerThread, configmap

Obj = dict[str, Any]


class Server:
    def __init__(self, thread: ServerThread, kubeconfig: Path) -> None:
        self.thread, self.kubeconfig = thread, kubeconfig

    def faults(self, plan: Obj | None) -> None:
        method, data = ("DELETE", None) if plan is None else ("PUT", json.dumps(plan).encode())
        request = urllib.request.Request(
            self.thread.url + "/sandbox/faults", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def requests(self, verb: str, code: int) -> int:
        """How many ``verb`` requests the server answered with ``code`` (its /metrics)."""
        with urllib.request.urlopen(self.thread.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            int(sample.value)
            for family in prometheus_parser.text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "apiserver_request_total"
            and (sample.labels["verb"], sample.labels["code"]) == (verb, str(code))
        )


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    with ServerThread() as thread:
        yield Server(thread, http.write_kubeconfig(thread.url, tmp_path / "kubeconfig"))


def client(server: Server, sleeps: list[float], attempts: int = 5) -> k8s.Client:
    return k8s.Client(
        k8s.configuration(server.kubeconfig),
        "test",
        retries=k8s.Retries(attempts=attempts, first=0.01, longest=4.0),
        sleep=sleeps.append,
    )


def test_a_call_the_server_refuses_for_a_passing_reason_is_tried_again(server: Server) -> None:
    sleeps: list[float] = []
    api = client(server, sleeps, attempts=8)
    server.faults({"seed": 5, "rules": [{"verbs": ["APPLY"], "conflict": 0.2, "error": 0.3}]})
    for index in range(20):
        api.apply(configmap(f"c{index}", data={"n": str(index)}))
    server.faults(None)
    assert len(api.list("v1", "ConfigMap", "default", {})) == 20
    refused = server.requests("APPLY", 409) + server.requests("APPLY", 500)
    assert refused == len(sleeps) > 0
    assert server.requests("APPLY", 201) == 20
    # Back-off doubles from the first wait, each drawn from the upper half of its ceiling.
    assert all(0.005 <= s <= 4.0 for s in sleeps)


def test_a_throttled_call_waits_at_least_its_retry_after_and_gives_up_in_the_end(
    server: Server,
) -> None:
    sleeps: list[float] = []
    api = client(server, sleeps, attempts=3)
    server.faults({"rules": [{"verbs": ["GET"], "throttle": 1, "retryAfterSeconds": 2}]})
    with pytest.raises(k8s.ApiError) as refused:
        api.get("v1", "ConfigMap", "default", "any")
    assert refused.value.status == 429
    assert refused.value.retry_after == 2
    assert sleeps == [pytest.approx(2.0), pytest.approx(2.0)]
    assert server.requests("GET", 429) == 3


def test_a_client_mistake_is_not_tried_again(server: Server) -> None:
    sleeps: list[float] = []
    api = client(server, sleeps)
    with pytest.raises(k8s.ApiError) as refused:
        api.patch("v1", "ConfigMap", "default", "missing", {"data": {"a": "b"}})
    assert refused.value.status == 404
    assert sleeps == []
    assert server.requests("PATCH", 404) == 1


def test_a_write_whose_reply_was_lost_is_tried_again_and_leaves_one_object(
    server: Server,
) -> None:
    sleeps: list[float] = []
    api = client(server, sleeps, attempts=10)
    server.faults({"seed": 2, "rules": [{"verbs": ["APPLY", "DELETE"], "lostReply": 0.5}]})
    for index in range(10):
        api.apply(configmap(f"c{index}", data={"n": "1"}))
    server.faults(None)
    found = api.list("v1", "ConfigMap", "default", {})
    assert sorted(c["metadata"]["name"] for c in found) == [f"c{i}" for i in range(10)]
    assert len(sleeps) == server.requests("APPLY", 500) > 0
    server.faults({"rules": [{"verbs": ["DELETE"], "lostReply": 1}]})
    # Deleted, reply lost, tried again: the object is gone, which is what was asked.
    assert api.delete("v1", "ConfigMap", "default", "c0") is False
    server.faults(None)
    assert api.get("v1", "ConfigMap", "default", "c0") is None


def test_back_off_doubles_up_to_its_ceiling_and_honours_retry_after() -> None:
    retries = k8s.Retries(attempts=6, first=0.25, longest=4.0)
    ceilings = [retries.delay(a, None, draw=1.0) for a in range(1, 7)]
    assert ceilings == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert retries.delay(1, None, draw=0.0) == 0.125
    assert retries.delay(1, 3.0, draw=0.0) == 3.0
    assert retries.delay(1, 60.0, draw=0.0) == 4.0  # a long Retry-After is the handler's


def test_a_server_that_cannot_be_reached_is_tried_again_then_reported(tmp_path: Path) -> None:
    kubeconfig = http.write_kubeconfig("http://127.0.0.1:9", tmp_path / "kubeconfig")
    sleeps: list[float] = []
    api = k8s.Client(
        k8s.configuration(kubeconfig),
        "test",
        retries=k8s.Retries(attempts=3, first=0.01),
        sleep=sleeps.append,
    )
    with pytest.raises(k8s.ApiError) as refused:
        api.get("v1", "ConfigMap", "default", "any")
    assert refused.value.status == 0 and refused.value.retryable
    assert len(sleeps) == 2

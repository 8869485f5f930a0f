"""The operator at rest: once a resource's status says what its objects show, its timer
neither calls the API nor reconciles again until something it reads changes (or the resync
count is reached), and drift is still repaired at the next tick. The real operator (kopf,
in this process) against the sandbox's API server over HTTP."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from prometheus_client import parser as prometheus_parser

from polyserve_operator import handlers, k8s, observe, settings, telemetry
from polyserve_sandbox.apiserver import crds, http
from tests.sandbox.apiserver_support import ServerThread, model, wait_for

Obj = dict[str, Any]
INTERVAL = 0.2
WRITES = ("POST", "PUT", "PATCH", "APPLY", "DELETE")


def _samples(url: str, name: str) -> list[Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [
        sample
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def writes(server: ServerThread) -> int:
    """Writes the API server has answered so far (its own /metrics)."""
    samples = _samples(server.url + "/metrics", "apiserver_request_total")
    return sum(int(s.value) for s in samples if s.labels["verb"] in WRITES)


def reconciles() -> int:
    """Reconciles the operator ran so far (its own metrics)."""
    text = telemetry.current.exposition().decode()
    return sum(
        int(sample.value)
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "polyserve_operator_reconciles_total"
        and sample.labels["kind"] == "InferenceModel"
    )


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    with ServerThread() as thread:
        thread.call(crds.register_project_crds)
        yield thread, http.write_kubeconfig(thread.url, tmp_path / "kubeconfig")


@contextlib.contextmanager
def _operator(server: tuple[ServerThread, Path]) -> Iterator[k8s.Client]:
    """The real operator (kopf, in this process) against the server, status every INTERVAL;
    a client to the server; the operator must have exited cleanly after the block."""
    _, kubeconfig = server
    cfg = settings.Settings(kubeconfig=kubeconfig, status_interval_seconds=INTERVAL)
    client = k8s.connect(kubeconfig, cfg.field_manager)
    registry = handlers.build(cfg, client)
    with KopfRunner(["run", "-A", "--standalone"], registry=registry, timeout=60) as runner:
        yield client
    client.close()
    assert runner.exit_code == 0, runner.output


def _create(client: k8s.Client, name: str) -> None:
    """A model, once the operator has reported a status for it."""
    client.apply(model(name))
    wait_for(
        "a status",
        lambda: (
            (client.get("polyserve.io/v1alpha1", "InferenceModel", "default", name) or {})
            .get("status", {})
            .get("conditions")
        ),
    )


def _unchanged_for(probe: Any, seconds: float) -> Any:
    """A probe's value once it has not changed for ``seconds``."""
    last, since = probe(), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.05)
        now = probe()
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_a_settled_model_costs_no_request_and_no_reconcile_until_something_changes(
    server: tuple[ServerThread, Path],
) -> None:
    thread, _ = server
    with _operator(server) as client:
        _create(client, "quiet")
        # Settled: nothing written and nothing reconciled for ten intervals...
        _unchanged_for(lambda: (writes(thread), reconciles()), 10 * INTERVAL)
        before = (writes(thread), reconciles())
        time.sleep(10 * INTERVAL)  # ...and ten more, which the timer ticks through
        assert (writes(thread), reconciles()) == before
        # A deleted Service is noticed at the next tick and put back.
        client.delete("v1", "Service", "default", "quiet")
        wait_for("the Service back", lambda: client.get("v1", "Service", "default", "quiet"))
        assert reconciles() > before[1]


def test_timers_start_spread_over_the_interval_one_offset_per_resource() -> None:
    delay = handlers.spread(15.0)
    offsets = [delay(uid=f"uid-{i}") for i in range(1000)]
    assert all(0 <= o < 15.0 for o in offsets)
    assert delay(uid="uid-7") == offsets[7]  # fixed per resource
    # About as many in each third of the interval (uniform, not a wave).
    thirds = [sum(1 for o in offsets if k * 5 <= o < (k + 1) * 5) for k in range(3)]
    assert all(280 <= n <= 390 for n in thirds), thirds


def test_a_fingerprint_follows_the_resource_and_everything_it_owns() -> None:
    def obj(name: str, version: str) -> Obj:
        return {"metadata": {"name": name, "resourceVersion": version}}

    body = {"metadata": {"namespace": "ns", "name": "m", "resourceVersion": "10"}}
    indexes: dict[str, dict[Any, list[Obj]]] = {
        "Deployment": {("ns", "m"): [obj("m", "3")]},
        "Pod": {("ns", "m"): [obj("m-a", "4"), obj("m-b", "5")]},
        "InferenceModel": {("ns", "member"): [obj("member", "7")]},
    }
    first = observe.fingerprint(indexes, body)
    indexes["Pod"][("ns", "m")].reverse()
    assert observe.fingerprint(indexes, body) == first  # order does not matter
    indexes["Pod"][("ns", "m")][0] = obj("m-b", "6")
    assert observe.fingerprint(indexes, body) != first  # a pod changed
    second = observe.fingerprint(indexes, body)
    related = [("InferenceModel", "member")]
    with_member = observe.fingerprint(indexes, body, related)
    assert with_member != second
    indexes["InferenceModel"][("ns", "member")] = [obj("member", "8")]
    assert observe.fingerprint(indexes, body, related) != with_member
    assert (
        observe.fingerprint(
            indexes, {**body, "metadata": {**body["metadata"], "resourceVersion": "11"}}
        )
        != second
    )


def deletes(server: ServerThread) -> int:
    samples = _samples(server.url + "/metrics", "apiserver_request_total")
    return sum(int(s.value) for s in samples if s.labels["verb"] == "DELETE")


def test_creating_a_model_deletes_nothing(server: tuple[ServerThread, Path]) -> None:
    """A new resource has no autoscaler of ours to drop (it is looked for by a delete only
    after a spec change of a resource that has reported)."""
    thread, _ = server
    with _operator(server) as client:
        _create(client, "fresh")
        _unchanged_for(lambda: writes(thread), 5 * INTERVAL)
        assert deletes(thread) == 0


def test_an_index_keeps_a_copy_of_each_object_without_its_managed_fields() -> None:
    body = {
        "metadata": {
            "name": "m-5abf1ed6dc-x2x4z",
            "resourceVersion": "7",
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
        },
        "status": {"phase": "Running"},
    }
    snapshot = handlers._snapshot(kopf.Body(body))
    assert snapshot == {
        "metadata": {"name": "m-5abf1ed6dc-x2x4z", "resourceVersion": "7"},
        "status": {"phase": "Running"},
    }
    assert "managedFields" in body["metadata"], "the object itself is left as it was"
    snapshot["status"]["phase"] = "Failed"
    assert body["status"]["phase"] == "Running", "a copy, not a view"

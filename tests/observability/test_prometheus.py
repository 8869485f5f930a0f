"""The dashboard's queries and the alerts, evaluated by a real Prometheus.

One scene for the module: a real worker serving a small batching model under load (a quarter
of the requests refused, as a bad client sends them), a worker target nobody answers, and
the operator's real telemetry server with a resource that is not Ready, a rollout that has
not moved for two hours, a blocked tier move and a rollback; Debian's Prometheus scrapes
them every second, with the labels the PodMonitors give in a cluster, and evaluates
deploy/observability/rules.yaml. Every dashboard query must return data, and Prometheus must
evaluate every alert without error, the expected ones pending or firing.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from polyserve_operator import telemetry
from tests import prometheus_support
from tests.observability import rules_file
from tests.worker import models
from tests.worker.conftest import WorkerThread, settings_for

WORKER_LABELS = {"namespace": "ml", "name": "mlp", "pod": "mlp-7d9f-a", "pod_revision": "r1"}
#: Grafana's variables and intervals as the test sets them (every model, a 10 s rate window).
VARIABLES = {
    "$__rate_interval": "10s",
    "$__range": "5m",
    "$namespace": "ml",
    "$name": "mlp",
    "$model": "mlp",
}
#: What the scene should set off: pending (a `for` still running) or firing; the rest stay
#: inactive (the model answers in milliseconds; the operator is up).
EXPECTED_ALERTS = {
    "PolyserveModelErrorRate": "pending",
    "PolyserveModelLatencySLO": "inactive",
    "PolyserveModelNotReady": "pending",
    "PolyserveWorkerDown": "pending",
    "PolyserveRolloutStuck": "pending",
    "PolyserveRolloutRolledBack": "firing",
    "PolyserveTierBlocked": "pending",
    "PolyserveOperatorDown": "inactive",
    "PolyserveOperatorReconcileErrors": "pending",
}
CONFIG = """\
max_batch_size: 8
input: [{name: INPUT0, data_type: FP32, dims: [32]}]
output: [{name: OUTPUT0, data_type: FP32, dims: [32]}]
dynamic_batching: {max_queue_delay_microseconds: 2000}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    """Clients sending requests until stopped; every fourth has the wrong shape."""

    def __init__(self, address: str, clients: int = 4) -> None:
        self.address = address
        self.stopping = threading.Event()
        self.refused = 0
        self.threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(clients)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        client = httpclient.InferenceServerClient(self.address)
        good = np.ones((1, 32), dtype=np.float32)
        bad = np.ones((1, 31), dtype=np.float32)
        sent = 0
        while not self.stopping.is_set():
            data = bad if sent % 4 == 3 else good
            request = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
            request.set_data_from_numpy(data)
            try:
                client.infer("mlp", [request])
            except InferenceServerException:  # the refused ones: the worker counts them
                self.refused += 1
            sent += 1
        client.close()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)


@dataclass
class Scene:
    prometheus: prometheus_support.Prometheus
    telemetry: telemetry.Telemetry


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    prometheus_support.binary()  # skips first when Prometheus is missing
    repo = tmp_path_factory.mktemp("repo")
    models.mlp_like(repo / "mlp" / "1" / "model.onnx", width=32)
    (repo / "mlp" / "config.yaml").write_text(CONFIG)
    worker_thread = WorkerThread(settings_for(repo))
    worker = worker_thread.start()
    load = Load(worker.http)

    two_hours_ago = time.time() - 7200
    ops = telemetry.Telemetry(wall_clock=lambda: two_hours_ago)
    ops.reconciled("InferenceModel", "success")
    ops.ready("InferenceModel", "ml", "mlp", False)
    ops.rollout("ml", "mlp", "Progressing", step=1)
    ops.rollout_event("ml", "mlp", "started")
    ops.tier("ml", "mlp", "xeon-bf16")
    ops.tier_blocked("ml", "mlp", "gpu", True)
    server = ops.serve("127.0.0.1", 0)

    live = [
        prometheus_support.Target(
            f"127.0.0.1:{worker.worker.metrics_port}", "polyserve-worker", WORKER_LABELS
        ),
        prometheus_support.Target(
            f"127.0.0.1:{server.port}",
            "polyserve-operator",
            {"namespace": "polyserve-system", "pod": "polyserve-operator-0"},
            honor_labels=True,
        ),
    ]
    dead = prometheus_support.Target(
        f"127.0.0.1:{free_port()}", "polyserve-worker", {**WORKER_LABELS, "pod": "mlp-7d9f-b"}
    )
    prom = prometheus_support.start(
        tmp_path_factory.mktemp("prometheus"), [*live, dead], [rules_file.RULES]
    )
    try:
        prom.wait_for_targets([t.address for t in live])
        # Counters that move after the first scrape, as increase() needs.
        ops.rollout_event("ml", "mlp", "rolled_back")
        ops.reconciled("InferenceModel", "error")
        ops.tier("ml", "mlp", "xeon")
        yield Scene(prom, ops)
    finally:
        prom.stop()
        load.stop()
        server.close()
        worker_thread.stop()


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not set: {expr}"
    return expr


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((rules_file.FOLDER / "dashboard.json").read_text())
    return loaded


def panel_queries() -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


@pytest.mark.parametrize(("title", "expr"), panel_queries(), ids=[t for t, _ in panel_queries()])
def test_every_dashboard_query_returns_data_from_a_worker_under_load(
    scene: Scene, title: str, expr: str
) -> None:
    rows = scene.prometheus.wait_for(substitute(expr))
    values = [float(row["value"][1]) for row in rows]
    assert not any(np.isnan(values)), f"{title}: {rows}"


def test_the_dashboard_variables_list_the_scraped_resource_and_model(scene: Scene) -> None:
    found = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        # label_values(selector, label): Prometheus' label values API, as Grafana calls it.
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector = substitute(match.group(1))
        found[variable["name"]] = scene.prometheus.api(
            f"label/{match.group(2)}/values", **{"match[]": selector}
        )
    assert found == {"namespace": ["ml"], "name": ["mlp"], "model": ["mlp"]}


def test_prometheus_evaluates_every_alert_without_error_and_sets_off_the_expected_ones(
    scene: Scene,
) -> None:
    def settled(rules: list[dict[str, Any]]) -> bool:
        states = {r["name"]: r["state"] for r in rules if r["type"] == "alerting"}
        return states == EXPECTED_ALERTS

    rules: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal rules
        rules = scene.prometheus.rules()
        return settled(rules)

    try:
        scene.prometheus._poll(check, "alert states")
    except TimeoutError:
        states = {r["name"]: (r["state"], r.get("lastError")) for r in rules}
        raise AssertionError(f"alert states: {states}") from None
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_the_firing_and_pending_alerts_name_the_resource_that_set_them_off(scene: Scene) -> None:
    alerts = scene.prometheus.wait_for(
        'ALERTS{alertname=~"PolyserveModelErrorRate|PolyserveModelNotReady|'
        'PolyserveTierBlocked|PolyserveRolloutStuck"}',
        until=lambda rows: len(rows) == 4,
    )
    named = {
        (a["metric"]["alertname"], a["metric"]["namespace"], a["metric"]["name"]) for a in alerts
    }
    assert {n for _, _, n in named} == {"mlp"}
    assert {ns for _, ns, _ in named} == {"ml"}


def test_the_rules_file_prometheus_loaded_is_the_committed_one(scene: Scene) -> None:
    loaded = {r["name"] for r in scene.prometheus.rules()}
    assert loaded == set(EXPECTED_ALERTS)
    assert Path(rules_file.RULES).is_file()

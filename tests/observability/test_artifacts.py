"""deploy/observability checked with the real tools: promtool on the alerts and their unit
tests, the Prometheus Operator CRDs' schemas on the PodMonitors and the PrometheusRule."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import npm_schemas
from tests.observability import rules_file

FOLDER = rules_file.FOLDER


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool is not installed (apt-get install -y --no-install-recommends prometheus)"
        )
    return subprocess.run(
        [found, *args], cwd=FOLDER, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_plain_rules_file_is_the_prometheusrule_groups_written_by_make_observability() -> None:
    assert (FOLDER / "rules.yaml").read_text() == rules_file.render(), (
        "deploy/observability/rules.yaml drifted from alerts.yaml: run `make observability`"
    )


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", "rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_promtool_unit_tests_fire_each_alert_and_spare_its_near_miss() -> None:
    done = promtool("test", "rules", "alerts_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    tests = yaml.safe_load((FOLDER / "alerts_test.yaml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    alerts = {
        rule["alert"]
        for group in rules_file.prometheus_rule()["spec"]["groups"]
        for rule in group["rules"]
    }
    assert alerts - fired == set()


def test_a_broken_alert_expectation_fails_promtool(tmp_path: Path) -> None:
    # The unit tests prove something only if promtool fails on a wrong expectation.
    shutil.copy(FOLDER / "rules.yaml", tmp_path / "rules.yaml")
    text = (FOLDER / "alerts_test.yaml").read_text().replace("fails 10%", "fails 11%")
    (tmp_path / "alerts_test.yaml").write_text(text)
    done = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert done.returncode != 0
    assert "PolyserveModelErrorRate" in done.stdout + done.stderr


def documents() -> list[dict[str, Any]]:
    monitors = list(yaml.safe_load_all((FOLDER / "podmonitors.yaml").read_text()))
    return [*monitors, rules_file.prometheus_rule()]


def test_the_podmonitors_and_the_prometheusrule_are_valid_against_their_crd_schemas() -> None:
    npm_schemas.PROMETHEUS_OPERATOR.validate(*documents())


def test_the_crd_schemas_refuse_a_podmonitor_with_a_numeric_port() -> None:
    monitor = documents()[0]
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = 8002
    (error,) = npm_schemas.PROMETHEUS_OPERATOR.errors(monitor)
    assert error is not None and "podMetricsEndpoints/0/port" in error


def test_the_worker_podmonitor_selects_the_pods_the_operator_renders() -> None:
    from polyserve_operator import api, render, settings

    model = api.parse(
        yaml.safe_load(
            (Path(__file__).parents[2] / "manifests/examples/resnet-xeon.yaml").read_text()
        )
    )
    assert isinstance(model, api.InferenceModel)
    deployment = next(
        o
        for o in render.objects(render.model_workload(model), settings.Settings())
        if o["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]
    monitor = documents()[0]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    # The relabelings read labels the pods carry (Prometheus' sanitised meta label names).
    for relabeling in monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]:
        (source,) = relabeling["sourceLabels"]
        label = source.removeprefix("__meta_kubernetes_pod_label_")
        sanitised = {re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in pod["metadata"]["labels"]}
        assert label in sanitised, f"no pod label becomes {source}"


def test_the_dashboard_is_grafana_json_with_a_datasource_variable_on_every_query() -> None:
    dashboard = json.loads((FOLDER / "dashboard.json").read_text())
    assert dashboard["uid"] == "polyserve-models"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "namespace", "name", "model"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]

"""The chart's monitoring values (a real helm v4): deploy/observability's PodMonitors,
PrometheusRule and Grafana dashboard rendered from the chart's copies of those files, valid
against the Prometheus Operator's CRD schemas and Kubernetes', equal to the files apart from
the chart's names, namespace, labels and selectors, and nothing of them when the values are off."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests import helm_support, npm_schemas
from tests.install import rendering
from tests.observability import rules_file

Obj = dict[str, Any]

FOLDER = rules_file.FOLDER
KINDS = ("PodMonitor", "PrometheusRule", "ConfigMap")
ON: Obj = {
    "monitoring": {
        "labels": {"release": "prometheus"},
        "podMonitors": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}
#: What a user turns on: every switch alone, together, and with the values that move them.
COMBINATIONS: dict[str, tuple[str, Obj]] = {
    "all": (rendering.RELEASE, ON),
    "pod-monitors": (rendering.RELEASE, {"monitoring": {"podMonitors": {"enabled": True}}}),
    "prometheus-rule": (rendering.RELEASE, {"monitoring": {"prometheusRule": {"enabled": True}}}),
    "dashboard": (rendering.RELEASE, {"monitoring": {"dashboard": {"enabled": True}}}),
    "namespace-scoped": (rendering.RELEASE, {**ON, "watchNamespaces": ["team-a", "team-b"]}),
    "another-release": ("serving", ON),
    "grafana-elsewhere": (
        rendering.RELEASE,
        {
            "monitoring": {
                "dashboard": {
                    "enabled": True,
                    "labelKey": "dashboards",
                    "labelValue": "polyserve",
                    "namespace": "grafana",
                    "annotations": {"grafana_folder": "Polyserve"},
                }
            }
        },
    ),
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    out = {"defaults": rendering.helm({})}
    for name, (release, values) in COMBINATIONS.items():
        out[name] = rendering.helm(values, release=release)
    return out


def monitoring(objects: list[Obj]) -> dict[str, Obj]:
    """The monitoring objects by kind/name (the chart renders no other ConfigMap)."""
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects if o["kind"] in KINDS}


def podmonitors() -> dict[str, Obj]:
    documents = yaml.safe_load_all((FOLDER / "podmonitors.yaml").read_text())
    return {d["metadata"]["name"]: d for d in documents if d}


def operator_pod(objects: list[Obj]) -> Obj:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod: Obj = deployment["spec"]["template"]
    return pod


def test_with_the_values_off_none_of_the_monitoring_objects_render(
    rendered: dict[str, list[Obj]],
) -> None:
    assert monitoring(rendered["defaults"]) == {}
    assert sorted(monitoring(rendered["pod-monitors"])) == [
        "PodMonitor/polyserve-operator",
        "PodMonitor/polyserve-workers",
    ]
    assert sorted(monitoring(rendered["prometheus-rule"])) == ["PrometheusRule/polyserve"]
    assert sorted(monitoring(rendered["dashboard"])) == ["ConfigMap/polyserve-dashboard"]


def test_helm_lint_strict_passes_with_every_monitoring_combination(tmp_path: Any) -> None:
    for name, (_, values) in COMBINATIONS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        done = helm_support.run(
            ["lint", "--strict", str(rendering.CHART), "--values", str(path)], check=False
        )
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


def test_the_monitoring_objects_are_valid_against_the_crd_schemas_and_kubernetes(
    rendered: dict[str, list[Obj]],
) -> None:
    custom = []
    for name in COMBINATIONS:
        for obj in monitoring(rendered[name]).values():
            if obj["apiVersion"] == "monitoring.coreos.com/v1":
                custom.append(obj)
            else:
                for version in ("1.25", "1.33"):
                    kubernetes_validate.validate(obj, version, strict=True)
    assert {o["kind"] for o in custom} == {"PodMonitor", "PrometheusRule"}
    npm_schemas.PROMETHEUS_OPERATOR.validate(*custom)


def _labels_hold(obj: Obj, *wanted: Obj) -> None:
    labels = obj["metadata"]["labels"]
    for group in wanted:
        assert group.items() <= labels.items(), (obj["metadata"]["name"], group, labels)


def test_the_podmonitors_are_the_files_with_this_installs_names_labels_and_namespaces(
    rendered: dict[str, list[Obj]],
) -> None:
    found = monitoring(rendered["all"])
    chart = {"app.kubernetes.io/instance": rendering.RELEASE, "release": "prometheus"}
    for name, source in podmonitors().items():
        monitor = found[f"PodMonitor/{name}"]
        assert monitor["metadata"]["namespace"] == rendering.NAMESPACE
        _labels_hold(monitor, source["metadata"]["labels"], chart)
        expected = copy.deepcopy(source["spec"])
        if name == "polyserve-operator":
            # Named explicitly: the release's namespace, where the operator's pod runs.
            expected["namespaceSelector"] = {"matchNames": [rendering.NAMESPACE]}
        assert monitor["spec"] == expected, name
    assert found["PodMonitor/polyserve-workers"]["spec"]["namespaceSelector"] == {"any": True}


def test_a_namespace_scoped_install_scrapes_workers_only_in_its_namespaces(
    rendered: dict[str, list[Obj]],
) -> None:
    found = monitoring(rendered["namespace-scoped"])
    workers = found["PodMonitor/polyserve-workers"]["spec"]
    assert workers["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert workers["selector"] == podmonitors()["polyserve-workers"]["spec"]["selector"]
    operator = found["PodMonitor/polyserve-operator"]["spec"]
    assert operator["namespaceSelector"] == {"matchNames": [rendering.NAMESPACE]}


@pytest.mark.parametrize("combination", ["all", "another-release"])
def test_the_operators_podmonitor_selects_the_operators_pod_by_its_metrics_port(
    rendered: dict[str, list[Obj]], combination: str
) -> None:
    objects = rendered[combination]
    pod = operator_pod(objects)
    (monitor,) = [
        o
        for o in monitoring(objects).values()
        if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("-operator")
    ]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_under_another_release_name_the_operator_is_still_scraped_as_job_polyserve_operator(
    rendered: dict[str, list[Obj]],
) -> None:
    """The alerts and the dashboard query job="polyserve-operator"; the PodMonitor's jobLabel
    gives the pod's name label, which is RELEASE-operator, so a relabeling sets it back."""
    found = monitoring(rendered["another-release"])
    assert sorted(found) == [
        "ConfigMap/serving-dashboard",
        "PodMonitor/serving-operator",
        "PodMonitor/serving-workers",
        "PrometheusRule/serving",
    ]
    operator = found["PodMonitor/serving-operator"]["spec"]
    assert operator["selector"] == {"matchLabels": {"app.kubernetes.io/name": "serving-operator"}}
    for endpoint in operator["podMetricsEndpoints"]:
        assert endpoint["relabelings"][-1] == {
            "action": "replace",
            "targetLabel": "job",
            "replacement": "polyserve-operator",
        }
    # The default release needs none: its pod's name label is polyserve-operator already.
    default = monitoring(rendered["all"])["PodMonitor/polyserve-operator"]["spec"]
    assert all("relabelings" not in e for e in default["podMetricsEndpoints"])


def test_without_a_declared_metrics_port_the_operator_has_no_podmonitor() -> None:
    values = {"settings": {"metricsPort": 0}, **ON}
    assert sorted(k for k in monitoring(rendering.helm(values)) if k.startswith("PodMonitor")) == [
        "PodMonitor/polyserve-workers"
    ]


def test_the_prometheusrule_is_alerts_yaml_with_the_charts_labels(
    rendered: dict[str, list[Obj]],
) -> None:
    source = rules_file.prometheus_rule()
    for combination, name in (("all", "polyserve"), ("another-release", "serving")):
        rule = monitoring(rendered[combination])[f"PrometheusRule/{name}"]
        assert rule["spec"] == source["spec"]
        assert rule["metadata"]["namespace"] == rendering.NAMESPACE
        _labels_hold(rule, source["metadata"]["labels"], {"release": "prometheus"})


def test_the_dashboard_configmap_holds_dashboard_json_for_grafanas_sidecar(
    rendered: dict[str, list[Obj]],
) -> None:
    dashboard = json.loads((FOLDER / "dashboard.json").read_text())
    config_map = monitoring(rendered["all"])["ConfigMap/polyserve-dashboard"]
    assert config_map["metadata"]["namespace"] == rendering.NAMESPACE
    _labels_hold(config_map, {"grafana_dashboard": "1", "release": "prometheus"})
    assert list(config_map["data"]) == ["polyserve-models.json"]
    assert json.loads(config_map["data"]["polyserve-models.json"]) == dashboard
    elsewhere = monitoring(rendered["grafana-elsewhere"])["ConfigMap/polyserve-dashboard"]
    assert elsewhere["metadata"]["namespace"] == "grafana"
    _labels_hold(elsewhere, {"dashboards": "polyserve"})
    assert "grafana_dashboard" not in elsewhere["metadata"]["labels"]
    assert elsewhere["metadata"]["annotations"] == {"grafana_folder": "Polyserve"}


def test_the_chart_carries_deploy_observabilitys_files_as_make_generate_copies_them() -> None:
    """What a drift means in words (test_generated fails too): the chart renders its copies."""
    copies = rendering.CHART / "files" / "observability"
    assert (copies / "dashboard.json").read_text() == (FOLDER / "dashboard.json").read_text()
    for name in ("podmonitors.yaml", "alerts.yaml"):
        copied = (copies / name).read_text()
        assert copied.endswith((FOLDER / name).read_text()), f"{name}: run `make generate`"


def test_notes_say_what_prometheus_must_select(tmp_path: Any) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(ON))
    out = helm_support.run(
        [
            "install",
            rendering.RELEASE,
            str(rendering.CHART),
            "--namespace",
            rendering.NAMESPACE,
            "--dry-run=client",
            "--values",
            str(path),
        ]
    ).stdout
    notes = out[out.index("NOTES:") :]
    assert "PodMonitors polyserve-workers and polyserve-operator" in notes
    assert "settings.networkPolicy.metricsNamespaces" in notes
    assert "release=prometheus" in notes


TYPOS: dict[str, Obj] = {
    "a misspelt switch": {"monitoring": {"podMonitor": {"enabled": True}}},
    "a misspelt field": {"monitoring": {"dashboard": {"enable": True}}},
    "a label value that is no string": {"monitoring": {"labels": {"release": 1}}},
    "a namespace that is no DNS label": {"monitoring": {"dashboard": {"namespace": "Grafana"}}},
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_a_typo_under_monitoring_fails_helm_install(typo: str) -> None:
    error = rendering.helm_fails(
        TYPOS[typo],
        "install",
        rendering.RELEASE,
        str(rendering.CHART),
        "--namespace",
        rendering.NAMESPACE,
        "--dry-run=client",
    )
    assert "values don't meet the specifications of the schema" in error, error

"""Server-side printing: kubectl's Pod STATUS rules, ages, CRD printer columns (JSONPath)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from polyserve_sandbox.apiserver import jsonpath, printing, tables
from polyserve_sandbox.apiserver.resources import Resource

Obj = dict[str, Any]
NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def _pod(status: Obj, **spec: Any) -> Obj:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T11:58:30Z"},
        "spec": {"containers": [{"name": "main"}], **spec},
        "status": status,
    }


WAITING = {"state": {"waiting": {"reason": "ContainerCreating"}}, "ready": False, "restartCount": 0}


@pytest.mark.parametrize(
    ("status", "spec", "expected"),
    [
        ({"phase": "Pending"}, {}, ("0/1", "Pending")),
        (
            {"phase": "Pending", "containerStatuses": [{"name": "main", **WAITING}]},
            {},
            ("0/1", "ContainerCreating"),
        ),
        (
            {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "main", "ready": True, "restartCount": 0, "state": {"running": {}}}
                ],
            },
            {},
            ("1/1", "Running"),
        ),
        (
            {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "main",
                        "ready": False,
                        "restartCount": 4,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    }
                ],
            },
            {},
            ("0/1", "CrashLoopBackOff"),
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "fetch", "restartCount": 0, "state": {"running": {}}}
                ],
            },
            {"initContainers": [{"name": "fetch"}]},
            ("0/1", "Init:0/1"),
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": "fetch",
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    }
                ],
            },
            {"initContainers": [{"name": "fetch"}]},
            ("0/1", "Init:CrashLoopBackOff"),
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "fetch", "restartCount": 0, "state": {"terminated": {"exitCode": 3}}}
                ],
            },
            {"initContainers": [{"name": "fetch"}]},
            ("0/1", "Init:ExitCode:3"),
        ),
        (
            {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "main",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                    }
                ],
            },
            {},
            ("0/1", "Completed"),
        ),
    ],
)
def test_pod_status_reads_as_kubectl_shows_it(
    status: Obj, spec: Obj, expected: tuple[str, str]
) -> None:
    cells = printing.pod(_pod(status, **spec), NOW)
    assert (cells[1], cells[2]) == expected
    assert cells[4] == "90s"


def test_a_deleting_pod_is_terminating_and_restarts_show_when() -> None:
    obj = _pod(
        {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "main",
                    "ready": True,
                    "restartCount": 2,
                    "state": {"running": {}},
                    "lastState": {"terminated": {"finishedAt": "2026-01-01T11:55:00Z"}},
                }
            ],
        }
    )
    assert printing.pod(obj, NOW)[3] == "2 (5m ago)"
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:30Z"
    assert printing.pod(obj, NOW)[2] == "Terminating"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 + 120, "3h2m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (20 * 86400, "20d"),
        (800 * 86400, "2y70d"),
    ],
)
def test_ages_read_as_kubectl_shows_them(seconds: int, text: str) -> None:
    assert printing.human_duration(seconds) == text


def test_jsonpath_evaluates_printer_column_paths() -> None:
    obj = {
        "metadata": {"labels": {"app.kubernetes.io/name": "web"}},
        "spec": {
            "replicas": 3,
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
        },
        "status": {
            "conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "Loading"},
            ]
        },
    }
    assert jsonpath.evaluate(obj, ".spec.replicas") == [3]
    assert jsonpath.evaluate(obj, '.status.conditions[?(@.type=="Ready")].reason') == ["Loading"]
    assert jsonpath.evaluate(obj, "{.spec.containers[1].image}") == ["y"]
    assert jsonpath.evaluate(obj, ".spec.containers[*].name") == ["a", "b"]
    assert jsonpath.evaluate(obj, ".metadata.labels['app.kubernetes.io/name']") == ["web"]
    assert jsonpath.evaluate(obj, r".metadata.labels.app\.kubernetes\.io/name") == ["web"]
    assert jsonpath.evaluate(obj, ".status.missing[0]") == []
    with pytest.raises(ValueError):
        jsonpath.evaluate(obj, ".spec[?(nonsense)]")


def test_crd_columns_are_typed_as_the_real_table_convertor_types_them() -> None:
    resource = Resource(
        group="example.com",
        version="v1",
        kind="Widget",
        plural="widgets",
        singular="widget",
        printer_columns=(
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            },
            {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
            {"name": "Wide", "type": "string", "jsonPath": ".spec.note", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    )
    obj = {
        "metadata": {"name": "w", "creationTimestamp": "2026-01-01T11:00:00Z"},
        "spec": {"size": 2},
    }
    table = tables.table(resource, [obj], version="7", now=NOW)
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Ready",
        "Size",
        "Wide",
        "Age",
    ]
    assert table["columnDefinitions"][3]["priority"] == 1
    assert table["rows"][0]["cells"] == ["w", None, 2, None, "60m"]
    assert table["metadata"] == {"resourceVersion": "7"}

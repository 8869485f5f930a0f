"""JSON merge patch, JSON patch and strategic merge patch, as kubectl sends them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from polyserve_sandbox.apiserver import errors, patching

Obj = dict[str, Any]

DEPLOYMENT: Obj = {
    "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
    "spec": {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "web:1",
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "ports": [{"containerPort": 80, "name": "http"}],
                    },
                    {"name": "sidecar", "image": "proxy:1"},
                ],
                "tolerations": [{"key": "x"}],
            }
        }
    },
}


def test_merge_patch_merges_maps_replaces_lists_and_deletes_nulls() -> None:
    target = copy.deepcopy(DEPLOYMENT)
    patched = patching.merge_patch(
        target, {"metadata": {"labels": {"app": None, "new": "x"}, "finalizers": ["b"]}}
    )
    assert patched["metadata"]["labels"] == {"new": "x"}
    assert patched["metadata"]["finalizers"] == ["b"]


def test_json_patch_runs_every_operation() -> None:
    doc: Obj = {"a": {"b": 1}, "list": [1, 2, 3]}
    result = patching.json_patch(
        doc,
        [
            {"op": "add", "path": "/list/-", "value": 4},
            {"op": "add", "path": "/list/0", "value": 0},
            {"op": "remove", "path": "/list/1"},
            {"op": "replace", "path": "/a/b", "value": 2},
            {"op": "copy", "from": "/a", "path": "/c"},
            {"op": "move", "from": "/c/b", "path": "/d"},
            {"op": "add", "path": "/e~1f", "value": "slash"},
            {"op": "test", "path": "/d", "value": 2},
        ],
    )
    assert result == {"a": {"b": 2}, "list": [0, 2, 3, 4], "c": {}, "d": 2, "e/f": "slash"}


def test_json_patch_failures_are_422_and_bad_operations_400() -> None:
    with pytest.raises(errors.ApiError) as missing:
        patching.json_patch({"a": 1}, [{"op": "replace", "path": "/b", "value": 2}])
    assert missing.value.status == 422
    with pytest.raises(errors.ApiError) as test:
        patching.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    assert test.value.status == 422
    with pytest.raises(errors.ApiError) as bad:
        patching.json_patch({"a": 1}, [{"op": "frobnicate", "path": "/a"}])
    assert bad.value.status == 400


def test_strategic_merge_patch_merges_containers_env_and_ports_by_their_keys() -> None:
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "web:2",
                            "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        }
                    ],
                    "tolerations": [{"key": "y"}],
                }
            }
        }
    }
    result = patching.strategic_merge_patch(copy.deepcopy(DEPLOYMENT), patch)
    containers = result["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main", "sidecar"]
    assert containers[0]["image"] == "web:2"
    assert containers[0]["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
    ]
    assert containers[0]["ports"] == [{"containerPort": 80, "name": "http", "protocol": "TCP"}]
    assert result["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "y"}
    ]  # no merge key: replaced


def test_strategic_merge_patch_honours_the_directives_kubectl_sends() -> None:
    patch = {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["b"]},
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "main"}],
                    "containers": [
                        {"name": "main", "env": [{"name": "A", "$patch": "delete"}]},
                        {
                            "name": "sidecar",
                            "resources": {"$patch": "replace", "limits": {"cpu": "1"}},
                        },
                    ],
                }
            }
        },
    }
    result = patching.strategic_merge_patch(copy.deepcopy(DEPLOYMENT), patch)
    assert result["metadata"]["finalizers"] == ["b"]
    containers = result["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["sidecar", "main"]
    assert containers[1]["env"] == [{"name": "B", "value": "2"}]
    assert containers[0]["resources"] == {"limits": {"cpu": "1"}}


def test_strategic_merge_patch_retain_keys_and_list_replace() -> None:
    target = {
        "spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "ports": [{"port": 80}, {"port": 81}],
        }
    }
    patch = {
        "spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None},
            "ports": [{"$patch": "replace"}, {"port": 90}],
        }
    }
    result = patching.strategic_merge_patch(target, patch)
    assert result["spec"]["strategy"] == {"type": "Recreate"}
    assert result["spec"]["ports"] == [{"port": 90}]


def test_service_ports_merge_by_port() -> None:
    target = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    result = patching.strategic_merge_patch(
        target, {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}
    )
    assert result["spec"]["ports"] == [
        {"port": 80, "name": "http", "targetPort": 8080},
        {"port": 443, "name": "https"},
    ]

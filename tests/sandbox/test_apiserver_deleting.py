"""Deletion: finalizers, graceful Pods, owner-reference garbage collection, Namespaces."""

from __future__ import annotations

from typing import Any

import pytest

from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.apiserver_support import configmap, deployment, pod

Obj = dict[str, Any]


@pytest.fixture()
def store() -> apistore.Store:
    return apistore.Store()


def _owned(obj: Obj, *owners: Obj) -> Obj:
    obj["metadata"]["ownerReferences"] = [
        {
            "apiVersion": o["apiVersion"],
            "kind": o["kind"],
            "name": o["metadata"]["name"],
            "uid": o["metadata"]["uid"],
        }
        for o in owners
    ]
    return obj


def test_an_object_with_finalizers_stays_until_an_update_empties_them(
    store: apistore.Store,
) -> None:
    store.create(
        configmap("cfg", metadata={"name": "cfg", "namespace": "default", "finalizers": ["a/b"]})
    )
    events: list[str] = []
    store.listen(lambda e: events.append(e.type))
    marked = store.delete("v1", "ConfigMap", "default", "cfg")
    assert marked["metadata"]["deletionTimestamp"]
    assert store.get("v1", "ConfigMap", "default", "cfg")["metadata"]["finalizers"] == ["a/b"]
    with pytest.raises(apistore.ApiError) as caught:
        store.patch(
            "v1",
            "ConfigMap",
            "default",
            "cfg",
            {"metadata": {"finalizers": ["a/b", "c/d"]}},
            patch_type="merge",
        )
    assert "no new finalizers can be added if the object is being deleted" in caught.value.message
    store.patch(
        "v1", "ConfigMap", "default", "cfg", {"metadata": {"finalizers": None}}, patch_type="merge"
    )
    assert store.try_get("v1", "ConfigMap", "default", "cfg") is None
    assert events == ["MODIFIED", "DELETED"]


def test_a_pod_on_a_node_waits_for_the_kubelet_and_an_unscheduled_pod_goes_at_once(
    store: apistore.Store,
) -> None:
    store.create(pod("running", nodeName="node-1", terminationGracePeriodSeconds=20))
    store.create(pod("pending"))
    store.delete("v1", "Pod", "default", "pending")
    assert store.try_get("v1", "Pod", "default", "pending") is None
    marked = store.delete("v1", "Pod", "default", "running")
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 20
    assert store.get("v1", "Pod", "default", "running")["metadata"]["deletionTimestamp"]
    shorter = store.delete("v1", "Pod", "default", "running", grace_period_seconds=5)
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 5
    store.patch(
        "v1",
        "Pod",
        "default",
        "running",
        {"status": {"phase": "Running"}},
        patch_type="merge",
        subresource="status",
    )
    assert store.try_get("v1", "Pod", "default", "running") is not None
    store.delete("v1", "Pod", "default", "running", grace_period_seconds=0)
    assert store.try_get("v1", "Pod", "default", "running") is None


def test_a_finished_pod_is_deleted_at_once(store: apistore.Store) -> None:
    store.create(pod("done", nodeName="node-1"))
    store.patch(
        "v1",
        "Pod",
        "default",
        "done",
        {"status": {"phase": "Succeeded"}},
        patch_type="merge",
        subresource="status",
    )
    store.delete("v1", "Pod", "default", "done")
    assert store.try_get("v1", "Pod", "default", "done") is None


def test_background_deletion_collects_dependents_whose_owners_are_all_gone(
    store: apistore.Store,
) -> None:
    owner = store.create(deployment("web"))
    other = store.create(configmap("other-owner"))
    store.create(_owned(configmap("only-child"), owner))
    grandchild_owner = store.get("v1", "ConfigMap", "default", "only-child")
    store.create(_owned(configmap("grandchild"), grandchild_owner))
    store.create(_owned(configmap("shared"), owner, other))
    store.delete("apps/v1", "Deployment", "default", "web")
    assert store.try_get("v1", "ConfigMap", "default", "only-child") is None
    assert store.try_get("v1", "ConfigMap", "default", "grandchild") is None
    shared = store.get("v1", "ConfigMap", "default", "shared")
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["other-owner"]


def test_orphan_deletion_strips_the_owner_references(store: apistore.Store) -> None:
    owner = store.create(deployment("web"))
    store.create(_owned(configmap("child"), owner))
    store.delete("apps/v1", "Deployment", "default", "web", propagation="Orphan")
    child = store.get("v1", "ConfigMap", "default", "child")
    assert "ownerReferences" not in child["metadata"]


def test_foreground_deletion_keeps_the_owner_until_its_dependents_are_gone(
    store: apistore.Store,
) -> None:
    owner = store.create(deployment("web"))
    store.create(_owned(pod("web-1", nodeName="node-1"), owner))
    marked = store.delete("apps/v1", "Deployment", "default", "web", propagation="Foreground")
    assert "foregroundDeletion" in marked["metadata"]["finalizers"]
    assert store.get("v1", "Pod", "default", "web-1")["metadata"]["deletionTimestamp"]
    assert store.try_get("apps/v1", "Deployment", "default", "web") is not None
    store.delete("v1", "Pod", "default", "web-1", grace_period_seconds=0)  # the kubelet
    assert store.try_get("apps/v1", "Deployment", "default", "web") is None


def test_deleting_a_namespace_deletes_its_objects_then_itself(store: apistore.Store) -> None:
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    store.create(configmap("cfg", namespace="team"))
    store.create(
        configmap("held", metadata={"name": "held", "namespace": "team", "finalizers": ["x/y"]})
    )
    store.delete("v1", "Namespace", None, "team")
    namespace = store.get("v1", "Namespace", None, "team")
    assert namespace["status"]["phase"] == "Terminating"
    assert store.try_get("v1", "ConfigMap", "team", "cfg") is None
    with pytest.raises(apistore.ApiError) as caught:
        store.create(configmap("late", namespace="team"))
    assert caught.value.status == 403
    assert (
        "unable to create new content in namespace team because it is being terminated"
        in caught.value.message
    )
    store.patch(
        "v1", "ConfigMap", "team", "held", {"metadata": {"finalizers": []}}, patch_type="merge"
    )
    assert store.try_get("v1", "Namespace", None, "team") is None


def test_the_default_namespace_may_not_be_deleted(store: apistore.Store) -> None:
    with pytest.raises(apistore.ApiError) as caught:
        store.delete("v1", "Namespace", None, "default")
    assert caught.value.status == 403
    assert (
        caught.value.message
        == 'namespaces "default" is forbidden: this namespace may not be deleted'
    )


def test_delete_preconditions_are_checked(store: apistore.Store) -> None:
    store.create(configmap("cfg"))
    with pytest.raises(apistore.ApiError) as caught:
        store.delete("v1", "ConfigMap", "default", "cfg", preconditions={"uid": "other"})
    assert (
        caught.value.status == 409
        and "Precondition failed: UID in precondition: other" in caught.value.message
    )


def test_delete_collection_deletes_what_the_selector_matches(store: apistore.Store) -> None:
    for name in ("a", "b", "c"):
        store.create(pod(name))
    store.delete_collection("v1", "Pod", "default", label_selector="app!=b")
    assert [p["metadata"]["name"] for p in store.list("v1", "Pod", "default")] == ["b"]

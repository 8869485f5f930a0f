"""Server-side apply: field ownership, conflicts, removal of dropped fields, and two
appliers (a GitOps tool and the operator) that do not fight."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from polyserve_sandbox.apiserver import crds
from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.apiserver_support import deployment, model

Obj = dict[str, Any]


@pytest.fixture()
def store() -> apistore.Store:
    store = apistore.Store()
    crds.register_project_crds(store)
    return store


def _apply(store: apistore.Store, obj: Obj, manager: str, *, force: bool = False) -> Obj:
    meta = obj["metadata"]
    return store.patch(
        obj["apiVersion"],
        obj["kind"],
        meta.get("namespace"),
        meta["name"],
        obj,
        patch_type="apply",
        field_manager=manager,
        force=force,
    )


def _managers(obj: Obj) -> dict[str, Obj]:
    return {m["manager"]: m for m in obj["metadata"].get("managedFields", [])}


def test_apply_creates_a_missing_object_owned_by_its_manager(store: apistore.Store) -> None:
    created = _apply(store, deployment("web"), "gitops")
    assert created["metadata"]["generation"] == 1
    entry = _managers(created)["gitops"]
    assert entry["operation"] == "Apply" and entry["fieldsType"] == "FieldsV1"
    assert entry["fieldsV1"]["f:spec"]["f:replicas"] == {}
    assert entry["fieldsV1"]["f:metadata"]["f:labels"] == {"f:app": {}}


def test_reapplying_the_same_configuration_changes_nothing(store: apistore.Store) -> None:
    first = _apply(store, deployment("web"), "gitops")
    again = _apply(store, deployment("web"), "gitops")
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again == first


def test_a_field_no_longer_applied_is_removed_unless_another_manager_owns_it(
    store: apistore.Store,
) -> None:
    config = deployment("web")
    config["metadata"]["labels"] = {"app": "web", "team": "a", "tier": "front"}
    _apply(store, config, "gitops")
    store.patch(
        "apps/v1",
        "Deployment",
        "default",
        "web",
        {"metadata": {"labels": {"tier": "front"}}},
        patch_type="merge",
        field_manager="person",
    )
    # The merge patch set tier to the value it had: it changed nothing, so gitops still owns
    # it alone; a value changed by "person" would be theirs.
    store.patch(
        "apps/v1",
        "Deployment",
        "default",
        "web",
        {"metadata": {"labels": {"team": "b"}}},
        patch_type="merge",
        field_manager="person",
    )
    config["metadata"]["labels"] = {"app": "web"}
    result = _apply(store, config, "gitops", force=True)
    assert result["metadata"]["labels"] == {"app": "web", "team": "b"}


def test_changing_a_field_another_manager_owns_is_a_conflict_unless_forced(
    store: apistore.Store,
) -> None:
    _apply(store, deployment("web", replicas=2), "gitops")
    with pytest.raises(apistore.ApiError) as caught:
        _apply(store, deployment("web", replicas=5), "operator")
    assert caught.value.status == 409
    assert (
        caught.value.message
        == 'Apply failed with 1 conflict: conflict with "gitops" using apps/v1: .spec.replicas'
    )
    assert caught.value.details["causes"][0]["field"] == ".spec.replicas"
    forced = _apply(store, deployment("web", replicas=5), "operator", force=True)
    assert forced["spec"]["replicas"] == 5
    owners = _managers(forced)
    assert "f:replicas" in owners["operator"]["fieldsV1"]["f:spec"]
    assert "f:replicas" not in owners["gitops"]["fieldsV1"]["f:spec"]


def test_an_update_takes_ownership_of_what_it_changed(store: apistore.Store) -> None:
    _apply(store, deployment("web", replicas=2), "gitops")
    store.patch(
        "apps/v1",
        "Deployment",
        "default",
        "web",
        {"spec": {"replicas": 3}},
        patch_type="merge",
        field_manager="kubectl-scale",
    )
    with pytest.raises(apistore.ApiError) as caught:
        _apply(store, deployment("web", replicas=4), "operator")
    assert '"kubectl-scale"' in caught.value.message


def test_two_appliers_of_the_same_values_share_them_and_do_not_fight(store: apistore.Store) -> None:
    config = model("resnet")
    _apply(store, config, "argocd")
    _apply(store, config, "polyserve-operator", force=True)
    before = store.get("polyserve.io/v1alpha1", "InferenceModel", "default", "resnet")
    for manager in ("argocd", "polyserve-operator", "argocd"):
        again = _apply(store, copy.deepcopy(config), manager)
        assert again["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert set(_managers(before)) == {"argocd", "polyserve-operator"}


def test_server_defaults_inside_an_applied_list_do_not_read_as_changes(
    store: apistore.Store,
) -> None:
    _apply(store, deployment("web"), "operator", force=True)
    live = store.get("apps/v1", "Deployment", "default", "web")
    assert live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    # A second manager applying the same containers (without the defaults) meets no conflict.
    same = _apply(store, deployment("web"), "gitops")
    assert same["spec"] == live["spec"]


def test_apply_of_status_owns_status_fields_only(store: apistore.Store) -> None:
    _apply(store, model("resnet"), "gitops")
    status = {
        "apiVersion": "polyserve.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": "resnet", "namespace": "default"},
        "status": {"readyReplicas": 1},
    }
    result = store.patch(
        "polyserve.io/v1alpha1",
        "InferenceModel",
        "default",
        "resnet",
        status,
        patch_type="apply",
        field_manager="operator",
        subresource="status",
    )
    assert result["status"] == {"readyReplicas": 1}
    entry = _managers(result)["operator"]
    assert entry["subresource"] == "status" and list(entry["fieldsV1"]) == ["f:status"]
    assert result["spec"]["replicas"] == 1


def test_what_admission_defaults_inside_an_applied_list_neither_conflicts_nor_flaps(
    store: apistore.Store,
) -> None:
    def admit(operation: str, new: Obj, old: Obj | None) -> None:
        for container in new["spec"]["template"]["spec"]["containers"]:
            container.setdefault("resources", {})

    store.add_admission("apps/v1", "Deployment", admit)
    _apply(store, deployment("web"), "operator", force=True)
    shared = _apply(store, deployment("web"), "gitops")
    again = _apply(store, deployment("web"), "operator")
    assert again["metadata"]["resourceVersion"] == shared["metadata"]["resourceVersion"]
    assert again["spec"]["template"]["spec"]["containers"][0]["resources"] == {}

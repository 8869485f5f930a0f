"""The store in process: metadata, versions, concurrency, subresources, kind rules,
listeners and admission, as controllers use it."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.apiserver_support import configmap, deployment, pod

Obj = dict[str, Any]


@pytest.fixture()
def store() -> apistore.Store:
    return apistore.Store()


def test_a_new_store_has_the_default_and_system_namespaces_active(store: apistore.Store) -> None:
    names = {ns["metadata"]["name"]: ns for ns in store.list("v1", "Namespace")}
    assert {"default", "kube-system"} <= set(names)
    assert names["default"]["status"]["phase"] == "Active"
    assert names["default"]["metadata"]["labels"]["kubernetes.io/metadata.name"] == "default"


def test_a_created_object_gets_uid_timestamp_version_and_generation(store: apistore.Store) -> None:
    before = store.version
    created = store.create(configmap("cfg", data={"a": "1"}))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert meta["resourceVersion"] == str(before + 1) == str(store.version)
    assert store.get("v1", "ConfigMap", "default", "cfg")["data"] == {"a": "1"}


def test_every_write_bumps_the_one_global_version(store: apistore.Store) -> None:
    first = store.create(configmap("a"))["metadata"]["resourceVersion"]
    second = store.create(pod("b"))["metadata"]["resourceVersion"]
    assert int(second) == int(first) + 1


def test_generate_name_makes_a_unique_name(store: apistore.Store) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"generateName": "cfg-", "namespace": "default"},
    }
    names = {store.create(body)["metadata"]["name"] for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith("cfg-") and len(n) == 9 for n in names)


def test_a_namespaced_object_needs_its_namespace(store: apistore.Store) -> None:
    with pytest.raises(apistore.ApiError) as caught:
        store.create(configmap("cfg", namespace="nowhere"))
    assert caught.value.status == 404
    assert caught.value.message == 'namespaces "nowhere" not found'


def test_creating_an_existing_object_is_a_conflict_worded_as_the_real_server(
    store: apistore.Store,
) -> None:
    store.create(deployment("web"))
    with pytest.raises(apistore.ApiError) as caught:
        store.create(deployment("web"))
    assert (caught.value.status, caught.value.reason) == (409, "AlreadyExists")
    assert caught.value.message == 'deployments.apps "web" already exists'


def test_an_invalid_name_is_refused_with_the_real_message(store: apistore.Store) -> None:
    with pytest.raises(apistore.ApiError) as caught:
        store.create(configmap("Not_Valid"))
    assert caught.value.status == 422
    assert caught.value.message.startswith(
        'ConfigMap "Not_Valid" is invalid: metadata.name: Invalid value'
    )


def test_objects_handed_out_are_copies(store: apistore.Store) -> None:
    body = configmap("cfg", data={"a": "1"})
    created = store.create(body)
    body["data"]["a"] = "changed by the caller"
    created["data"]["a"] = "changed too"
    store.get("v1", "ConfigMap", "default", "cfg")["data"]["a"] = "and again"
    assert store.get("v1", "ConfigMap", "default", "cfg")["data"] == {"a": "1"}


def test_get_of_a_missing_object_is_404_and_try_get_is_none(store: apistore.Store) -> None:
    with pytest.raises(apistore.ApiError) as caught:
        store.get("apps/v1", "Deployment", "default", "nope")
    assert caught.value.message == 'deployments.apps "nope" not found'
    assert store.try_get("apps/v1", "Deployment", "default", "nope") is None


def test_list_filters_by_namespace_and_selectors_in_name_order(store: apistore.Store) -> None:
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    for name in ("c", "a", "b"):
        store.create(pod(name))
    store.create(pod("a", namespace="other"))
    assert [p["metadata"]["name"] for p in store.list("v1", "Pod", "default")] == ["a", "b", "c"]
    assert len(store.list("v1", "Pod")) == 4
    assert [
        p["metadata"]["name"]
        for p in store.list("v1", "Pod", "default", label_selector="app in (a,c)")
    ] == ["a", "c"]
    assert [
        p["metadata"]["name"] for p in store.list("v1", "Pod", label_selector={"app": "a"})
    ] == ["a", "a"]
    found = store.list("v1", "Pod", field_selector="metadata.namespace=other")
    assert [p["metadata"]["namespace"] for p in found] == ["other"]


def test_owned_finds_the_objects_of_a_kind_that_name_an_owner_and_copies_them(
    store: apistore.Store,
) -> None:
    owner = store.create(configmap("owner"))
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    for name in ("b", "a"):
        store.create({**pod(name), "metadata": {**pod(name)["metadata"], "ownerReferences": [ref]}})
    store.create(pod("stranger"))
    store.create(
        {**configmap("c"), "metadata": {**configmap("c")["metadata"], "ownerReferences": [ref]}}
    )
    found = store.owned("v1", "Pod", owner["metadata"]["uid"])
    assert [p["metadata"]["name"] for p in found] == ["a", "b"]
    found[0]["metadata"]["labels"]["app"] = "changed by the caller"
    assert store.get("v1", "Pod", "default", "a")["metadata"]["labels"] == {"app": "a"}
    store.delete("v1", "Pod", "default", "a", grace_period_seconds=0)
    assert [p["metadata"]["name"] for p in store.owned("v1", "Pod", owner["metadata"]["uid"])] == [
        "b"
    ]
    assert store.owned("v1", "Pod", "no-such-uid") == []


def test_a_stale_resource_version_on_replace_is_a_conflict(store: apistore.Store) -> None:
    created = store.create(configmap("cfg", data={"a": "1"}))
    store.patch("v1", "ConfigMap", "default", "cfg", {"data": {"a": "2"}}, patch_type="merge")
    created["data"] = {"a": "3"}
    with pytest.raises(apistore.ApiError) as caught:
        store.replace(created)
    assert caught.value.status == 409
    assert caught.value.message == (
        'Operation cannot be fulfilled on configmaps "cfg": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


def test_a_json_patch_test_that_fails_is_422(store: apistore.Store) -> None:
    created = store.create(configmap("cfg"))
    store.patch("v1", "ConfigMap", "default", "cfg", {"data": {"a": "2"}}, patch_type="merge")
    ops = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": created["metadata"]["resourceVersion"],
        },
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    with pytest.raises(apistore.ApiError) as caught:
        store.patch("v1", "ConfigMap", "default", "cfg", ops, patch_type="json")
    assert (caught.value.status, caught.value.reason) == (422, "Invalid")


def test_a_json_patch_carrying_a_stale_version_is_a_conflict(store: apistore.Store) -> None:
    store.create(configmap("cfg"))
    ops = [{"op": "replace", "path": "/metadata/resourceVersion", "value": "1"}]
    with pytest.raises(apistore.ApiError) as caught:
        store.patch("v1", "ConfigMap", "default", "cfg", ops, patch_type="json")
    assert caught.value.status == 409


def test_generation_moves_with_the_spec_not_with_metadata_or_status(store: apistore.Store) -> None:
    store.create(deployment("web"))
    labelled = store.patch(
        "apps/v1",
        "Deployment",
        "default",
        "web",
        {"metadata": {"labels": {"x": "y"}}},
        patch_type="merge",
    )
    assert labelled["metadata"]["generation"] == 1
    scaled = store.patch(
        "apps/v1", "Deployment", "default", "web", {"spec": {"replicas": 3}}, patch_type="merge"
    )
    assert scaled["metadata"]["generation"] == 2
    status = store.patch(
        "apps/v1",
        "Deployment",
        "default",
        "web",
        {"status": {"replicas": 3}},
        patch_type="merge",
        subresource="status",
    )
    assert status["metadata"]["generation"] == 2


def test_the_main_resource_ignores_status_and_the_status_subresource_only_changes_it(
    store: apistore.Store,
) -> None:
    store.create(deployment("web"))
    main = store.patch(
        "apps/v1",
        "Deployment",
        "default",
        "web",
        {"spec": {"replicas": 2}, "status": {"replicas": 9}},
        patch_type="merge",
    )
    assert main["spec"]["replicas"] == 2 and "replicas" not in main.get("status", {})
    status = store.patch(
        "apps/v1",
        "Deployment",
        "default",
        "web",
        {"spec": {"replicas": 7}, "status": {"replicas": 2}},
        patch_type="merge",
        subresource="status",
    )
    assert status["spec"]["replicas"] == 2 and status["status"]["replicas"] == 2


def test_a_create_resets_a_pods_status_to_pending(store: apistore.Store) -> None:
    body = pod("p")
    body["status"] = {"phase": "Running"}
    created = store.create(body)
    assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


def test_a_write_that_changes_nothing_commits_nothing(store: apistore.Store) -> None:
    store.create(configmap("cfg", data={"a": "1"}))
    before = store.version
    events: list[apistore.Event] = []
    store.listen(events.append)
    same = store.patch(
        "v1", "ConfigMap", "default", "cfg", {"data": {"a": "1"}}, patch_type="merge"
    )
    assert same["metadata"]["resourceVersion"] == str(before) and store.version == before
    assert events == []


def test_dry_run_changes_nothing(store: apistore.Store) -> None:
    before = store.version
    created = store.create(configmap("cfg"), dry_run=True)
    assert created["metadata"]["name"] == "cfg"
    assert store.try_get("v1", "ConfigMap", "default", "cfg") is None and store.version == before


def test_secret_string_data_is_folded_into_base64_data(store: apistore.Store) -> None:
    created = store.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s", "namespace": "default"},
            "data": {"kept": base64.b64encode(b"old").decode()},
            "stringData": {"token": "hunter2"},
        }
    )
    assert "stringData" not in created
    assert base64.b64decode(created["data"]["token"]) == b"hunter2"
    assert created["type"] == "Opaque"


def test_an_immutable_configmap_refuses_data_changes(store: apistore.Store) -> None:
    store.create(configmap("cfg", data={"a": "1"}, immutable=True))
    with pytest.raises(apistore.ApiError) as caught:
        store.patch("v1", "ConfigMap", "default", "cfg", {"data": {"a": "2"}}, patch_type="merge")
    assert caught.value.status == 422
    assert "data: Forbidden: field is immutable when `immutable` is set" in caught.value.message
    labelled = store.patch(
        "v1",
        "ConfigMap",
        "default",
        "cfg",
        {"metadata": {"labels": {"ok": "yes"}}},
        patch_type="merge",
    )
    assert labelled["metadata"]["labels"] == {"ok": "yes"}


def test_the_scale_subresource_reads_and_writes_replicas(store: apistore.Store) -> None:
    store.create(deployment("web", replicas=2))
    scale = store.get_scale("apps/v1", "Deployment", "default", "web")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2
    assert scale["status"]["selector"] == "app=web"
    scale["spec"]["replicas"] = 5
    written = store.replace_scale("apps/v1", "Deployment", "default", "web", scale)
    assert written["spec"]["replicas"] == 5
    assert store.get("apps/v1", "Deployment", "default", "web")["spec"]["replicas"] == 5
    patched = store.patch(
        "apps/v1",
        "Deployment",
        "default",
        "web",
        {"spec": {"replicas": 1}},
        patch_type="merge",
        subresource="scale",
    )
    assert patched["spec"]["replicas"] == 1


def test_binding_assigns_a_pod_to_a_node_once(store: apistore.Store) -> None:
    store.create(pod("p"))
    bound = store.bind_pod("default", "p", "node-1")
    assert bound["spec"]["nodeName"] == "node-1"
    with pytest.raises(apistore.ApiError) as caught:
        store.bind_pod("default", "p", "node-2")
    assert (
        caught.value.message
        == 'Operation cannot be fulfilled on pods "p": pod p is already assigned to node "node-1"'
    )


def test_logs_come_from_the_registered_reader(store: apistore.Store) -> None:
    store.create(pod("p"))
    with pytest.raises(apistore.ApiError) as caught:
        store.read_log("default", "p", None, False, None)
    assert caught.value.status == 404 and "no kubelet serves logs" in caught.value.message
    calls: list[tuple[Any, ...]] = []

    def reader(*args: Any) -> bytes:
        calls.append(args)
        return b"hello\n"

    store.set_log_reader(reader)
    assert store.read_log("default", "p", None, True, 5) == b"hello\n"
    assert calls == [("default", "p", "main", True, 5)]
    with pytest.raises(apistore.ApiError) as unknown:
        store.read_log("default", "p", "sidecar", False, None)
    assert unknown.value.message == "container sidecar is not valid for pod p"


def test_listeners_get_their_own_copies_in_version_order(store: apistore.Store) -> None:
    seen: list[tuple[str, str, str]] = []

    def first(event: apistore.Event) -> None:
        event.object["metadata"]["name"] = "corrupted"
        if event.type == "ADDED" and event.object["kind"] == "ConfigMap":
            store.create(pod("reaction"))  # a controller writing from its listener

    def second(event: apistore.Event) -> None:
        seen.append((event.type, event.object["kind"], event.object["metadata"]["name"]))

    store.listen(first)
    store.listen(second)
    store.create(configmap("cfg"))
    assert seen == [("ADDED", "ConfigMap", "cfg"), ("ADDED", "Pod", "reaction")]
    assert store.get("v1", "ConfigMap", "default", "cfg")["metadata"]["name"] == "cfg"


def test_a_shared_listener_reads_the_stored_objects_themselves_in_version_order(
    store: apistore.Store,
) -> None:
    seen: list[apistore.Event] = []
    store.listen(seen.append, [("v1", "ConfigMap")], shared=True)
    store.create(configmap("cfg", data={"a": "1"}))
    store.patch("v1", "ConfigMap", "default", "cfg", {"data": {"a": "2"}}, patch_type="merge")
    stored = store.view(store.registry.lookup("v1", "ConfigMap"), "default", "cfg")
    assert [e.type for e in seen] == ["ADDED", "MODIFIED"]
    assert seen[-1].object is stored, "no copy"
    assert seen[-1].old is seen[0].object
    assert (seen[0].object["data"], stored["data"]) == ({"a": "1"}, {"a": "2"})


def test_a_listener_for_some_kinds_hears_only_those_and_can_unsubscribe(
    store: apistore.Store,
) -> None:
    seen: list[apistore.Event] = []
    unsubscribe = store.listen(seen.append, kinds=[("apps/v1", "Deployment")])
    store.create(configmap("cfg"))
    store.create(deployment("web"))
    store.patch(
        "apps/v1", "Deployment", "default", "web", {"spec": {"replicas": 2}}, patch_type="merge"
    )
    assert [e.type for e in seen] == ["ADDED", "MODIFIED"]
    assert seen[1].old is not None and seen[1].old["spec"]["replicas"] == 1
    unsubscribe()
    store.delete("apps/v1", "Deployment", "default", "web")
    assert len(seen) == 2


def test_a_failing_listener_is_logged_and_breaks_nothing(
    store: apistore.Store, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def broken(event: apistore.Event) -> None:
        raise RuntimeError("listener bug")

    store.listen(broken)
    store.listen(lambda e: seen.append(e.type))
    with caplog.at_level(logging.ERROR):
        store.create(configmap("cfg"))
    assert seen == ["ADDED"]
    assert store.try_get("v1", "ConfigMap", "default", "cfg") is not None
    assert "listener bug" in caplog.text


def test_admission_can_default_and_refuse_writes(store: apistore.Store) -> None:
    operations: list[str] = []

    def admit(operation: str, new: Obj, old: Obj | None) -> None:
        operations.append(operation)
        new["spec"].setdefault("clusterIP", "10.96.0.10")
        if new["metadata"].get("labels", {}).get("refuse") == "yes":
            raise apistore.ApiError(422, "Invalid", "refused by admission")

    store.add_admission("v1", "Service", admit)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]},
    }
    created = store.create(service)
    assert created["spec"]["clusterIP"] == "10.96.0.10"
    assert created["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    with pytest.raises(apistore.ApiError):
        store.patch(
            "v1",
            "Service",
            "default",
            "web",
            {"metadata": {"labels": {"refuse": "yes"}}},
            patch_type="merge",
        )
    assert "refuse" not in store.get("v1", "Service", "default", "web")["metadata"].get(
        "labels", {}
    )
    assert operations == ["CREATE", "UPDATE"]


def test_unknown_kinds_are_404_as_no_matches(store: apistore.Store) -> None:
    with pytest.raises(apistore.ApiError) as caught:
        store.create({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert caught.value.message == 'no matches for kind "Widget" in version "example.com/v1"'

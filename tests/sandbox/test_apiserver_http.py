"""The HTTP front with a plain HTTP client: paths, verbs, content types, Status errors,
discovery, OpenAPI, Tables."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from polyserve_sandbox.apiserver import crds, discovery, http
from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.apiserver_support import configmap, deployment, model, pod

Obj = dict[str, Any]
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str, store: apistore.Store) -> None:
        self.session, self.url, self.store = session, url, store

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        async with self.session.request(
            method,
            self.url + path,
            data=data,
            params=params,
            headers={
                "Content-Type": content_type,
                "Accept": accept,
                "Authorization": "Bearer anything",
            },
        ) as response:
            text = await response.text()
            parsed = json.loads(text) if text and "json" in response.content_type else text
            return response.status, parsed, response


@pytest.fixture()
async def api() -> AsyncIterator[Api]:
    store = apistore.Store()
    crds.register_project_crds(store)
    server = http.ApiServer(store)
    url = await server.start()
    async with aiohttp.ClientSession() as session:
        yield Api(session, url, store)
    await server.stop()


async def test_core_discovery_says_v1_not_slash_v1(api: Api) -> None:
    status, versions, _ = await api.call("GET", "/api")
    assert status == 200 and versions["kind"] == "APIVersions" and versions["versions"] == ["v1"]
    _, resources, _ = await api.call("GET", "/api/v1")
    assert resources["groupVersion"] == "v1"
    names = {r["name"]: r for r in resources["resources"]}
    assert names["pods"]["shortNames"] == ["po"] and names["pods"]["namespaced"] is True
    assert names["pods/log"]["kind"] == "Pod" and names["pods/status"]["verbs"] == [
        "get",
        "patch",
        "update",
    ]
    assert names["namespaces"]["namespaced"] is False


async def test_group_discovery_lists_our_crds_with_short_names(api: Api) -> None:
    _, groups, _ = await api.call("GET", "/apis")
    polyserve = next(g for g in groups["groups"] if g["name"] == "polyserve.io")
    assert polyserve["preferredVersion"] == {
        "groupVersion": "polyserve.io/v1alpha1",
        "version": "v1alpha1",
    }
    _, resources, _ = await api.call("GET", "/apis/polyserve.io/v1alpha1")
    names = {r["name"]: r for r in resources["resources"]}
    assert names["inferencemodels"]["shortNames"] == ["im"]
    assert names["inferenceensembles"]["shortNames"] == ["ie"]
    assert "polyserve" in names["inferencemodels"]["categories"]
    assert "inferencemodels/status" in names
    _, apps, _ = await api.call("GET", "/apis/apps/v1")
    scale = next(r for r in apps["resources"] if r["name"] == "deployments/scale")
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")


async def test_aggregated_discovery_is_served_when_asked_for(api: Api) -> None:
    status, document, response = await api.call(
        "GET", "/apis", accept=discovery.AGGREGATED + ",application/json"
    )
    assert status == 200 and response.headers["Content-Type"] == discovery.AGGREGATED
    assert document["kind"] == "APIGroupDiscoveryList"
    apps = next(i for i in document["items"] if i["metadata"]["name"] == "apps")
    deployments = next(
        r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments"
    )
    assert deployments["scope"] == "Namespaced"
    assert {s["subresource"] for s in deployments["subresources"]} == {"scale", "status"}


async def test_openapi_v3_lets_kubectl_validate_on_the_server(api: Api) -> None:
    _, index, _ = await api.call("GET", "/openapi/v3")
    url = index["paths"]["apis/polyserve.io/v1alpha1"]["serverRelativeURL"]
    _, document, _ = await api.call("GET", url)
    patch = document["paths"][
        "/apis/polyserve.io/v1alpha1/namespaces/{namespace}/inferencemodels/{name}"
    ]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "polyserve.io",
        "version": "v1alpha1",
        "kind": "InferenceModel",
    }
    assert "fieldValidation" in {p["name"] for p in patch["parameters"]}
    schema = document["components"]["schemas"]["io.polyserve.v1alpha1.InferenceModel"]
    assert schema["properties"]["spec"]["properties"]["hardware"]["description"]
    async with api.session.get(
        api.url + "/openapi/v2",
        headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"},
    ) as response:
        assert response.status == 200 and (await response.read()).startswith(b"\n\x032.0")


async def test_errors_are_status_objects_with_reason_code_and_details(api: Api) -> None:
    status, error, _ = await api.call("GET", "/apis/apps/v1/namespaces/default/deployments/missing")
    assert status == 404
    assert error == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "missing" not found',
        "reason": "NotFound",
        "details": {"name": "missing", "group": "apps", "kind": "deployments"},
        "code": 404,
    }
    status, unknown, _ = await api.call("GET", "/apis/example.com/v1/widgets")
    assert (status, unknown["message"]) == (404, "the server could not find the requested resource")
    status, _, _ = await api.call("POST", "/api/v1/namespaces/default/pods/p")
    assert status == 405


async def test_create_get_list_update_and_delete_round_trip(api: Api) -> None:
    status, created, _ = await api.call(
        "POST", "/api/v1/namespaces/default/configmaps", configmap("cfg", data={"a": "1"})
    )
    assert status == 201 and created["metadata"]["uid"]
    status, got, _ = await api.call("GET", "/api/v1/namespaces/default/configmaps/cfg")
    assert got == created
    got["data"]["a"] = "2"
    status, replaced, _ = await api.call("PUT", "/api/v1/namespaces/default/configmaps/cfg", got)
    assert status == 200 and replaced["data"] == {"a": "2"}
    status, stale, _ = await api.call("PUT", "/api/v1/namespaces/default/configmaps/cfg", got)
    assert (status, stale["reason"]) == (409, "Conflict")
    status, listed, _ = await api.call("GET", "/api/v1/configmaps")
    assert listed["kind"] == "ConfigMapList" and listed["apiVersion"] == "v1"
    assert listed["metadata"]["resourceVersion"] == str(api.store.version)
    status, deleted, _ = await api.call("DELETE", "/api/v1/namespaces/default/configmaps/cfg")
    assert status == 200 and deleted["metadata"]["name"] == "cfg"


async def test_every_patch_content_type_is_understood(api: Api) -> None:
    await api.call("POST", "/apis/apps/v1/namespaces/default/deployments", deployment("web"))
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    _, merged, _ = await api.call(
        "PATCH", path, {"spec": {"replicas": 2}}, content_type="application/merge-patch+json"
    )
    _, jsoned, _ = await api.call(
        "PATCH",
        path,
        [{"op": "replace", "path": "/spec/replicas", "value": 3}],
        content_type="application/json-patch+json",
    )
    _, strategic, _ = await api.call(
        "PATCH",
        path,
        {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "busybox:2"}]}}}},
        content_type="application/strategic-merge-patch+json",
    )
    applied_yaml = (
        "apiVersion: apps/v1\nkind: Deployment\n"
        "metadata: {name: web, namespace: default}\nspec: {replicas: 4}\n"
    )
    status, applied, _ = await api.call(
        "PATCH",
        path,
        applied_yaml,
        content_type="application/apply-patch+yaml",
        params={"fieldManager": "me", "force": "true"},
    )
    assert (merged["spec"]["replicas"], jsoned["spec"]["replicas"]) == (2, 3)
    assert strategic["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox:2"
    assert status == 200 and applied["spec"]["replicas"] == 4
    status, error, _ = await api.call("PATCH", path, {}, content_type="text/plain")
    assert (status, error["reason"]) == (415, "UnsupportedMediaType")
    status, created, _ = await api.call(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/fresh",
        {**deployment("fresh")},
        content_type="application/apply-patch+yaml",
        params={"fieldManager": "me"},
    )
    assert status == 201 and created["metadata"]["name"] == "fresh"


async def test_dry_run_and_unknown_field_warnings(api: Api) -> None:
    body = model("resnet")
    body["spec"]["typo"] = 1
    status, created, response = await api.call(
        "POST",
        "/apis/polyserve.io/v1alpha1/namespaces/default/inferencemodels",
        body,
        params={"dryRun": "All"},
    )
    assert status == 201 and "typo" not in created["spec"]
    assert response.headers.getall("Warning") == ['299 - "unknown field \\"spec.typo\\""']
    assert api.store.try_get("polyserve.io/v1alpha1", "InferenceModel", "default", "resnet") is None
    status, error, _ = await api.call(
        "POST",
        "/apis/polyserve.io/v1alpha1/namespaces/default/inferencemodels",
        body,
        params={"fieldValidation": "Strict"},
    )
    assert status == 400 and 'unknown field "spec.typo"' in error["message"]


async def test_delete_options_choose_propagation_and_grace(api: Api) -> None:
    api.store.create(pod("running", nodeName="node-1"))
    status, marked, _ = await api.call(
        "DELETE",
        "/api/v1/namespaces/default/pods/running",
        {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 7},
    )
    assert status == 202 and marked["metadata"]["deletionGracePeriodSeconds"] == 7
    status, _, _ = await api.call(
        "DELETE", "/api/v1/namespaces/default/pods/running", {"gracePeriodSeconds": 0}
    )
    assert status == 200 and api.store.try_get("v1", "Pod", "default", "running") is None
    api.store.create(configmap("cfg"))
    status, error, _ = await api.call(
        "DELETE",
        "/api/v1/namespaces/default/configmaps/cfg",
        {"preconditions": {"resourceVersion": "1"}},
    )
    assert status == 409 and "Precondition failed" in error["message"]


async def test_tables_answer_kubectl_get_with_the_real_columns(api: Api) -> None:
    api.store.create(pod("p", nodeName="node-1"))
    status, table, response = await api.call("GET", "/api/v1/namespaces/default/pods", accept=TABLE)
    assert status == 200 and response.headers["Content-Type"].startswith(
        "application/json;as=Table"
    )
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns[:5] == [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0)]
    assert ("IP", 1) in columns and ("Node", 1) in columns
    [row] = table["rows"]
    assert row["cells"][:4] == ["p", "0/1", "Pending", "0"] and row["cells"][6] == "node-1"
    assert row["object"]["kind"] == "PartialObjectMetadata"
    api.store.create(model("resnet"))
    api.store.patch(
        "polyserve.io/v1alpha1",
        "InferenceModel",
        "default",
        "resnet",
        {"status": {"backend": "openvino", "pool": "xeon", "replicas": 1}},
        patch_type="merge",
        subresource="status",
    )
    _, models, _ = await api.call(
        "GET", "/apis/polyserve.io/v1alpha1/inferencemodels", accept=TABLE
    )
    names = [c["name"] for c in models["columnDefinitions"]]
    assert names[:5] == ["Name", "Ready", "Reason", "Backend", "Pool"]
    # The backend that serves (what auto picked), from status.
    assert models["rows"][0]["cells"][3:6] == ["openvino", "xeon", 1]


async def test_logs_scale_and_binding_subresources(api: Api) -> None:
    api.store.create(pod("p"))
    api.store.set_log_reader(
        lambda ns, name, container, previous, tail: f"{container} {tail}\n".encode()
    )
    status, text, _ = await api.call(
        "GET", "/api/v1/namespaces/default/pods/p/log", params={"tailLines": "3"}
    )
    assert (status, text) == (200, "main 3\n")
    status, _, _ = await api.call(
        "POST",
        "/api/v1/namespaces/default/pods/p/binding",
        {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "p"},
            "target": {"kind": "Node", "name": "n1"},
        },
    )
    assert status == 201 and api.store.get("v1", "Pod", "default", "p")["spec"]["nodeName"] == "n1"
    api.store.create(deployment("web"))
    status, scale, _ = await api.call(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
        {"spec": {"replicas": 4}},
        content_type="application/merge-patch+json",
    )
    assert status == 200 and scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4


async def test_version_and_health(api: Api) -> None:
    _, version, _ = await api.call("GET", "/version")
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")
    status, text, _ = await api.call("GET", "/readyz")
    assert (status, text) == (200, "ok")


async def test_a_protobuf_body_of_another_kind_is_refused_with_the_json_way(api: Api) -> None:
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    envelope = b"k8s\x00" + field(1, field(1, b"v1") + field(2, b"Pod")) + field(2, b"")
    async with api.session.post(
        api.url + "/api/v1/namespaces/default/pods",
        data=envelope,
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
    ) as response:
        status = await response.json()
    assert status["code"] == 415 and status["reason"] == "UnsupportedMediaType"
    assert "--dry-run=client -o yaml | kubectl apply -f -" in status["message"]


async def test_a_delete_with_protobuf_options_as_helm_sends_them_is_read(api: Api) -> None:
    """client-go's typed clients (helm removing a release's Secret) send DeleteOptions as
    protobuf; a foreground propagation policy in them is honoured like its JSON form."""

    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    api.store.create(configmap("release"))
    options = field(4, b"Foreground")
    envelope = (
        b"k8s\x00" + field(1, field(1, b"v1") + field(2, b"DeleteOptions")) + field(2, options)
    )
    async with api.session.delete(
        api.url + "/api/v1/namespaces/default/configmaps/release",
        data=envelope,
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
    ) as response:
        assert response.status == 200, await response.text()
    assert api.store.try_get("v1", "ConfigMap", "default", "release") is None


async def test_a_watch_asked_as_a_table_streams_table_rows(api: Api) -> None:
    since = str(api.store.version)
    async with api.session.get(
        api.url + "/api/v1/namespaces/default/pods",
        params={"watch": "1", "resourceVersion": since},
        headers={"Accept": TABLE},
    ) as response:
        api.store.create(pod("watched"))
        event = json.loads(await response.content.readline())
    assert event["type"] == "ADDED" and event["object"]["kind"] == "Table"
    assert event["object"]["rows"][0]["cells"][:3] == ["watched", "0/1", "Pending"]

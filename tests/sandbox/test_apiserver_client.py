"""The operator's own client (``polyserve_operator.k8s.Client``, over the ``kubernetes``
package) against the sandbox's API server: apply, patch, get, list, delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from polyserve_operator import k8s
from polyserve_sandbox.apiserver import crds, http
from tests.sandbox.apiserver_support import ServerThread, deployment, model

API = "polyserve.io/v1alpha1"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, k8s.Client]]:
    with ServerThread() as server:
        server.call(crds.register_project_crds)
        kubeconfig = http.write_kubeconfig(server.url, tmp_path_factory.mktemp("kube") / "config")
        client = k8s.connect(Path(kubeconfig), "polyserve-operator")
        yield server, client
        client.close()


def test_apply_creates_then_updates_under_the_clients_field_manager(
    served: tuple[ServerThread, k8s.Client],
) -> None:
    _, client = served
    created = client.apply(deployment("web"))
    assert created is not None and created["metadata"]["generation"] == 1
    managers = {m["manager"]: m["operation"] for m in created["metadata"]["managedFields"]}
    assert managers == {"polyserve-operator": "Apply"}
    changed = client.apply(deployment("web", replicas=3))
    assert changed is not None and changed["spec"]["replicas"] == 3
    assert changed["metadata"]["generation"] == 2
    again = client.apply(deployment("web", replicas=3))
    assert again is not None
    assert again["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]


def test_patch_get_list_with_labels_and_delete(served: tuple[ServerThread, k8s.Client]) -> None:
    server, client = served
    for name, team in (("a", "red"), ("b", "blue"), ("c", "red")):
        body = model(name)
        body["metadata"]["labels"] = {"team": team}
        client.apply(body)
    patched = client.patch(API, "InferenceModel", "default", "a", {"spec": {"replicas": 2}})
    assert patched is not None and patched["spec"]["replicas"] == 2
    status = client.patch(
        API,
        "InferenceModel",
        "default",
        "a",
        {"status": {"readyReplicas": 2}},
        subresource="status",
    )
    assert status is not None and status["status"] == {"readyReplicas": 2}
    got = client.get(API, "InferenceModel", "default", "a")
    assert got is not None and (got["spec"]["replicas"], got["status"]["readyReplicas"]) == (2, 2)
    red = client.list(API, "InferenceModel", "default", {"team": "red"})
    assert [m["metadata"]["name"] for m in red] == ["a", "c"]
    # The server filtered (the client filters again): ask it directly.
    listed = server.call(
        lambda s: s.list(API, "InferenceModel", "default", label_selector="team=red")
    )
    assert len(listed) == 2
    assert client.delete(API, "InferenceModel", "default", "b") is True
    assert client.delete(API, "InferenceModel", "default", "b") is False
    assert client.get(API, "InferenceModel", "default", "b") is None


def test_errors_reach_the_client_with_the_servers_words(
    served: tuple[ServerThread, k8s.Client],
) -> None:
    _, client = served
    body = model("bad")
    body["spec"]["replicas"] = -1
    with pytest.raises(k8s.ApiError) as caught:
        client.apply(body)
    assert caught.value.status == 422
    assert "spec.replicas in body should be greater than or equal to 0" in str(caught.value)

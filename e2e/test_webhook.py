"""The validating webhook, through kopf's real admission server.

A real API server calls it; the sandbox runs no admission webhooks, so the test posts the
AdmissionReview the API server would send.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from typing import Any

from e2e.conftest import Cluster, Operator, example


def _review(
    url: str,
    obj: dict[str, Any],
    *,
    dry_run: bool = False,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "polyserve.io", "version": "v1alpha1", "kind": obj["kind"]},
            "resource": {
                "group": "polyserve.io",
                "version": "v1alpha1",
                "resource": obj["kind"].lower() + "s",
            },
            "operation": operation,
            "userInfo": {"username": "e2e"},
            "namespace": obj["metadata"]["namespace"],
            "name": obj["metadata"]["name"],
            "object": None if operation == "DELETE" else obj,
            "oldObject": old if old is not None else (obj if operation == "DELETE" else None),
            "dryRun": dry_run,
        },
    }
    request = urllib.request.Request(
        url, data=json.dumps(review).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())["response"]
    return answer


def test_the_webhook_refuses_a_gpu_backend_on_the_xeon_pool(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    (doc,) = example("bert-gpu.yaml", namespace)
    url = f"{operator.webhook_url}/validate-inferencemodel"
    assert _review(url, doc)["allowed"] is True
    doc["spec"]["hardware"]["pool"] = "xeon"
    doc["spec"]["hardware"].pop("gpu")
    for dry_run in (False, True):
        answer = _review(url, doc, dry_run=dry_run)
        assert answer["allowed"] is False
        assert "need a GPU" in answer["status"]["message"]


def test_the_webhook_refuses_an_ensemble_with_unknown_members_and_bad_wiring(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    tokenizer, sentiment, ensemble = example("ensemble.yaml", namespace)
    url = f"{operator.webhook_url}/validate-inferenceensemble"
    answer = _review(url, ensemble)
    assert answer["allowed"] is False
    assert "InferenceModel tokenizer does not exist" in answer["status"]["message"]

    cluster.client.apply(tokenizer)
    cluster.client.apply(sentiment)
    assert _review(url, ensemble)["allowed"] is True
    ensemble["spec"]["steps"][1]["inputs"] = {"input_ids": "tokenize.tokens"}
    answer = _review(url, ensemble)
    assert answer["allowed"] is False
    assert "has no output 'tokens'" in answer["status"]["message"]


def test_the_webhook_refuses_a_model_and_an_ensemble_of_the_same_name(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    tokenizer, sentiment, ensemble = example("ensemble.yaml", namespace)
    cluster.client.apply(tokenizer)
    cluster.client.apply(sentiment)
    cluster.client.apply(ensemble)
    clone = dict(
        sentiment, metadata={**sentiment["metadata"], "name": ensemble["metadata"]["name"]}
    )
    answer = _review(f"{operator.webhook_url}/validate-inferencemodel", clone)
    assert answer["allowed"] is False
    assert "an InferenceEnsemble named" in answer["status"]["message"]
    cluster.client.apply(clone)  # past a cluster without the webhook
    twin = dict(ensemble, metadata={**ensemble["metadata"]})
    answer = _review(f"{operator.webhook_url}/validate-inferenceensemble", twin)
    assert answer["allowed"] is False
    assert "an InferenceModel named" in answer["status"]["message"]


def test_the_webhook_lets_an_invalid_ensemble_be_deleted_or_its_metadata_change(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    _tokenizer, _sentiment, ensemble = example("ensemble.yaml", namespace)
    url = f"{operator.webhook_url}/validate-inferenceensemble"
    assert _review(url, ensemble)["allowed"] is False, "its members do not exist"
    assert _review(url, ensemble, operation="DELETE")["allowed"] is True
    released = {**ensemble, "metadata": {**ensemble["metadata"], "finalizers": []}}
    answer = _review(url, released, operation="UPDATE", old=ensemble)
    assert answer["allowed"] is True, "a metadata-only update (a finalizer released) passes"
    changed = {**ensemble, "spec": {**ensemble["spec"], "replicas": 3}}
    assert _review(url, changed, operation="UPDATE", old=ensemble)["allowed"] is False

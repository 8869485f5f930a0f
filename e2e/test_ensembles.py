"""InferenceEnsembles end to end: one worker Deployment serving every member in-process."""

from __future__ import annotations

from typing import Any

from e2e.conftest import Cluster, Operator, example, runnable, wait_for
from polyserve_operator import api


def _ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body = cluster.client.get(api.API_VERSION, "InferenceEnsemble", namespace, name) or {}
    conds = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") or {}


def _invalid_spec(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """Wait until the ensemble's Ready condition says InvalidSpec; returns the condition."""
    return wait_for(
        "InvalidSpec",
        lambda: (r := _ready(cluster, namespace, name)).get("reason") == "InvalidSpec" and r,
    )


def _config_map(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The ConfigMap of the ensemble's current revision (empty until there is one)."""
    body = cluster.client.get(api.API_VERSION, "InferenceEnsemble", namespace, name) or {}
    revision = (body.get("status") or {}).get("revision")
    if not revision:
        return {}
    return cluster.client.get("v1", "ConfigMap", namespace, f"{name}-{revision}") or {}


def _quiet(cluster: Cluster, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The example with its stand-in artifacts and no pods: these tests read what is
    rendered, not what serves (test_models serves the example)."""
    for doc in docs:
        runnable(cluster, doc)
        doc["spec"]["replicas"] = 0
    return docs


def test_an_ensemble_renders_one_deployment_that_fetches_and_serves_every_member(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    for doc in _quiet(cluster, example("ensemble.yaml", namespace)):
        c.apply(doc)
    dep = wait_for(
        "the ensemble's Deployment",
        lambda: c.get("apps/v1", "Deployment", namespace, "sentiment-pipeline"),
    )
    pod = dep["spec"]["template"]["spec"]
    assert [i["name"] for i in pod["initContainers"]] == [
        "fetch-sentiment",
        "fetch-tokenizer",
        "configure",
    ]
    cm = wait_for("the ConfigMap", lambda: _config_map(cluster, namespace, "sentiment-pipeline"))
    assert set(cm["data"]) == {"sentiment.pbtxt", "tokenizer.pbtxt", "sentiment-pipeline.pbtxt"}
    ensemble = cm["data"]["sentiment-pipeline.pbtxt"]
    assert 'platform: "ensemble"' in ensemble
    assert 'value: "tokenize.ids"' in ensemble
    wait_for("a Ready condition", lambda: _ready(cluster, namespace, "sentiment-pipeline"))


def test_an_ensemble_whose_member_is_missing_says_so_and_recovers_when_it_appears(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    tokenizer, sentiment, ensemble = _quiet(cluster, example("ensemble.yaml", namespace))
    c.apply(tokenizer)
    c.apply(ensemble)
    ready = _invalid_spec(cluster, namespace, "sentiment-pipeline")
    assert "InferenceModel sentiment does not exist" in ready["message"]
    assert c.get("apps/v1", "Deployment", namespace, "sentiment-pipeline") is None

    c.apply(sentiment)
    wait_for(
        "the Deployment once the member exists",
        lambda: c.get("apps/v1", "Deployment", namespace, "sentiment-pipeline"),
    )


def test_an_ensemble_follows_a_change_of_its_members_config(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    tokenizer, sentiment, ensemble = _quiet(cluster, example("ensemble.yaml", namespace))
    for doc in (tokenizer, sentiment, ensemble):
        c.apply(doc)

    def member_config() -> str:
        cm = _config_map(cluster, namespace, "sentiment-pipeline")
        text: str = (cm.get("data") or {}).get("sentiment.pbtxt", "")
        return text

    assert "max_batch_size: 8" in wait_for("the ensemble's ConfigMap", member_config)
    sentiment["spec"]["config"]["max_batch_size"] = 16
    c.apply(sentiment)
    wait_for("the new member config", lambda: "max_batch_size: 16" in member_config())


def test_an_ensemble_named_like_a_model_yields_and_says_why(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    tokenizer, sentiment, ensemble = _quiet(cluster, example("ensemble.yaml", namespace))
    twin = dict(sentiment, metadata={**sentiment["metadata"], "name": "sentiment-pipeline"})
    for doc in (tokenizer, sentiment, twin):
        c.apply(doc)
    model_dep = wait_for(
        "the model's Deployment",
        lambda: c.get("apps/v1", "Deployment", namespace, "sentiment-pipeline"),
    )
    c.apply(ensemble)
    ready = _invalid_spec(cluster, namespace, "sentiment-pipeline")
    assert "an InferenceModel named sentiment-pipeline already exists" in ready["message"]
    dep = c.get("apps/v1", "Deployment", namespace, "sentiment-pipeline") or {}
    owners = [o["kind"] for o in dep["metadata"].get("ownerReferences", [])]
    assert owners == ["InferenceModel"], "the model keeps its worker objects"
    assert dep["spec"] == model_dep["spec"]


def test_an_ensemble_whose_member_is_gone_can_still_be_deleted(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    c = cluster.client
    tokenizer, sentiment, ensemble = _quiet(cluster, example("ensemble.yaml", namespace))
    for doc in (tokenizer, sentiment, ensemble):
        c.apply(doc)
    wait_for(
        "the Deployment", lambda: c.get("apps/v1", "Deployment", namespace, "sentiment-pipeline")
    )
    c.delete(api.API_VERSION, "InferenceModel", namespace, "sentiment")
    _invalid_spec(cluster, namespace, "sentiment-pipeline")
    c.delete(api.API_VERSION, "InferenceEnsemble", namespace, "sentiment-pipeline")
    wait_for(
        "the ensemble to go (not stuck in Terminating)",
        lambda: (
            c.get(api.API_VERSION, "InferenceEnsemble", namespace, "sentiment-pipeline") is None
        ),
    )

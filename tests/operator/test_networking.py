"""Each workload's NetworkPolicy: its pods open to what spec.network allows on the serving
ports, to the operator and the monitoring namespaces on metrics, to their own revisions
(a canary's mirror) and to the Gateways their routes attach to; valid for Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml

from polyserve_operator import api, canarying, cli, crds, observe, render, settings
from polyserve_operator.render import networking, workloads

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
CFG = settings.Settings(operator_namespace="polyserve-system")
OWN = {
    "app.kubernetes.io/name": "polyserve-worker",
    "app.kubernetes.io/instance": "resnet50",
    "polyserve.io/inferencemodel": "resnet50",
}


def _model(name: str = "resnet-xeon.yaml", **spec: Any) -> api.InferenceModel:
    (doc,) = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    doc["spec"].update(spec)
    return api.InferenceModel.model_validate(doc)


def _policy(objects: list[Obj]) -> Obj:
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    return policy


def _ingress(policy: Obj) -> dict[tuple[int, ...], list[Obj]]:
    return {
        tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in policy["spec"]["ingress"]
    }


def _namespaces(names: list[str]) -> Obj:
    expression = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}
    return {"namespaceSelector": {"matchExpressions": [expression]}}


def test_by_default_the_serving_ports_are_open_to_the_namespace_and_metrics_to_scrapers() -> None:
    objects = render.objects(render.model_workload(_model()), CFG)
    policy = _policy(objects)
    assert objects[0] is policy, "applied before the pods it guards"
    assert policy["metadata"]["name"] == "resnet50"
    assert policy["spec"]["podSelector"] == {"matchLabels": OWN}
    assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open for fetches"
    rules = _ingress(policy)
    assert rules[(8000, 8001)] == [{"podSelector": {}}]
    assert rules[(8002,)] == [_namespaces(["monitoring", "polyserve-system"])]


def test_allow_from_lists_the_peers_and_the_workloads_own_pods_stay_allowed() -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"team": "search"}}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}},
            "podSelector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]
            },
        },
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
    ]
    im = _model(network={"allowFrom": peers})
    rules = _ingress(_policy(render.objects(render.model_workload(im), CFG)))
    assert rules[(8000, 8001)] == [*peers, {"podSelector": {"matchLabels": OWN}}]


def test_an_empty_allow_from_leaves_only_the_workloads_own_pods() -> None:
    im = _model(network={"allowFrom": []})
    rules = _ingress(_policy(render.objects(render.model_workload(im), CFG)))
    assert rules[(8000, 8001)] == [{"podSelector": {"matchLabels": OWN}}]


def _canary(**routing: Any) -> api.InferenceModel:
    (doc,) = [d for d in yaml.safe_load_all((EXAMPLES / "canary-xeon.yaml").read_text()) if d]
    doc["spec"]["rollout"]["canary"]["trafficRouting"] = {"gatewayAPI": routing}
    doc["spec"]["network"] = {"allowFrom": [{"podSelector": {"matchLabels": {"app": "web"}}}]}
    return api.InferenceModel.model_validate(doc)


def test_a_canary_routed_through_gateways_elsewhere_lets_their_namespaces_in() -> None:
    im = _canary(
        parentRefs=[
            {"name": "edge", "namespace": "gateways"},
            {"name": "internal"},  # in the route's own namespace: already this namespace
            {"name": "same", "namespace": "polyserve-demo"},
        ]
    )
    w = render.model_workload(im)
    policy = _policy(render.objects(w, CFG))
    own = {"podSelector": {"matchLabels": workloads.labels(w)}}
    assert _ingress(policy)[(8000, 8001)] == [
        {"podSelector": {"matchLabels": {"app": "web"}}},
        own,
        _namespaces(["gateways"]),
    ]
    assert "polyserve.io/revision" not in policy["spec"]["podSelector"]["matchLabels"]


def test_every_step_of_a_canary_rollout_applies_the_policy_of_both_revisions() -> None:
    w = render.model_workload(_canary(parentRefs=[{"name": "edge"}]))
    step = canarying.Canaries(CFG).step(
        w, {"metadata": {"name": "classifier"}}, observe.Children(name="classifier"), _now()
    )
    policy = _policy(step.desired)
    assert policy["spec"]["podSelector"] == {"matchLabels": workloads.labels(w)}


def _now() -> Any:
    import datetime

    return datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_the_settings_turn_policies_off_and_choose_the_scraping_namespaces() -> None:
    off = settings.Settings(network_policy=settings.NetworkPolicy(enabled=False))
    objects = render.objects(render.model_workload(_model()), off)
    assert [o for o in objects if o["kind"] == "NetworkPolicy"] == []
    nobody = settings.Settings(network_policy=settings.NetworkPolicy(metrics_namespaces=[]))
    policy = _policy(render.objects(render.model_workload(_model()), nobody))
    assert list(_ingress(policy)) == [(8000, 8001)], "no scraper: the metrics port stays shut"
    assert networking.scrapers(settings.Settings(operator_namespace="ops")) == [
        _namespaces(["monitoring", "ops"])
    ]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("[a-z]*.yaml")), ids=lambda p: p.name)
def test_every_examples_policy_passes_kubernetes_validate_strict(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    objects = cli.render_documents(docs, CFG)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    workloads_ = [o for o in objects if o["kind"] == "Deployment"]
    assert len(policies) == len(workloads_)
    for policy in policies:
        for version in ("1.30", "1.33"):
            kubernetes_validate.validate(policy, version, strict=True)


def test_a_network_with_every_kind_of_peer_passes_kubernetes_validate_strict() -> None:
    im = _model(
        network={
            "allowFrom": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"a": "b"}}, "podSelector": {}},
                {"ipBlock": {"cidr": "192.168.0.0/16"}},
            ]
        }
    )
    kubernetes_validate.validate(
        _policy(render.objects(render.model_workload(im), CFG)), "1.30", strict=True
    )


@pytest.mark.parametrize(
    "peer",
    [{}, {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}],
    ids=["says-nobody", "ip-block-with-a-selector"],
)
def test_a_peer_that_names_nobody_or_mixes_an_ip_block_is_refused(peer: Obj) -> None:
    with pytest.raises(pydantic.ValidationError):
        _model(network={"allowFrom": [peer]})


def test_the_crd_refuses_an_empty_peer_as_the_api_server_would() -> None:
    document = crds.definitions()["inferencemodels.yaml"]
    schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    network = schema["properties"]["spec"]["properties"]["network"]
    jsonschema.validate({"allowFrom": [{"podSelector": {}}]}, network)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"allowFrom": [{}]}, network)

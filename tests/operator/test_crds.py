"""The CRDs are generated from api.py, valid, structural enough, and accept the examples."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from polyserve_operator import api, crds, rules

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def _schema(kind: str) -> dict[str, Any]:
    for document in crds.definitions().values():
        if document["spec"]["names"]["kind"] == kind:
            schema: dict[str, Any] = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(kind)


def _walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


def test_committed_crds_match_the_models_run_make_crds_when_this_fails() -> None:
    for name, document in crds.definitions().items():
        committed = (ROOT / "crds" / name).read_text()
        assert committed == crds.dump(document), f"crds/{name} is stale: run `make crds`"


@pytest.mark.parametrize("name", sorted(crds.definitions()))
def test_every_crd_is_a_valid_kubernetes_object(name: str) -> None:
    kubernetes_validate.validate(crds.definitions()[name], "1.30", strict=True)


@pytest.mark.parametrize("name", sorted(crds.definitions()))
def test_schemas_are_structural_no_refs_no_nulls_no_closed_objects(name: str) -> None:
    for node in _walk(crds.definitions()[name]["spec"]["versions"][0]["schema"]):
        assert "$ref" not in node
        assert node.get("type") != "null"
        assert node.get("additionalProperties") is not False
        assert "const" not in node
        assert "title" not in node


def test_field_docstrings_become_descriptions_for_kubectl_explain() -> None:
    spec = _schema("InferenceModel")["properties"]["spec"]
    assert "s3://bucket/path" in spec["properties"]["artifact"]["properties"]["uri"]["description"]
    assert "\n" not in spec["properties"]["hardware"]["properties"]["pool"]["description"]


def test_printer_columns_show_ready_backend_pool_and_replicas() -> None:
    version = crds.definitions()["inferencemodels.yaml"]["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:1] == ["Ready"]
    assert {"Backend", "Pool", "Replicas", "Age"} <= set(names)
    assert version["subresources"] == {"status": {}}


def _cel(expression: str, value: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    return bool(program.evaluate({"self": celpy.json_to_cel(value)}))


HARDWARE_CASES = [
    {"pool": pool, "backend": backend, **extra}
    for pool in ("xeon", "gpu")
    for backend in typing.get_args(api.Backend)
    for extra in ({}, {"precision": "bf16"}, {"precision": "fp16"}, {"gpu": {"count": 2}})
]
FORMAT_CASES = [
    {"modelFormat": {"name": fmt}, "hardware": {"pool": pool, "backend": backend}}
    for fmt in typing.get_args(typing.get_type_hints(api.ModelFormat)["name"])
    for pool in ("xeon", "gpu")
    for backend in typing.get_args(api.Backend)
]
CASES = [
    *(("hardware", rule, case) for rule in rules.HARDWARE for case in HARDWARE_CASES),
    *(("spec", rule, case) for rule in rules.MODEL_FORMAT for case in FORMAT_CASES),
    *(("spec", rule, {"modelFormat": {"name": "onnx"}}) for rule in rules.MODEL_FORMAT),
    *(
        ("rollout", rule, {k: v for k, v in (("maxSurge", s), ("maxUnavailable", u)) if v != ""})
        for rule in rules.ROLLOUT
        for s in (0, 1, "0%", "25%", "")
        for u in (0, 1, "0%", "")
    ),
    *(
        ("rollout", rule, {k: v for k, v in (("strategy", s), ("canary", c)) if v is not None})
        for rule in rules.ROLLOUT
        for s in ("RollingUpdate", "Canary", None)
        for c in ({"steps": [{"setWeight": 10}]}, None)
    ),
    *(
        ("step", rule, step)
        for rule in rules.CANARY_STEP
        for step in (
            {"setWeight": 10},
            {"pause": {}},
            {"analysis": {}},
            {},
            {"setWeight": 10, "pause": {"duration": "1m"}},
        )
    ),
    *(
        ("metric", rule, metric)
        for rule in rules.METRIC
        for metric in (
            {"name": "successRate", "min": 0.99},
            {"name": "latencyP95", "relativeToStable": 1.2},
            {"name": "latencyP99"},
        )
    ),
    *(
        ("canary", rule, canary)
        for rule in rules.CANARY
        for canary in (
            {"steps": [], "analysis": {"metrics": [{"name": "mirrorAgreement", "min": 0.9}]}},
            {
                "steps": [],
                "mirror": {},
                "analysis": {"metrics": [{"name": "mirrorAgreement", "min": 0.9}]},
            },
            {"steps": [], "analysis": {"metrics": [{"name": "successRate", "min": 0.9}]}},
            {"steps": [], "analysis": {}},
            {"steps": []},
        )
    ),
    *(
        ("spec", rule, spec)
        for rule in rules.MODEL_SPEC
        for spec in ({"hardware": {}}, {"tiers": []}, {"hardware": {}, "tiers": []}, {})
    ),
    *(
        ("scaling", rule, {k: v for k, v in scaling.items() if v is not None})
        for rule in rules.SCALING
        for scaling in (
            {"minReplicas": 1, "maxReplicas": 3},
            {"minReplicas": 4, "maxReplicas": 3},
            {"minReplicas": 0, "maxReplicas": 3, "engine": "HPA"},
            {"minReplicas": 0, "maxReplicas": 3, "engine": "KEDA"},
            {"maxReplicas": 3},
        )
    ),
    *(
        ("resource", rule, {"metadata": {"name": name}})
        for rule in rules.RESOURCE
        for name in ("mlp", "resnet.v2", "Resnet", "a" * 63, "a" * 64, "-a", "a-", "7up")
    ),
]


@pytest.mark.parametrize(("where", "rule", "value"), CASES)
def test_each_cel_rule_agrees_with_the_operators_python_check(
    where: str, rule: rules.Rule, value: dict[str, Any]
) -> None:
    assert _cel(rule.cel, value) == rule.holds(value), (where, rule.cel, value)


def test_the_generated_schemas_carry_every_rule_where_it_applies() -> None:
    for kind in ("InferenceModel", "InferenceEnsemble"):
        schema = _schema(kind)
        spec = schema["properties"]["spec"]["properties"]
        assert spec["hardware"]["x-kubernetes-validations"] == [r.schema() for r in rules.HARDWARE]
        assert schema["x-kubernetes-validations"] == [r.schema() for r in rules.RESOURCE]
    model_spec_rules = _schema("InferenceModel")["properties"]["spec"]["x-kubernetes-validations"]
    assert [r.schema() for r in rules.MODEL_FORMAT] == model_spec_rules[-len(rules.MODEL_FORMAT) :]
    model_spec = _schema("InferenceModel")["properties"]["spec"]["properties"]
    assert model_spec["rollout"]["x-kubernetes-validations"] == [r.schema() for r in rules.ROLLOUT]


def test_the_schema_refuses_a_malformed_quantity() -> None:
    (doc,) = yaml.safe_load_all((ROOT / "manifests" / "examples" / "resnet-xeon.yaml").read_text())
    doc["spec"]["shmSize"] = "lots"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema("InferenceModel"))
    doc["spec"]["shmSize"] = "512Mi"
    jsonschema.validate(doc, _schema("InferenceModel"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_against_the_generated_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["apiVersion"] == "polyserve.io/v1alpha1":
            jsonschema.validate(doc, _schema(doc["kind"]))
        else:
            kubernetes_validate.validate(doc, "1.30", strict=True)


def test_the_schema_refuses_an_unknown_backend() -> None:
    (doc,) = yaml.safe_load_all((ROOT / "manifests" / "examples" / "bert-gpu.yaml").read_text())
    doc["spec"]["hardware"]["backend"] = "cuda-magic"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema("InferenceModel"))

"""The CRDs are generated from api.py, valid, structural enough, and accept the examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from polyserve_operator import crds

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


def test_hardware_carries_cel_rules_for_backend_and_pool() -> None:
    hardware = _schema("InferenceModel")["properties"]["spec"]["properties"]["hardware"]
    messages = [r["message"] for r in hardware["x-kubernetes-validations"]]
    assert any("need pool: gpu" in m for m in messages)


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

"""The GitOps examples (manifests/examples/gitops/): valid against Argo CD's and Flux's own
schemas, pointing at folders of this repository that render, with values the chart accepts,
and telling Argo CD to leave alone exactly what the operator adds to a model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from polyserve_operator import settings
from tests import crd_schemas, helm_support
from tests.install import rendering

GITOPS = rendering.ROOT / "manifests" / "examples" / "gitops"
EXAMPLES = sorted(GITOPS.glob("*.yaml"))

Obj = dict[str, Any]


def _documents() -> list[tuple[str, Obj]]:
    return [
        (path.name, doc) for path in EXAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def test_every_gitops_example_is_valid_against_its_own_projects_schema() -> None:
    documents = [doc for _, doc in _documents()]
    assert documents and all(crd_schemas.known(doc) for doc in documents)
    crd_schemas.validate(*documents)


def _chart_values(values: Obj) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        helm_support.run(["lint", "--strict", str(rendering.CHART), "--values", file.name])


def test_the_argo_cd_applications_name_folders_that_render() -> None:
    chart = yaml.safe_load((rendering.CHART / "Chart.yaml").read_text())
    for name, doc in _documents():
        if (
            doc["kind"] != "Application"
            or "polyserve/polyserve" not in doc["spec"]["source"]["repoURL"]
        ):
            continue
        source = doc["spec"]["source"]
        assert source["repoURL"] in chart["sources"], name
        folder = rendering.ROOT / source["path"]
        if "helm" in source:
            assert folder == rendering.CHART, name
            _chart_values(source["helm"].get("valuesObject") or {})
        else:
            assert rendering.kustomize(folder), name
        assert "ServerSideApply=true" in doc["spec"]["syncPolicy"]["syncOptions"], name
        compare = doc["metadata"]["annotations"]["argocd.argoproj.io/compare-options"]
        assert "ServerSideDiff=true" in compare, name


def test_the_flux_objects_name_folders_that_render() -> None:
    for name, doc in _documents():
        if doc["kind"] == "HelmRelease":
            assert rendering.ROOT / doc["spec"]["chart"]["spec"]["chart"] == rendering.CHART
            _chart_values(doc["spec"].get("values") or {})
        elif doc["kind"] == "Kustomization" and doc["spec"]["sourceRef"]["name"] == "polyserve":
            assert rendering.kustomize(rendering.ROOT / doc["spec"]["path"]), name


def test_deleting_a_gitops_install_leaves_the_crds_and_so_every_model() -> None:
    for objects in (rendering.kustomize(rendering.ROOT / "manifests"), rendering.helm()):
        for crd in [o for o in objects if o["kind"] == "CustomResourceDefinition"]:
            annotations = crd["metadata"]["annotations"]
            assert "Delete=false" in annotations["argocd.argoproj.io/sync-options"]
            assert "Prune=false" in annotations["argocd.argoproj.io/sync-options"]
            assert annotations["kustomize.toolkit.fluxcd.io/prune"] == "disabled"


def test_argo_cd_ignores_exactly_what_the_operator_adds_to_a_model() -> None:
    """The operator's field managers and bookkeeping (kopf's annotations under our prefix,
    the finalizer, status), as e2e/test_gitops.py sees them on the API server."""
    cfg = settings.Settings()
    prefix = cfg.annotation_prefix.replace("/", "~1")
    (models,) = [d for n, d in _documents() if n == "argocd-models.yaml"]
    rules = {r["kind"]: r for r in models["spec"]["ignoreDifferences"]}
    assert set(rules) == {"InferenceModel", "InferenceEnsemble"}
    for rule in rules.values():
        assert rule["group"] == "polyserve.io"
        assert {"kopf", cfg.field_manager} <= set(rule["managedFieldsManagers"])
        pointers = set(rule["jsonPointers"])
        assert {"/status", "/metadata/finalizers"} <= pointers
        for key in ("last-handled-configuration", "kopf-managed"):
            assert f"/metadata/annotations/{prefix}~1{key}" in pointers


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_gitops_example_says_why_in_its_own_comments(path: Path) -> None:
    head = path.read_text().split("apiVersion:", 1)[0]
    assert len([line for line in head.splitlines() if line.startswith("# ")]) >= 3, path.name

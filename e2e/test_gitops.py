"""GitOps without drift: an InferenceModel applied by Argo CD or Flux (server-side apply under
their field managers), reconciled by the operator, and applied again, changes nothing.

What the notes in manifests/examples/gitops/ promise, shown on the API server: the operator
never writes a field the user's manifest sets; what it adds (status, its `polyserve.io/`
annotations, its finalizer) belongs to its own field managers, so a server-side diff from
the GitOps manager is empty and a re-apply is a no-op (the resourceVersion stays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import Cluster, Operator, wait_for, wait_ready
from polyserve_operator import api, k8s

#: Argo CD's field manager with ServerSideApply=true, and Flux's kustomize-controller.
MANAGERS = ["argocd-controller", "kustomize-controller"]

Obj = dict[str, Any]


def _manifest(cluster: Cluster, namespace: str) -> Obj:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {
            "name": "gitops",
            "namespace": namespace,
            "labels": {"team": "ml"},
            "annotations": {"example.com/owner": "ml-platform"},
        },
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": cluster.artifacts["double"].as_uri()},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": 1,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            },
        },
    }


def _missing(want: Any, have: Any, path: str = "") -> list[str]:
    """Where ``have`` does not hold ``want`` (every key and value of ``want``, as given)."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [path or "/"]
        return [m for k, v in want.items() for m in _missing(v, have.get(k), f"{path}/{k}")]
    return [] if want == have else [f"{path}: {want!r} != {have!r}"]


def _leaves(fields: Obj, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The field paths a managedFields entry owns (``f:`` keys, ``.`` marks a set node)."""
    found: list[tuple[str, ...]] = []
    for key, sub in fields.items():
        if key == ".":
            continue
        here = (*path, key)
        found += _leaves(sub, here) if sub else [here]
        if sub and "." in sub:
            found.append(here)
    return found


def _operators_field(path: tuple[str, ...], prefix: str) -> bool:
    """Fields the operator may own: status, its own annotations, its finalizer."""
    if path[:1] == ("f:status",):
        return True
    if path[:2] == ("f:metadata", "f:annotations") and len(path) > 2:
        return path[2].startswith(f"f:{prefix}/")
    return path[:2] == ("f:metadata", "f:finalizers")


@pytest.mark.parametrize("manager", MANAGERS)
def test_a_gitops_apply_reconciled_by_the_operator_and_applied_again_shows_no_drift(
    cluster: Cluster, operator: Operator, namespace: str, manager: str, tmp_path: Path
) -> None:
    cluster.require_sandbox("the model's artifact is a file on this machine")
    manifest = _manifest(cluster, namespace)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(manifest))
    gitops = k8s.connect(cluster.kubeconfig, manager)
    try:
        gitops.apply(manifest)
        wait_ready(cluster, "InferenceModel", namespace, "gitops")
        live = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "gitops") or {}

        # The operator changed no field the manifest sets.
        assert not _missing(manifest, live), _missing(manifest, live)

        # A server-side diff from the GitOps manager (what Argo CD's ServerSideDiff and
        # Flux's drift detection compute) is empty: kubectl diff exits 0.
        diff = cluster.kubectl(
            "diff", "--server-side", f"--field-manager={manager}", "-f", str(path), check=False
        )
        assert diff.returncode == 0, f"drift:\n{diff.stdout}{diff.stderr}"

        # A re-apply is a no-op: the resourceVersion stays. (The operator's own status writes
        # may land between a read and the apply; one clean pair proves it, a churning
        # operator never gives one.)
        def unchanged_by_a_reapply() -> bool:
            current = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "gitops")
            before = (current or {})["metadata"]["resourceVersion"]
            after = (gitops.apply(manifest) or {})["metadata"]["resourceVersion"]
            return bool(before == after)

        wait_for("a re-apply that changes nothing", unchanged_by_a_reapply, timeout=30)

        # Field ownership: the GitOps manager owns what its manifest sets; every other
        # manager owns only status, the operator's prefixed annotations and its finalizer.
        live = cluster.client.get(api.API_VERSION, "InferenceModel", namespace, "gitops") or {}
        entries = live["metadata"]["managedFields"]
        mine = [e for e in entries if e["manager"] == manager]
        assert mine and all(e["operation"] == "Apply" for e in mine)
        owned = {p for e in mine for p in _leaves(e["fieldsV1"])}
        assert ("f:spec", "f:artifact", "f:uri") in owned
        assert ("f:metadata", "f:labels", "f:team") in owned
        prefix = "polyserve.io"
        others = {
            (e["manager"], p)
            for e in entries
            if e["manager"] != manager
            for p in _leaves(e["fieldsV1"])
        }
        stray = sorted((m, p) for m, p in others if not _operators_field(p, prefix))
        assert not stray, f"fields another manager owns: {stray}"
        assert {m for m, _ in others}, "the operator wrote nothing of its own"
    finally:
        gitops.close()

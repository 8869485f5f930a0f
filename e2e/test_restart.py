"""A restarted operator converges without duplicates, including changes made while it was down.

Runs two operators one after the other against a fleet of its own (never two at once: the
install runs one replica with Recreate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2e.conftest import _build_artifacts, running_operator, sandbox, wait_for
from polyserve_operator import api, k8s

NS = "restart"


def _status(client: k8s.Client) -> dict[str, Any]:
    body = client.get(api.API_VERSION, "InferenceModel", NS, "doubler") or {}
    return body.get("status") or {}


def test_a_restarted_operator_converges_without_duplicates(tmp_path: Path) -> None:
    built = _build_artifacts(tmp_path / "artifacts")
    with sandbox(tmp_path / "sandbox", built) as folder:
        kubeconfig = folder / "kubeconfig"
        client = k8s.connect(kubeconfig, "polyserve-e2e")
        client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        doc = {
            "apiVersion": api.API_VERSION,
            "kind": "InferenceModel",
            "metadata": {"name": "doubler", "namespace": NS},
            "spec": {
                "modelFormat": {"name": "onnx"},
                "artifact": {"uri": built["double"].as_uri()},
                "hardware": {"pool": "xeon", "backend": "onnxruntime"},
                "replicas": 1,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            },
        }
        with running_operator(kubeconfig):
            client.apply(doc)
            dep = wait_for(
                "the Deployment", lambda: client.get("apps/v1", "Deployment", NS, "doubler")
            )
            first = wait_for("a revision", lambda: _status(client).get("revision"))

        doc["spec"]["replicas"] = 2
        client.apply(doc)  # changed while no operator runs
        with running_operator(kubeconfig):
            wait_for(
                "the resumed change",
                lambda: client.get("policy/v1", "PodDisruptionBudget", NS, "doubler"),
            )
            deployments = client.list("apps/v1", "Deployment", NS, {})
            assert [d["metadata"]["name"] for d in deployments] == ["doubler"]
            assert deployments[0]["metadata"]["uid"] == dep["metadata"]["uid"]
            assert deployments[0]["spec"]["replicas"] == 2
            assert _status(client)["revision"] == first  # same pods' config: no new revision
            config_maps = client.list(
                "v1", "ConfigMap", NS, {"app.kubernetes.io/instance": "doubler"}
            )
            assert [m["metadata"]["name"] for m in config_maps] == [f"doubler-{first}"]
            client.delete(api.API_VERSION, "InferenceModel", NS, "doubler")
            wait_for(
                "the model to go",
                lambda: not client.list(api.API_VERSION, "InferenceModel", NS, {}),
            )
        client.close()


def test_a_canary_resumes_at_the_same_step_after_an_operator_restart(tmp_path: Path) -> None:
    built = _build_artifacts(tmp_path / "artifacts")
    with sandbox(tmp_path / "sandbox", built) as folder:
        kubeconfig = folder / "kubeconfig"
        client = k8s.connect(kubeconfig, "polyserve-e2e")
        client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        doc = {
            "apiVersion": api.API_VERSION,
            "kind": "InferenceModel",
            "metadata": {"name": "doubler", "namespace": NS},
            "spec": {
                "modelFormat": {"name": "onnx"},
                "artifact": {"uri": built["double"].as_uri()},
                "hardware": {"pool": "xeon", "backend": "onnxruntime"},
                "replicas": 1,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                "rollout": {
                    "strategy": "Canary",
                    "canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "20s"}}]},
                },
            },
        }

        def rollout() -> dict[str, Any]:
            return _status(client).get("rollout") or {}

        with running_operator(kubeconfig):
            client.apply(doc)
            first = wait_for(
                "the first revision", lambda: rollout().get("stableRevision"), timeout=60
            )
            doc["spec"]["artifact"] = {"uri": built["triple"].as_uri()}
            client.apply(doc)
            paused = wait_for(
                "the pause step",
                lambda: (r := rollout()).get("stepIndex") == 1 and r,
                timeout=60,
            )
        with running_operator(kubeconfig):
            # Resumed at the same step with the same timer, and it ends as it would have.
            resumed = rollout()
            assert resumed["stepIndex"] == 1
            assert resumed["stepStartedAt"] == paused["stepStartedAt"]
            done = wait_for(
                "the promotion",
                lambda: (
                    (r := rollout()).get("phase") == "Healthy"
                    and r.get("stableRevision") != first
                    and r
                ),
                timeout=60,
            )
            names = [
                d["metadata"]["name"]
                for d in client.list("apps/v1", "Deployment", NS, {})
                if not d["metadata"].get("deletionTimestamp")
            ]
            wait_for(
                "one Deployment, the new revision's",
                lambda: (
                    [d["metadata"]["name"] for d in client.list("apps/v1", "Deployment", NS, {})]
                    == [f"doubler-{done['stableRevision']}"]
                ),
            )
            assert len(names) <= 2
        client.close()

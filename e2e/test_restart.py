"""A restarted operator converges without duplicates, including changes made while it was down.

Runs two operators one after the other against an emulator of its own (never two at once:
the install runs one replica with Recreate).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kopf.testing import KopfRunner

from e2e.conftest import (
    EmulatorThread,
    example,
    free_port,
    operator_settings,
    wait_for,
    write_kubeconfig,
)
from polyserve_operator import api, handlers, k8s

NS = "restart"


@contextmanager
def _operator(kubeconfig: Path) -> Iterator[None]:
    cfg = operator_settings(kubeconfig, free_port())
    client = k8s.connect(kubeconfig, cfg.field_manager)
    with KopfRunner(
        ["run", "-A", "--standalone"], registry=handlers.build(cfg, client), timeout=30
    ) as runner:
        yield
    client.close()
    assert runner.exit_code == 0, runner.output


def _status(client: k8s.Client) -> dict[str, Any]:
    body = client.get(api.API_VERSION, "InferenceModel", NS, "resnet50") or {}
    return body.get("status") or {}


def test_a_restarted_operator_converges_without_duplicates(tmp_path: Path) -> None:
    with EmulatorThread() as emulator:
        kubeconfig = write_kubeconfig(emulator.url, tmp_path)
        client = k8s.connect(kubeconfig, "polyserve-e2e")
        (doc,) = example("resnet-xeon.yaml", NS)
        doc["spec"]["replicas"] = 1
        with _operator(kubeconfig):
            client.apply(doc)
            dep = wait_for(
                "the Deployment", lambda: client.get("apps/v1", "Deployment", NS, "resnet50")
            )
            first = wait_for("a revision", lambda: _status(client).get("revision"))

        doc["spec"]["replicas"] = 2
        client.apply(doc)  # changed while no operator runs
        with _operator(kubeconfig):
            wait_for(
                "the resumed change",
                lambda: client.get("policy/v1", "PodDisruptionBudget", NS, "resnet50"),
            )
            deployments = client.list("apps/v1", "Deployment", NS, {})
            assert [d["metadata"]["name"] for d in deployments] == ["resnet50"]
            assert deployments[0]["metadata"]["uid"] == dep["metadata"]["uid"]
            assert deployments[0]["spec"]["replicas"] == 2
            assert _status(client)["revision"] == first  # same pods' config: no new revision
            client.delete(api.API_VERSION, "InferenceModel", NS, "resnet50")
            wait_for(
                "the model to go",
                lambda: (
                    _status(client) == {}
                    and not client.list(api.API_VERSION, "InferenceModel", NS, {})
                ),
            )
        client.close()

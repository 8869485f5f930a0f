"""Both installs with the webhook: the operator pod is probed for readiness on the port the
operator serves /readyz on, and the webhook's failure policy reaches the operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from polyserve_operator import readiness, settings
from tests.install import rendering

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]


def _container(objects: list[Obj]) -> Obj:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container: Obj = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _settings(container: Obj, monkeypatch: pytest.MonkeyPatch) -> settings.Settings:
    for env in container.get("env") or []:
        if "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
    return settings.Settings()


def _assert_probed_for_readiness(container: Obj, cfg: settings.Settings) -> None:
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == readiness.PATH
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[probe["port"]] == cfg.readiness_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness stays kopf's"


@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
def test_the_charts_webhook_pod_is_probed_for_readiness_with_the_chosen_policy(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendering.helm({"webhook": {"enabled": True, "failurePolicy": policy}})
    container = _container(objects)
    cfg = _settings(container, monkeypatch)
    assert cfg.webhook.enabled and cfg.webhook.failure_policy == policy
    _assert_probed_for_readiness(container, cfg)


def test_the_kustomize_webhook_overlay_is_probed_for_readiness_and_ignores_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = _container(rendering.kustomize(ROOT / "manifests" / "webhook"))
    cfg = _settings(container, monkeypatch)
    assert cfg.webhook.enabled and cfg.webhook.failure_policy == "Ignore"
    _assert_probed_for_readiness(container, cfg)


def test_without_the_webhook_nothing_follows_readiness() -> None:
    for objects in (rendering.helm({}), rendering.kustomize(ROOT / "manifests")):
        assert "readinessProbe" not in _container(objects)

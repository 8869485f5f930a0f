"""Which namespaces the operator watches: every one, or those a namespace-scoped install names."""

from __future__ import annotations

import pytest

from polyserve_operator import main, settings


def test_without_namespaces_the_operator_watches_the_whole_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POLYSERVE_OPERATOR_NAMESPACES", raising=False)
    assert main.scope(settings.Settings()) == {"clusterwide": True, "namespaces": []}


def test_namespaces_from_the_environment_restrict_kopf_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYSERVE_OPERATOR_NAMESPACES", '["team-a", "team-b"]')
    assert main.scope(settings.Settings()) == {
        "clusterwide": False,
        "namespaces": ["team-a", "team-b"],
    }


def test_an_empty_list_in_the_environment_means_cluster_wide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYSERVE_OPERATOR_NAMESPACES", "[]")
    assert main.scope(settings.Settings())["clusterwide"] is True

"""One source: the CRDs, RBAC and values of both installs are generated, and the committed
copies are what the generator writes today (run `make generate` when a test here fails)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic.alias_generators import to_camel

from polyserve_operator import chart_values, generate, permissions, settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("relative", sorted(generate.files()), ids=str)
def test_the_committed_copy_is_what_make_generate_writes(relative: Path) -> None:
    committed = ROOT / relative
    assert committed.is_file(), f"{relative} is missing: run `make generate`"
    assert committed.read_text() == generate.files()[relative], (
        f"{relative} is stale: run `make generate`"
    )


def test_the_kustomize_roles_hold_exactly_the_tables_rules() -> None:
    base = list(yaml.safe_load_all((ROOT / "manifests" / "base" / "rbac.yaml").read_text()))
    (role,) = [d for d in base if d["kind"] == "ClusterRole"]
    assert role["rules"] == [r.policy() for r in (*permissions.NAMESPACED, *permissions.CLUSTER)]
    webhook = list(yaml.safe_load_all((ROOT / "manifests" / "webhook" / "rbac.yaml").read_text()))
    (role,) = [d for d in webhook if d["kind"] == "ClusterRole"]
    assert role["rules"] == [r.policy() for r in permissions.WEBHOOK]


def test_every_operator_setting_is_a_chart_value_except_those_the_chart_derives() -> None:
    properties = chart_values.schema()["properties"]["settings"]["properties"]
    fields = [f for f in settings.Settings.model_fields if f not in chart_values.DERIVED_SETTINGS]
    assert list(properties) == [to_camel(f) for f in fields]
    variables = [s.variable for s in chart_values.settings_env()]
    assert len(variables) == len(set(variables))
    assert "POLYSERVE_OPERATOR_GPU__NODE_SELECTOR" in variables
    assert not any("WEBHOOK" in v or "KUBECONFIG" in v for v in variables)


def test_values_yaml_is_valid_yaml_whose_settings_are_only_the_pinned_ones() -> None:
    values = yaml.safe_load((ROOT / generate.CHART / "values.yaml").read_text())
    set_settings = {
        k: v for k, v in values["settings"].items() if v is not None and not isinstance(v, dict)
    }
    groups = {k: v for k, v in values["settings"].items() if isinstance(v, dict)}
    assert {**set_settings, **groups} == chart_values.PINNED_SETTINGS

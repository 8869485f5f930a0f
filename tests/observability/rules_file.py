"""deploy/observability/rules.yaml: the PrometheusRule's groups in Prometheus' own format.

alerts.yaml (a Prometheus Operator PrometheusRule) is the one place the alerts are written;
rules.yaml is the same groups for promtool and for a Prometheus without the operator.
``python -m tests.observability.rules_file --write`` (``make observability``) writes it;
the tests fail when the committed copy drifts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "observability"
ALERTS = FOLDER / "alerts.yaml"
RULES = FOLDER / "rules.yaml"
HEADER = (
    "# Written by `make observability` from alerts.yaml (the PrometheusRule's spec.groups);\n"
    "# edit alerts.yaml, not this file. Check with: promtool check rules rules.yaml\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, as they are written in alerts.yaml."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def prometheus_rule() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return loaded


def render() -> str:
    """rules.yaml's text, from alerts.yaml."""
    groups = {"groups": prometheus_rule()["spec"]["groups"]}
    return HEADER + yaml.dump(groups, Dumper=_Dumper, sort_keys=False, width=10**6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="write rules.yaml")
    args = parser.parse_args(argv)
    if args.write:
        RULES.write_text(render())
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

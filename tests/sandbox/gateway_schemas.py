"""Gateway API objects against the Gateway API's own v1 schemas, for tests.

kubernetes-validate knows only built-in kinds; the npm package
``@kubernetes-models/gateway-api`` carries the Gateway API CRDs' schemas as compiled
validators (``new HTTPRoute(obj).validate()`` throws with the path of the first error). It
is installed once into a cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, under
``polyserve/``) with the machine's npm, and each call validates a batch of objects with one
``node`` process. A test skips, saying why, when node or npm is missing or the package
cannot be installed; it never passes without validating.

Use it for any route the operator renders::

    from tests.sandbox import gateway_schemas

    gateway_schemas.validate(route)  # AssertionError naming the field, or skip
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

PACKAGE = "@kubernetes-models/gateway-api"
VERSION = "2.0.0"  # Gateway API v1.x schemas (v1 and v1beta1 groups)
INSTALL_TIMEOUT_SECONDS = 300
VALIDATE_TIMEOUT_SECONDS = 60

_SCRIPT = """\
import { readFileSync } from "node:fs";
import * as v1 from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1";
import * as v1beta1 from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1beta1";

const versions = {
  "gateway.networking.k8s.io/v1": v1,
  "gateway.networking.k8s.io/v1beta1": v1beta1,
};
const objects = JSON.parse(readFileSync(0, "utf8"));
const errors = objects.map((obj) => {
  const Model = (versions[obj.apiVersion] || {})[obj.kind];
  if (!Model) return `no schema for ${obj.apiVersion} ${obj.kind}`;
  try {
    new Model(obj).validate();
    return null;
  } catch (err) {
    return err.message;
  }
});
process.stdout.write(JSON.stringify(errors));
"""


def cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "polyserve" / f"gateway-api-schemas-{VERSION}"


def _installed(folder: Path) -> bool:
    return (folder / "node_modules" / PACKAGE / "package.json").is_file()


def install() -> Path:
    """The folder holding the package and the validating script (installed on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to validate against the Gateway API schemas")
    folder = cache()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time, across test processes
        if not _installed(folder):
            (folder / "package.json").write_text('{"name": "schemas", "private": true}\n')
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", f"{PACKAGE}@{VERSION}"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_SECONDS,
                check=False,
            )
            if done.returncode != 0 or not _installed(folder):
                pytest.skip(f"npm could not install {PACKAGE}@{VERSION}: {done.stderr[-500:]}")
        script = folder / "validate.mjs"
        if not script.is_file() or script.read_text() != _SCRIPT:
            script.write_text(_SCRIPT)
    return folder


def errors(*objects: dict[str, Any]) -> list[str | None]:
    """The first schema error of each object (None when it is valid)."""
    folder = install()
    done = subprocess.run(
        ["node", str(folder / "validate.mjs")],
        input=json.dumps(list(objects)),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT_SECONDS,
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
    assert not problems, "not valid against the Gateway API schemas:\n" + "\n".join(problems)

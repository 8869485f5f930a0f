"""Custom resources against their CRDs' own schemas, from the ``@kubernetes-models`` packages.

kubernetes-validate knows only built-in kinds. The npm packages ``@kubernetes-models/*``
(prometheus-operator, gateway-api, keda, karpenter) carry third-party CRDs' schemas as
compiled validators: ``new PodMonitor(obj).validate()`` throws with the path of the first
error. A ``Schemas`` installs its package once into a cache folder (``$XDG_CACHE_HOME`` or
``~/.cache``, under ``polyserve/``) with the machine's npm, and validates a batch of objects
with one ``node`` process. A test skips, saying why, when node or npm is missing or the
package cannot be installed; it never passes without validating.

    PROMETHEUS_OPERATOR.validate(pod_monitor, rule)  # AssertionError naming the field, or skip
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

INSTALL_TIMEOUT_SECONDS = 300
VALIDATE_TIMEOUT_SECONDS = 60

_SCRIPT = """\
import { readFileSync } from "node:fs";

const modules = JSON.parse(process.argv[2]);
const versions = {};
for (const [apiVersion, path] of Object.entries(modules)) {
  versions[apiVersion] = await import(path);
}
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


@dataclass(frozen=True)
class Schemas:
    """One ``@kubernetes-models`` package: its version and the module of each apiVersion."""

    package: str
    version: str
    modules: dict[str, str]

    def cache(self) -> Path:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        name = self.package.rsplit("/", 1)[-1]
        return root / "polyserve" / f"{name}-schemas-{self.version}"

    def _installed(self, folder: Path) -> bool:
        return (folder / "node_modules" / self.package / "package.json").is_file()

    def install(self) -> Path:
        """The folder holding the package and the validating script (installed once)."""
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            pytest.skip(f"node and npm are needed to validate against {self.package}")
        folder = self.cache()
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time, across test processes
            if not self._installed(folder):
                (folder / "package.json").write_text('{"name": "schemas", "private": true}\n')
                done = subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", f"{self.package}@{self.version}"],
                    cwd=folder,
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_TIMEOUT_SECONDS,
                    check=False,
                )
                if done.returncode != 0 or not self._installed(folder):
                    pytest.skip(
                        f"npm could not install {self.package}@{self.version}: {done.stderr[-500:]}"
                    )
            script = folder / "validate.mjs"
            if not script.is_file() or script.read_text() != _SCRIPT:
                script.write_text(_SCRIPT)
        return folder

    def errors(self, *objects: dict[str, Any]) -> list[str | None]:
        """The first schema error of each object (None when it is valid)."""
        folder = self.install()
        done = subprocess.run(
            ["node", str(folder / "validate.mjs"), json.dumps(self.modules)],
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

    def validate(self, *objects: dict[str, Any]) -> None:
        """AssertionError naming each invalid object and its first error."""
        problems = [
            f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {error}"
            for obj, error in zip(objects, self.errors(*objects), strict=True)
            if error is not None
        ]
        assert not problems, f"not valid against {self.package}:\n" + "\n".join(problems)


#: ServiceMonitor, PodMonitor, PrometheusRule, ... (Prometheus Operator 0.8x CRDs).
PROMETHEUS_OPERATOR = Schemas(
    "@kubernetes-models/prometheus-operator",
    "6.0.0",
    {"monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1"},
)

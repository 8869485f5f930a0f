"""``polyserve-worker fetch URI DEST``: copy a model artifact into a model version directory;
``polyserve-worker configure SRC REPO``: put each model's config where Triton's layout wants it.

Runs as the init container of every worker pod the operator renders, before the worker
starts. One interface over every store, fsspec: ``s3://`` (extra ``fetch-s3``), ``gs://``
(extra ``fetch-gcs``), ``http(s)://``, ``file://`` and ``pvc://CLAIM/PATH`` (a claim the pod
already mounts read-only under ``$POLYSERVE_FETCH_PVC_ROOT``, ``/mnt/pvc`` by default).
Credentials come from the environment (the operator passes the artifact Secret's keys as
variables: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``...) or
from files in ``$POLYSERVE_FETCH_SECRET_DIR`` (``gcs.json``: a service-account key).

``configure`` copies every ``<model>.pbtxt`` of SRC (a mounted ConfigMap) to
``REPO/<model>/config.pbtxt``, so the repository is complete before the worker starts and no
volume is mounted inside the worker's read-only repository mount (a runtime cannot create a
mount point inside a read-only mount). ``args()`` and ``configure_args()`` build both command
lines; the operator renders its init containers through them.

A directory is copied whole into DEST; a single file keeps its name. Files are written under
a temporary name and renamed when complete, so a retried fetch never serves half a model.
Every failure exits non-zero with one line that says what to change. This module knows
nothing about serving; fsspec is imported only when a fetch runs.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import posixpath
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
PROGRESS_EVERY_SECONDS = 5.0
EXTRAS = {"s3": "fetch-s3 (s3fs)", "gs": "fetch-gcs (gcsfs)", "gcs": "fetch-gcs (gcsfs)"}
#: Environment variables the fetch reads (the operator sets them on its init containers).
PVC_ROOT_ENV = "POLYSERVE_FETCH_PVC_ROOT"
SECRET_DIR_ENV = "POLYSERVE_FETCH_SECRET_DIR"


class FetchError(Exception):
    """A fetch that cannot succeed as asked; the message says what to change."""


def resolve(uri: str, env: Mapping[str, str]) -> tuple[str, str, dict[str, Any]]:
    """(fsspec protocol, path for that protocol, filesystem options) of an artifact URI."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "pvc":
        if not parts.netloc:
            raise FetchError(f"{uri}: pvc:// needs a claim name: pvc://CLAIM/PATH")
        root = env.get(PVC_ROOT_ENV, "/mnt/pvc")
        return "file", posixpath.join(root, parts.netloc, parts.path.lstrip("/")), {}
    if scheme == "file":
        return "file", parts.path, {}
    if scheme in ("http", "https"):
        return scheme, uri, {}
    if scheme in ("s3", "gs", "gcs"):
        options: dict[str, Any] = {}
        secret_dir = env.get(SECRET_DIR_ENV)
        if scheme in ("gs", "gcs") and secret_dir and Path(secret_dir, "gcs.json").is_file():
            options["token"] = str(Path(secret_dir, "gcs.json"))
        if scheme == "s3" and env.get("AWS_ENDPOINT_URL"):
            options["endpoint_url"] = env["AWS_ENDPOINT_URL"]
        return ("gcs" if scheme == "gs" else scheme), f"{parts.netloc}{parts.path}", options
    raise FetchError(
        f"{uri}: unsupported scheme {scheme or '(none)'}; use s3://, gs://, http(s)://, "
        "pvc://CLAIM/PATH or file://"
    )


def _filesystem(protocol: str, options: dict[str, Any]) -> Any:
    import fsspec

    try:
        return fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        extra = EXTRAS.get(protocol, protocol)
        raise FetchError(
            f"{protocol}:// needs the {extra} extra in the worker image: "
            f"pip install 'polyserve[{extra.split()[0]}]' ({exc})"
        ) from exc


class _Progress:
    def __init__(self, name: str, total: int | None) -> None:
        self.name = name
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.last = self.started

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS:
            self.last = now
            self.report()

    def report(self) -> None:
        rate = self.done / max(time.monotonic() - self.started, 1e-6) / 1e6
        of = f" of {self.total / 1e6:.1f} MB" if self.total else ""
        logger.info("%s: %.1f MB%s (%.1f MB/s)", self.name, self.done / 1e6, of, rate)


def _copy_file(fs: Any, source: str, target: Path, expect_sha256: str | None) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        size = fs.size(source)
    except (OSError, NotImplementedError, ValueError):
        size = None
    progress = _Progress(target.name, size)
    digest = hashlib.sha256()
    with fs.open(source, "rb") as src, open(partial, "wb") as dst:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            digest.update(chunk)
            progress.add(len(chunk))
    if expect_sha256 and digest.hexdigest() != expect_sha256.lower():
        partial.unlink()
        raise FetchError(
            f"{source}: sha256 is {digest.hexdigest()}, expected {expect_sha256}; the artifact "
            "changed: update artifact.digest or point artifact.uri at the intended version"
        )
    os.replace(partial, target)
    progress.report()
    return progress.done


def fetch(uri: str, dest: Path, *, sha256: str | None, env: Mapping[str, str]) -> list[Path]:
    """Copy the artifact at ``uri`` into the directory ``dest``; the files written."""
    protocol, path, options = resolve(uri, env)
    fs = _filesystem(protocol, options)
    try:
        is_dir = fs.isdir(path)
        if not is_dir and not fs.exists(path):
            raise FileNotFoundError(path)
    except FileNotFoundError as exc:
        raise FetchError(f"{uri}: not found; check artifact.uri") from exc
    except PermissionError as exc:
        raise FetchError(
            f"{uri}: access denied; check the credentials in artifact.secretRef"
        ) from exc
    written: list[Path] = []
    if not is_dir:
        name = posixpath.basename(urlsplit(path).path.rstrip("/")) or "model"
        _copy_file(fs, path, dest / name, sha256)
        return [dest / name]
    if sha256:
        raise FetchError(f"{uri}: artifact.digest applies to a single file, not a directory")
    root = path.rstrip("/")
    for source in sorted(fs.find(root)):
        relative = posixpath.relpath(source, root)
        if relative.startswith("..") or relative.startswith(".partial"):
            continue
        _copy_file(fs, source, dest / relative, None)
        written.append(dest / relative)
    if not written:
        raise FetchError(f"{uri}: the directory is empty; check artifact.uri")
    return written


@functools.cache
def _parser() -> argparse.ArgumentParser:
    # Built once (parse_args leaves it as it was): the operator checks a fetch line on each
    # reconcile of each model, and building the parser reads gettext catalogs from disk.
    parser = argparse.ArgumentParser(
        prog="polyserve-worker fetch", description="Copy a model artifact into DEST."
    )
    parser.add_argument("uri", help="s3://, gs://, http(s)://, pvc://CLAIM/PATH or file://")
    parser.add_argument("dest", type=Path, help="directory to fill, e.g. /models/NAME/1")
    parser.add_argument("--sha256", help="expected sha256 (hex) of a single-file artifact")
    return parser


def args(uri: str, dest: str, sha256: str | None = None) -> list[str]:
    """The command line (after the program name) of one fetch, as ``main`` reads it."""
    line = ["fetch", uri, dest]
    if sha256:
        line.append(f"--sha256={sha256}")
    _parser().parse_args(line[1:])  # what the pod will run must parse
    return line


def configure_args(source: str, repository: str) -> list[str]:
    """The command line (after the program name) that installs the configs of ``source``."""
    return ["configure", source, repository]


def configure(source: Path, repository: Path) -> list[Path]:
    """Copy each ``<model>.pbtxt`` in ``source`` to ``repository/<model>/config.pbtxt``."""
    written = []
    for config in sorted(source.glob("*.pbtxt")):
        target = repository / config.stem / "config.pbtxt"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(".config.pbtxt.partial")
        partial.write_bytes(config.read_bytes())
        os.replace(partial, target)
        written.append(target)
    return written


def configure_main(argv: list[str]) -> int:
    """``polyserve-worker configure SRC REPO``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="polyserve-worker configure",
        description="Copy each SRC/<model>.pbtxt to REPO/<model>/config.pbtxt.",
    )
    parser.add_argument("source", type=Path, help="folder of <model>.pbtxt files")
    parser.add_argument("repository", type=Path, help="the model repository")
    parsed = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s configure: %(message)s")
    try:
        written = configure(parsed.source, parsed.repository)
    except OSError as exc:
        logger.error("cannot install the model configs: %s", exc)
        return 1
    if not written:
        logger.error("%s holds no <model>.pbtxt file: check the config volume", parsed.source)
        return 1
    for path in written:
        logger.info("installed %s", path)
    return 0


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """``polyserve-worker fetch URI DEST [--sha256 HEX]``; returns the exit status."""
    parsed = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s fetch: %(message)s")
    environment = os.environ if env is None else env
    started = time.monotonic()
    try:
        files = fetch(parsed.uri, parsed.dest, sha256=parsed.sha256, env=environment)
    except FetchError as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:  # network and disk faults: the pod restarts the init container
        logger.error("%s: %s; the fetch will be retried when the pod restarts", parsed.uri, exc)
        return 1
    logger.info(
        "fetched %d file(s) from %s into %s in %.1f s",
        len(files),
        parsed.uri,
        parsed.dest,
        time.monotonic() - started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

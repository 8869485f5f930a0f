"""Container images built and run for real without a Docker daemon: buildah and debootstrap.

No image registry can be reached from our machines, so the base image is made here:
``debootstrap --variant=minbase bookworm`` with Debian's Python 3.11 (``python3``,
``python3-venv``, ``ca-certificates``), trimmed of apt's caches, documentation and locales,
and committed into buildah's storage as ``BASE``. The repository's Dockerfiles are built on
it with ``buildah bud --isolation chroot`` (no daemon, no user namespaces), and a built image
runs with ``buildah from`` + ``buildah run --isolation chroot`` on the host's network
(``podman run`` does not work here: crun refuses the cgroup setup).

pip inside a build gets the host's pip settings (index, extra indexes, find-links,
constraints, CA bundle) as the Dockerfiles' ``PIP_*`` build arguments, and every local
folder or file they name is bind-mounted read-only at the same path, so a build sees exactly
the packages the host's pip sees.

Needs root, ``buildah`` and ``debootstrap`` (``apt-get install -y --no-install-recommends
buildah debootstrap``); ``missing()`` says what is absent. The base's rootfs is cached under
``$XDG_CACHE_HOME/polyserve/images`` (or ``~/.cache``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/polyserve-base:bookworm"
OPERATOR = "localhost/polyserve-operator:dev"
WORKER_CPU = "localhost/polyserve-worker:dev-cpu"
WORKER_GPU = "localhost/polyserve-worker:dev-gpu"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: What the base drops after debootstrap (apt's caches and lists, docs, man pages, locales):
#: 275 MB -> 133 MB, about what python:3.11-slim weighs.
TRIMMED = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
#: pip's settings a build takes, as the Dockerfiles' build arguments name them.
PIP_SETTINGS = {
    "index-url": "PIP_INDEX_URL",
    "extra-index-url": "PIP_EXTRA_INDEX_URL",
    "find-links": "PIP_FIND_LINKS",
    "cert": "PIP_CERT",
    "constraint": "PIP_CONSTRAINT",
}
BUILD_TIMEOUT_SECONDS = 3600


class BuildError(Exception):
    """A command of the build failed; the message has its output's tail."""


def cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = root / "polyserve" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def missing() -> str | None:
    """Why images cannot be built here, or None."""
    absent = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if absent:
        return (
            f"{' and '.join(absent)} not installed "
            f"(apt-get install -y --no-install-recommends {' '.join(absent)})"
        )
    if os.geteuid() != 0:
        return "building images with buildah and debootstrap here needs root"
    return None


def environment() -> dict[str, str]:
    """The environment of every buildah call: containers.conf without default ulimits
    (the defaults are refused here)."""
    conf = cache() / "containers.conf"
    text = "[containers]\ndefault_ulimits = []\n"
    if not conf.is_file() or conf.read_text() != text:
        conf.write_text(text)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def run(argv: Sequence[str], *, log: Path | None = None, timeout: float = 600) -> str:
    """Run a command; its output (also appended to ``log``); BuildError when it fails."""
    done = subprocess.run(
        list(argv),
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {shlex.join(argv)}\n{output}\n")
    if done.returncode != 0:
        raise BuildError(
            f"{shlex.join(argv[:3])} ... failed ({done.returncode}):\n{output[-3000:]}"
        )
    return done.stdout


def exists(image: str) -> bool:
    done = subprocess.run(
        ["buildah", "inspect", "--type", "image", image],
        env=environment(),
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def debian_mirror() -> str:
    """The machine's own Debian mirror (deb822 sources or sources.list), else Debian's."""
    candidates = [*Path("/etc/apt/sources.list.d").glob("*.sources")]
    for path in candidates:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb" and "security" not in fields[1]:
                return fields[1]
    return "http://deb.debian.org/debian"


def base(log: Path) -> str:
    """The local Debian bookworm base with Python 3.11, made once."""
    if exists(BASE):
        return BASE
    rootfs = cache() / f"rootfs-{SUITE}"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                debian_mirror(),
            ],
            log=log,
            timeout=1200,
        )
        for trimmed in TRIMMED:
            for child in (rootfs / trimmed).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    container = run(["buildah", "from", "scratch"], log=log).strip()
    try:
        mount = run(["buildah", "mount", container], log=log).strip()
        # tar keeps owners, modes, links and device nodes as debootstrap made them.
        packed = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-C", mount, "-x"], stdin=packed.stdout, check=True)
        if packed.wait() != 0:
            raise BuildError(f"tar of {rootfs} failed")
        run(["buildah", "umount", container], log=log)
        path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        run(["buildah", "config", "--env", path, "--cmd", "/bin/bash", container], log=log)
        run(["buildah", "commit", "--rm", container, BASE], log=log)
    except BaseException:
        subprocess.run(["buildah", "rm", container], env=environment(), capture_output=True)
        raise
    return BASE


def pip_settings() -> tuple[dict[str, str], list[str]]:
    """The host's pip settings as build arguments, and the local paths they name (to
    bind-mount into the build at the same place)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    args: dict[str, str] = {}
    # Files first, then the environment's PIP_* (":env:"), which win as they do for pip.
    lines = sorted(listed.splitlines(), key=lambda line: line.startswith(":env:"))
    for line in lines:
        match = re.fullmatch(r"[^.]*\.([a-z-]+)='(.*)'", line.strip())
        if match and match.group(1) in PIP_SETTINGS:
            args[PIP_SETTINGS[match.group(1)]] = match.group(2)
    paths: list[str] = []
    for value in args.values():
        for item in value.split():
            path = urllib.parse.urlsplit(item).path if item.startswith("file:") else item
            if path.startswith("/") and Path(path).exists() and path not in paths:
                # A file:// index names .../simple; its links point into the folder above.
                folder = Path(path).parent if Path(path).name == "simple" else Path(path)
                paths.append(str(folder))
    return args, paths


@dataclass(frozen=True)
class Image:
    """What to build: a Dockerfile, a tag and its build arguments."""

    dockerfile: str
    tag: str
    args: Mapping[str, str]


OPERATOR_IMAGE = Image("Dockerfile.operator", OPERATOR, {})
# CPU torch comes from the host's pip settings here (PyTorch's index is not reachable).
WORKER_CPU_IMAGE = Image("Dockerfile.worker", WORKER_CPU, {"VARIANT": "cpu", "CPU_TORCH_INDEX": ""})
WORKER_GPU_IMAGE = Image("Dockerfile.worker", WORKER_GPU, {"VARIANT": "gpu"})


def build(image: Image, log: Path) -> str:
    """Build ``image`` on the local base with the host's pip settings; layers are cached,
    so a build with nothing changed takes seconds."""
    pip_args, paths = pip_settings()
    argv = [
        "buildah",
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--pull=never",
        "-f",
        image.dockerfile,
        "-t",
        image.tag,
        "--build-arg",
        f"BASE={base(log)}",
    ]
    for key, value in {**pip_args, **image.args}.items():
        argv += ["--build-arg", f"{key}={value}"]
    for path in paths:
        argv += ["-v", f"{path}:{path}:ro"]
    argv.append(str(ROOT))
    run(argv, log=log, timeout=BUILD_TIMEOUT_SECONDS)
    return image.tag


def size(image: str) -> int:
    """The image's size in bytes as ``buildah images`` reports it (its uncompressed layers,
    in decimal units to three digits: "2.43 GB")."""
    listed = json.loads(run(["buildah", "images", "--json", image]))
    number, unit = listed[0]["size"].split()
    scale = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit]
    return int(float(number) * scale)


def config(image: str) -> dict[str, object]:
    """The image's OCI config (User, Entrypoint, Cmd, Env, ExposedPorts)."""
    inspected = json.loads(run(["buildah", "inspect", "--type", "image", image]))
    found: dict[str, object] = inspected["OCIv1"]["config"]
    return found


@contextmanager
def container(image: str) -> Iterator[str]:
    """A working container of ``image`` (removed at exit)."""
    name = run(["buildah", "from", "--pull-never", image]).strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], env=environment(), capture_output=True)


def run_argv(
    name: str,
    argv: Sequence[str],
    *,
    volumes: Mapping[str, str] | None = None,
    user: str | None = None,
) -> list[str]:
    """The command line that runs ``argv`` in container ``name`` (host network, chroot
    isolation, the image's user unless ``user``); bind mounts ``host: container`` read-only."""
    out = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
    for host, inside in (volumes or {}).items():
        out += ["-v", f"{host}:{inside}:ro"]
    if user is not None:
        out += ["--user", user]
    return [*out, name, "--", *argv]

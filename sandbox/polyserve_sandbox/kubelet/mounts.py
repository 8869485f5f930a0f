"""One container's file system view: its mounts, and container paths -> host paths.

Processes run on the host's file system, so the sandbox translates the container paths a
container is given. The rule (applied to ``command``, ``args``, ``env`` values of the spec
and ``envFrom``, and ``workingDir``, after ``$(VAR)`` expansion):

1. A token is translated when it is an absolute path (``/models/m``), or ``KEY=/path``
   where KEY holds no ``/`` (``--model-repository=/models``). An env value may also be a
   ``:``-separated list of absolute paths (``PYTHONPATH``). URIs (``file:///x``) are not.
2. A path inside a mount becomes the host path of the mount plus the rest; the longest
   mount path wins (``/models/m/config.pbtxt`` mounted from a ConfigMap beats ``/models``).
3. A path above mount points (``/mnt/pvc`` when ``/mnt/pvc/claim`` is mounted) becomes the
   container's own ``root/`` folder, where each mount point is a link to its volume.
4. Anything else is the host's path, unchanged (``/usr/bin/env``, ``/etc/hosts``).

Implicit mounts, as a runtime provides them: the termination-message file
(``terminationMessagePath``, default /dev/termination-log), and ``/tmp`` when no volume is
mounted there (the container's writable layer, read-only with readOnlyRootFilesystem).
TMPDIR points at whatever plays /tmp; HOME at the container's own ``home/`` folder.

What the runtime enforces, this module enforces: a mount point that must be created inside
a read-only mount (a subPath file at /models/m/config.pbtxt when /models is mounted
``readOnly``) is ``CreateContainerError`` in runc's words (kubernetes#121294). Mount points
inside writable volumes are created in the volume, as runc creates them. The list of binds
is what the launcher does in the container's own mount namespace when running as root.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyserve_sandbox.kubelet import environment, processes
from polyserve_sandbox.kubelet.volumes import Volume

Obj = dict[str, Any]
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


class CreateError(Exception):
    """``CreateContainerError``: the message is the runtime's."""


@dataclass(frozen=True)
class Mount:
    path: str
    """The container path (normalised)."""
    host: Path
    read_only: bool
    is_file: bool = False
    written: bool = False
    """Its volume is written by the kubelet: mount points inside it are made, not refused."""
    implicit: bool = False
    """Provided by the runtime (termination-message file, the writable layer's /tmp)."""


def _inside(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent + "/")


def _runc_error(source: Path, target: str, is_file: bool) -> CreateError:
    op = "open" if is_file else "mkdirat"
    return CreateError(
        "failed to create containerd task: failed to create shim task: OCI runtime create "
        "failed: runc create failed: unable to start container process: error during "
        f'container init: error mounting "{source}" to rootfs at "{target}": create '
        f"mountpoint for {target} mount: {op} {target}: read-only file system: unknown"
    )


class ContainerFs:
    def __init__(
        self,
        container: Obj,
        volumes: Mapping[str, Volume],
        scratch: Path,
        env: Mapping[str, str],
        *,
        read_only_root: bool,
    ) -> None:
        self.scratch = scratch
        self.view = scratch / "root"
        self.home = scratch / "home"
        self.read_only_root = read_only_root
        self.termination_path = posixpath.normpath(
            container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        )
        self.termination_file = scratch / "termination-log"
        self.mounts: list[Mount] = []
        self._parents: dict[str, Mount] = {}
        declared = [self._mount(m, volumes, env) for m in container.get("volumeMounts") or []]
        declared.sort(key=lambda m: (m.path.count("/"), m.path))
        for mount in declared:
            parent = self._enclosing(mount.path)
            if parent is not None:
                self._parents[mount.path] = parent
            self.mounts.append(mount)
        self.mounts.append(
            Mount(self.termination_path, self.termination_file, False, True, implicit=True)
        )
        if not any(m.path == "/tmp" for m in self.mounts):
            self.mounts.append(Mount("/tmp", scratch / "tmp", read_only_root, implicit=True))
        self._by_length = sorted(self.mounts, key=lambda m: len(m.path), reverse=True)

    def _mount(self, spec: Obj, volumes: Mapping[str, Volume], env: Mapping[str, str]) -> Mount:
        path = posixpath.normpath(spec["mountPath"])
        volume = volumes.get(spec["name"])
        if volume is None:
            raise environment.ConfigError(
                f'cannot find volume "{spec["name"]}" to mount into container'
            )
        host = volume.path
        sub = spec.get("subPath") or environment.expand(spec.get("subPathExpr", ""), env.get)
        if sub:
            if posixpath.isabs(sub) or ".." in Path(sub).parts:
                raise environment.ConfigError(
                    f'failed to prepare subPath for volumeMount "{spec["name"]}": '
                    f'subpath "{sub}" must be a relative path within the volume'
                )
            host = volume.path / sub
            if not host.exists() and not volume.read_only:
                host.mkdir(parents=True, exist_ok=True)  # the kubelet makes it a folder
        read_only = bool(spec.get("readOnly")) or volume.read_only
        return Mount(path, host, read_only, host.is_file(), written=volume.written)

    def _enclosing(self, path: str) -> Mount | None:
        candidates = [m for m in self.mounts if m.path != path and _inside(path, m.path)]
        return max(candidates, key=lambda m: len(m.path), default=None)

    # -- translation -------------------------------------------------------------------

    def translate(self, path: str) -> str:
        """A container path -> the host path that plays it (rules 2-4 of the module)."""
        if not path.startswith("/"):
            return path
        norm = posixpath.normpath(path)
        trailing = "/" if path.endswith("/") and norm != "/" else ""
        for mount in self._by_length:
            if _inside(norm, mount.path) and mount.path != "/":
                return f"{mount.host}{norm[len(mount.path) :]}{trailing}"
        if norm != "/" and any(m.path.startswith(norm + "/") for m in self.mounts):
            return f"{self.view}{norm}{trailing}"
        return path

    def token(self, text: str) -> str:
        """One argument: a path, or ``KEY=/path`` (rule 1)."""
        if text.startswith("/"):
            return self.translate(text)
        key, sep, value = text.partition("=")
        if sep and key and "/" not in key and value.startswith("/"):
            return f"{key}={self.translate(value)}"
        return text

    def env_value(self, text: str) -> str:
        parts = text.split(":")
        if len(parts) > 1 and all(part.startswith("/") for part in parts):
            return ":".join(self.translate(part) for part in parts)
        return self.token(text)

    @property
    def tmpdir(self) -> str:
        return self.translate("/tmp")

    def working_dir(self, requested: str | None) -> str:
        """Where the process starts: the translated ``workingDir`` (made when missing, as a
        runtime makes it), else the container's ``root/`` folder."""
        if not requested:
            return str(self.view)
        translated = self.translate(requested)
        if translated == requested and not os.path.isdir(requested):
            translated = f"{self.view}{posixpath.normpath(requested)}"
        os.makedirs(translated, exist_ok=True)
        return translated

    # -- preparation -------------------------------------------------------------------

    def prepare(self, *, as_root: bool) -> list[processes.Bind]:
        """Make the container's folders and mount points; return the binds for its mount
        namespace. Raises ``CreateError`` where runc would."""
        for folder in (self.view, self.home, self.scratch / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        self.termination_file.write_bytes(b"")
        os.chmod(self.termination_file, 0o666)
        os.chmod(self.home, 0o777)
        os.chmod(self.scratch / "tmp", 0o1777)
        binds: list[processes.Bind] = []
        for mount in self.mounts:
            if mount.implicit:
                if mount.is_file:  # the termination-message file stays writable
                    binds.append(processes.Bind(str(mount.host), str(mount.host), False))
                continue
            parent = self._parents.get(mount.path)
            if parent is None:
                self._link_in_view(mount)
                target = str(mount.host)
            else:
                target = self._mount_point(mount, parent, as_root=as_root)
            if mount.read_only or self.read_only_root or parent is not None:
                binds.append(processes.Bind(str(mount.host), target, mount.read_only))
        return binds

    def _link_in_view(self, mount: Mount) -> None:
        link = Path(f"{self.view}{mount.path}")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and os.readlink(link) == str(mount.host):
                return
            if link.is_symlink() or link.is_file():
                link.unlink()
            else:
                return
        link.symlink_to(mount.host)

    def _mount_point(self, mount: Mount, parent: Mount, *, as_root: bool) -> str:
        point = Path(f"{parent.host}{mount.path[len(parent.path) :]}")
        if point.exists() or point.is_symlink():
            return str(point)
        if parent.read_only and not parent.written:
            raise _runc_error(mount.host, mount.path, mount.is_file)
        point.parent.mkdir(parents=True, exist_ok=True)
        if as_root:
            if mount.is_file:
                point.touch()
            else:
                point.mkdir()
        else:  # no mount namespace: a link plays the mount point
            point.symlink_to(mount.host)
        return str(point)

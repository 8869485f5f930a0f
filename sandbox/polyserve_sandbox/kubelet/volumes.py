"""A pod's volumes as folders on this machine (see ``layout`` for where they live).

- emptyDir: a folder in the pod's directory, mode 0777 as the kubelet makes it; medium
  Memory: a folder under /dev/shm (tmpfs). ``sizeLimit`` is not enforced (no eviction).
- configMap, secret, projected, downwardAPI: files written the kubelet's way (``items``,
  ``defaultMode``/``mode``, ``optional``), in its atomic layout: a ``..data`` link to a
  timestamped folder and one link per top-level name, so ``refresh()`` swaps all files at
  once when the sources change. These volumes are always read-only to containers.
- persistentVolumeClaim: the folder the resolver plays the claim with; hostPath: the path
  itself, with the ``type`` checks and ``...OrCreate`` creation.

A source that is missing (and not ``optional``) raises ``MountError`` with the kubelet's
FailedMount message; the pod waits in ContainerCreating and tries again. When the sandbox
runs as root, emptyDir and the written volumes are chowned to the pod's fsGroup (with the
set-group-id bit on folders) and runAsUser, as the kubelet's volume ownership does.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyserve_sandbox.kubelet import environment, sources
from polyserve_sandbox.kubelet.layout import PodLayout

logger = logging.getLogger(__name__)
Obj = dict[str, Any]

WRITTEN = ("configMap", "secret", "projected", "downwardAPI")
_size_limit_noted = False


class MountError(Exception):
    """FailedMount: ``str()`` is the event's message."""

    def __init__(self, volume: str, reason: str) -> None:
        super().__init__(f'MountVolume.SetUp failed for volume "{volume}" : {reason}')
        self.volume = volume


class MountErrors(MountError):
    """Several volumes failed; each message is kept."""

    def __init__(self, errors: list[MountError]) -> None:
        Exception.__init__(self, "; ".join(str(e) for e in errors))
        self.volume = errors[0].volume
        self.errors = errors


@dataclass(frozen=True)
class Volume:
    name: str
    path: Path
    """The folder (or, for a hostPath file, the file) that plays the volume."""
    read_only: bool
    """Always read-only, whatever the mount says (written volumes, readOnly claims)."""
    written: bool
    """Written by the kubelet (configMap...): mount points inside it are made, not refused."""


class PodVolumes:
    def __init__(
        self,
        pod: Obj,
        layout: PodLayout,
        resolver: sources.Resolver,
        *,
        pod_ip: str,
        host_ip: str,
        as_root: bool,
    ) -> None:
        self.pod = pod
        self.layout = layout
        self.resolver = resolver
        self.pod_ip, self.host_ip = pod_ip, host_ip
        self.as_root = as_root
        self.namespace = pod.get("metadata", {}).get("namespace", "default")
        security = pod.get("spec", {}).get("securityContext") or {}
        self.fs_group: int | None = security.get("fsGroup")
        self.run_as_user: int | None = security.get("runAsUser")
        self.volumes: dict[str, Volume] = {}

    def set_up(self) -> dict[str, Volume]:
        """Every volume of the pod; raises the first ``MountError`` after trying them all."""
        errors: list[MountError] = []
        for spec in self.pod.get("spec", {}).get("volumes") or []:
            if spec["name"] in self.volumes:
                continue
            try:
                self.volumes[spec["name"]] = self._set_up(spec)
            except MountError as exc:
                errors.append(exc)
        if errors:
            raise errors[0] if len(errors) == 1 else MountErrors(errors)
        return self.volumes

    def refresh(self) -> None:
        """Write the written volumes again from their sources (ConfigMaps that changed)."""
        for spec in self.pod.get("spec", {}).get("volumes") or []:
            if spec["name"] in self.volumes and self._kind(spec) in WRITTEN:
                try:
                    self._write(spec, self.volumes[spec["name"]].path)
                except MountError as exc:
                    logger.info("%s: keeping the last contents: %s", self.layout.key, exc)

    def tear_down(self) -> None:
        shutil.rmtree(self.layout.volumes, ignore_errors=True)
        shutil.rmtree(self.layout.shm, ignore_errors=True)
        self.volumes.clear()

    @staticmethod
    def _kind(spec: Obj) -> str:
        return next((key for key in spec if key != "name"), "emptyDir")

    def _set_up(self, spec: Obj) -> Volume:
        name, kind = spec["name"], self._kind(spec)
        source = spec.get(kind) or {}
        if kind == "emptyDir":
            return Volume(name, self._empty_dir(name, source), False, False)
        if kind in WRITTEN:
            folder = self.layout.volumes / name
            self._write(spec, folder)
            return Volume(name, folder, True, True)
        if kind == "persistentVolumeClaim":
            claim = source["claimName"]
            path = self.resolver.claim(self.namespace, claim)
            if path is None:
                raise MountError(name, f'persistentvolumeclaim "{claim}" not found')
            return Volume(name, path, bool(source.get("readOnly")), False)
        if kind == "hostPath":
            return Volume(name, _host_path(name, source), False, False)
        raise MountError(
            name,
            f"the sandbox does not play {kind} volumes (use emptyDir, "
            "configMap, secret, projected, downwardAPI, persistentVolumeClaim "
            "or hostPath)",
        )

    def _empty_dir(self, name: str, source: Obj) -> Path:
        global _size_limit_noted
        if source.get("sizeLimit") and not _size_limit_noted:
            _size_limit_noted = True
            logger.info("emptyDir sizeLimit is not enforced in the sandbox (no eviction)")
        base = self.layout.shm if source.get("medium") == "Memory" else self.layout.volumes
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o777)
        self._own(folder, directory=True)
        return folder

    def _own(self, path: Path, *, directory: bool) -> None:
        if not self.as_root or (self.fs_group is None and self.run_as_user is None):
            return
        uid = self.run_as_user if self.run_as_user is not None else -1
        gid = self.fs_group if self.fs_group is not None else -1
        os.chown(path, uid, gid, follow_symlinks=False)
        if directory and self.fs_group is not None:
            os.chmod(path, os.stat(path).st_mode | 0o2070)

    def _files(self, spec: Obj) -> dict[str, tuple[bytes, int]]:
        """path -> (content, mode) of a written volume."""
        kind = self._kind(spec)
        source = spec.get(kind) or {}
        default_mode = int(source.get("defaultMode", 0o644))
        if kind == "projected":
            files: dict[str, tuple[bytes, int]] = {}
            for item in source.get("sources") or []:
                (sub_kind, sub_source), *_ = item.items()
                files |= self._source_files(spec["name"], sub_kind, sub_source, default_mode)
            return files
        return self._source_files(spec["name"], kind, source, default_mode)

    def _source_files(
        self, volume: str, kind: str, source: Obj, default_mode: int
    ) -> dict[str, tuple[bytes, int]]:
        if kind == "downwardAPI":
            return {
                item["path"]: (self._downward(item), int(item.get("mode", default_mode)))
                for item in source.get("items") or []
            }
        if kind == "serviceAccountToken":
            return {source.get("path", "token"): (b"sandbox-token", default_mode)}
        if kind == "configMap":
            name = source.get("name", "")
            obj = self.resolver.config_map(self.namespace, name)
            data = sources.config_map_data(obj) if obj is not None else None
            missing = f'configmap "{name}" not found'
            wrong_key = "configmap references non-existent config key: {}"
        elif kind == "secret":
            name = source.get("secretName") or source.get("name", "")
            obj = self.resolver.secret(self.namespace, name)
            data = sources.secret_data(obj) if obj is not None else None
            missing = f'secret "{name}" not found'
            wrong_key = "secret references non-existent secret key: {}"
        else:
            raise MountError(volume, f"the sandbox does not play {kind} projections")
        if data is None:
            if source.get("optional"):
                return {}
            raise MountError(volume, missing)
        items = source.get("items")
        if not items:
            return {key: (value, default_mode) for key, value in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise MountError(volume, wrong_key.format(item["key"]))
            files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
        return files

    def _downward(self, item: Obj) -> bytes:
        if "fieldRef" in item:
            path = item["fieldRef"]["fieldPath"]
            return environment.field_value(self.pod, path, self.pod_ip, self.host_ip).encode()
        ref = item["resourceFieldRef"]
        container = {"name": ref.get("containerName", "")}
        return environment.resource_value(self.pod, container, ref).encode()

    def _write(self, spec: Obj, folder: Path) -> None:
        """The kubelet's atomic writer: files in a fresh ``..<stamp>`` folder, ``..data``
        pointed at it in one rename, and a link per top-level name through ``..data``."""
        files = self._files(spec)
        if _holds(folder, files):
            return
        folder.mkdir(parents=True, exist_ok=True)
        stamp = folder / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        stamp.mkdir()
        for relative, (content, mode) in files.items():
            target = stamp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            os.chmod(target, mode)
            self._own(target, directory=False)
        link = folder / "..data_tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(stamp.name)
        previous = (folder / "..data").resolve() if (folder / "..data").is_symlink() else None
        os.replace(link, folder / "..data")
        tops = {Path(relative).parts[0] for relative in files}
        for top in tops:
            entry = folder / top
            if not entry.is_symlink():
                entry.symlink_to(Path("..data") / top)
        for entry in folder.iterdir():
            if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in tops:
                entry.unlink()
        if previous is not None and previous != stamp.resolve():
            shutil.rmtree(previous, ignore_errors=True)
        self._own(folder, directory=True)


def _holds(folder: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    """Whether a written volume already holds exactly these files."""
    data = folder / "..data"
    if not data.is_dir():
        return False
    held = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
    if held != set(files):
        return False
    return all(
        (data / relative).read_bytes() == content
        and (data / relative).stat().st_mode & 0o7777 == mode
        for relative, (content, mode) in files.items()
    )


def _host_path(name: str, source: Obj) -> Path:
    path = Path(source["path"])
    kind = source.get("type", "")
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o644)
    checks = {
        "Directory": (path.is_dir, "directory"),
        "DirectoryOrCreate": (path.is_dir, "directory"),
        "File": (path.is_file, "file"),
        "FileOrCreate": (path.is_file, "file"),
        "Socket": (path.is_socket, "socket"),
        "CharDevice": (path.is_char_device, "character device"),
        "BlockDevice": (path.is_block_device, "block device"),
    }
    if kind in checks:
        check, what = checks[kind]
        if not check():
            raise MountError(name, f"hostPath type check failed: {path} is not a {what}")
    return path

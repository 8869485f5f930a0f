"""System shared-memory regions (Triton's ``system_shared_memory`` extension).

A client on the same node registers a POSIX shared-memory object (``/dev/shm/<key>``) as a
named region; requests then place inputs and outputs in it by ``shared_memory_region``,
``shared_memory_offset`` and ``shared_memory_byte_size`` instead of sending bytes. Inputs
are read as numpy views straight over the mapping (no copy); outputs are copied in once.

Off unless the worker runs with ``--allow-client-shm``. Every offset and size is checked
against the region before any access. A request holds a lease on each region it uses, so
unregistering a region in use only retires its name: the mapping stays valid until the last
request using it has finished.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyserve_worker import errors, tensors
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^/?[A-Za-z0-9_.\-]+$")


@dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    users: int = 0
    retired: bool = False

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def close_if_unused(self) -> None:
        if self.retired and self.users == 0:
            # A numpy view may still point into it; then it closes when that view dies.
            with contextlib.suppress(BufferError):
                self.mapping.close()


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidArgument(f"{name} must be an integer, got {value!r}")
    return value


class Registry:
    def __init__(self, enabled: bool, root: Path = Path("/dev/shm")) -> None:
        self.enabled = enabled
        self.root = root
        self._regions: dict[str, Region] = {}

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise errors.Unsupported(
                "system shared memory is disabled on this worker; start it with "
                "--allow-client-shm (only for clients on the same node)"
            )

    def register(self, name: str, key: str, offset: Any, byte_size: Any) -> None:
        self._check_enabled()
        offset = _int("offset", offset)
        byte_size = _int("byte_size", byte_size)
        if not name:
            raise errors.InvalidArgument("a shared memory region needs a name")
        if name in self._regions:
            raise errors.InvalidArgument(
                f"shared memory region '{name}' is already registered; unregister it first"
            )
        if not _KEY.match(key) or key.strip("/") in ("", ".", ".."):
            raise errors.InvalidArgument(
                f"shared memory key {key!r} is not a POSIX shared memory name such as /input0"
            )
        if offset < 0 or byte_size <= 0:
            raise errors.InvalidArgument(
                f"region '{name}': offset must be >= 0 and byte_size > 0 "
                f"(got {offset}, {byte_size})"
            )
        path = self.root / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise errors.InvalidArgument(
                f"region '{name}': no shared memory object {key!r} on this node ({path}); "
                "create it first (tritonclient.utils.shared_memory.create_shared_memory_region)"
            ) from None
        except OSError as exc:
            raise errors.InvalidArgument(f"region '{name}': cannot open {path}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise errors.InvalidArgument(
                    f"region '{name}': offset {offset} + byte_size {byte_size} exceeds the "
                    f"shared memory object's size of {size} bytes"
                )
            mapping = mmap.mmap(fd, offset + byte_size)
        finally:
            os.close(fd)
        self._regions[name] = Region(name, key, offset, byte_size, mapping)
        logger.info("registered shared memory region '%s' (%s, %d bytes)", name, key, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unregister one region, or all when ``name`` is empty."""
        self._check_enabled()
        if name and name not in self._regions:
            raise errors.NotFound(f"no shared memory region '{name}' is registered")
        names = [name] if name else list(self._regions)
        for region_name in names:
            region = self._regions.pop(region_name)
            region.retired = True
            region.close_if_unused()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        self._check_enabled()
        if name:
            if name not in self._regions:
                raise errors.NotFound(f"no shared memory region '{name}' is registered")
            return [self._regions[name].status()]
        return [r.status() for r in self._regions.values()]

    def lease(self) -> Lease:
        return Lease(self)

    def _get(self, name: str) -> Region:
        self._check_enabled()
        try:
            return self._regions[name]
        except KeyError:
            raise errors.InvalidArgument(
                f"shared memory region '{name}' is not registered"
            ) from None


@dataclass
class Lease:
    """The regions one request uses; hold it until the response is written."""

    registry: Registry
    held: list[Region] = field(default_factory=list)

    def _hold(self, name: str) -> Region:
        region = self.registry._get(name)
        region.users += 1
        self.held.append(region)
        return region

    def _span(self, region: Region, params: dict[str, Any], what: str) -> tuple[int, int]:
        if "shared_memory_byte_size" not in params:
            raise errors.InvalidArgument(f"{what}: shared_memory_byte_size is required")
        size = _int(f"{what}: shared_memory_byte_size", params["shared_memory_byte_size"])
        offset = _int(f"{what}: shared_memory_offset", params.get("shared_memory_offset", 0))
        if offset < 0 or size < 0 or offset + size > region.byte_size:
            raise errors.InvalidArgument(
                f"{what}: offset {offset} and byte size {size} fall outside region "
                f"'{region.name}' of {region.byte_size} bytes"
            )
        return region.offset + offset, size

    def read(self, name: str, params: dict[str, Any], datatype: str, shape: list[int]) -> Array:
        """An input tensor as a view over its region."""
        what = f"input '{name}'"
        region = self._hold(str(params["shared_memory_region"]))
        start, size = self._span(region, params, what)
        return tensors.from_raw(
            name, memoryview(region.mapping)[start : start + size], datatype, shape
        )

    def place(self, name: str, params: dict[str, Any]) -> Placement:
        """Where an output goes; checked now, written after inference."""
        what = f"output '{name}'"
        region = self._hold(str(params["shared_memory_region"]))
        start, size = self._span(region, params, what)
        return Placement(region, start, size, params.get("shared_memory_offset", 0))

    def release(self) -> None:
        for region in self.held:
            region.users -= 1
            region.close_if_unused()
        self.held.clear()


@dataclass(frozen=True)
class Placement:
    region: Region
    start: int
    capacity: int
    offset: int

    def write(self, name: str, array: Array) -> dict[str, Any]:
        """Copy the output in; returns the response parameters that point at it."""
        raw = tensors.to_raw(array)
        if len(raw) > self.capacity:
            raise errors.InvalidArgument(
                f"output '{name}' needs {len(raw)} bytes but its shared memory span holds "
                f"{self.capacity}"
            )
        self.region.mapping[self.start : self.start + len(raw)] = raw
        params: dict[str, Any] = {
            "shared_memory_region": self.region.name,
            "shared_memory_byte_size": len(raw),
        }
        if self.offset:
            params["shared_memory_offset"] = self.offset
        return params

"""Client shared-memory regions: Triton's system and CUDA shared memory extensions.

A client on the same node registers a region once; requests then place inputs and outputs
in it by ``shared_memory_region``, ``shared_memory_offset`` and ``shared_memory_byte_size``
instead of sending bytes.

- System regions map a POSIX shared-memory object (``/dev/shm/<key>``). Inputs are read as
  numpy views straight over the mapping (no copy); outputs are copied in once.
- CUDA regions open a client's ``cudaIpcMemHandle`` on the same GPU through CuPy's CUDA
  runtime. The backends here take host tensors, so inputs are copied device-to-host and
  outputs host-to-device, one copy each, with no serialization.

Off unless the worker runs with ``--allow-client-shm``. Region names are unique across both
kinds, as in Triton. Every offset and size is checked against the region before any access.
A request holds a lease on each region it uses, so unregistering a region in use only
retires its name: the mapping stays valid until the last request using it has finished.

A key names an object directly in ``/dev/shm`` and nothing else: it is opened with
``O_NOFOLLOW`` (as ``shm_open`` refuses a symbolic link with ELOOP) and must be a regular
file, so a key can never reach a file outside shared memory. The number of regions and the
bytes mapped are capped (``--max-shm-regions``, ``--max-shm-bytes``): each region holds a
file descriptor. The registry is locked, since large requests decode on a worker thread.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import mmap
import os
import re
import stat
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyserve_worker import errors, tensors
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^/?[A-Za-z0-9_.\-]+$")
SYSTEM = "system"
CUDA = "cuda"

_MEMCPY_HOST_TO_DEVICE = 1  # cudaMemcpyHostToDevice
_MEMCPY_DEVICE_TO_HOST = 2  # cudaMemcpyDeviceToHost


class Region(ABC):
    kind: str

    def __init__(self, name: str, byte_size: int) -> None:
        self.name = name
        self.byte_size = byte_size
        self.users = 0
        self.retired = False

    @abstractmethod
    def status(self) -> dict[str, Any]: ...

    @abstractmethod
    def read(self, start: int, size: int) -> memoryview | bytes:
        """Bytes [start, start+size) of the region; bounds already checked."""

    @abstractmethod
    def write(self, start: int, data: bytes) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def close_if_unused(self) -> None:
        if self.retired and self.users == 0:
            self.close()


class SystemRegion(Region):
    kind = SYSTEM

    def __init__(self, name: str, key: str, offset: int, byte_size: int, mapping: mmap.mmap):
        super().__init__(name, byte_size)
        self.key = key
        self.offset = offset
        self.mapping = mapping

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def read(self, start: int, size: int) -> memoryview:
        begin = self.offset + start
        return memoryview(self.mapping)[begin : begin + size]

    def write(self, start: int, data: bytes) -> None:
        begin = self.offset + start
        self.mapping[begin : begin + len(data)] = data

    def close(self) -> None:
        # A numpy view may still point into the mapping; it then closes when that view dies.
        with contextlib.suppress(BufferError):
            self.mapping.close()


class CudaRegion(Region):
    kind = CUDA

    def __init__(self, name: str, device_id: int, byte_size: int, pointer: int, cupy: Any):
        super().__init__(name, byte_size)
        self.device_id = device_id
        self.pointer = pointer
        self._cupy = cupy

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def read(self, start: int, size: int) -> bytes:
        host = np.empty(size, dtype=np.uint8)
        with self._cupy.cuda.Device(self.device_id):
            self._cupy.cuda.runtime.memcpy(
                host.ctypes.data, self.pointer + start, size, _MEMCPY_DEVICE_TO_HOST
            )
        return host.tobytes()

    def write(self, start: int, data: bytes) -> None:
        host = np.frombuffer(data, dtype=np.uint8)
        with self._cupy.cuda.Device(self.device_id):
            self._cupy.cuda.runtime.memcpy(
                self.pointer + start, host.ctypes.data, len(data), _MEMCPY_HOST_TO_DEVICE
            )

    def close(self) -> None:
        with self._cupy.cuda.Device(self.device_id):
            self._cupy.cuda.runtime.ipcCloseMemHandle(self.pointer)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidArgument(f"{name} must be an integer, got {value!r}")
    return value


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise errors.Unsupported(
            "CUDA shared memory needs an NVIDIA GPU and CuPy in the worker "
            "(pip install 'polyserve[cuda]'); use system shared memory instead"
        ) from exc
    return cupy


def decode_handle(raw: Any) -> bytes:
    """A cudaIpcMemHandle from REST's ``{"b64": ...}`` or gRPC's raw bytes."""
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, dict) and isinstance(raw.get("b64"), str):
        try:
            return base64.b64decode(raw["b64"], validate=True)
        except ValueError as exc:
            raise errors.InvalidArgument(f"raw_handle.b64 is not base64: {exc}") from exc
    raise errors.InvalidArgument('raw_handle must be {"b64": "<base64 cudaIpcMemHandle>"}')


class Registry:
    def __init__(
        self,
        enabled: bool,
        root: Path = Path("/dev/shm"),
        max_regions: int = 256,
        max_bytes: int = 1 << 34,
    ) -> None:
        self.enabled = enabled
        self.root = root
        self.max_regions = max_regions
        self.max_bytes = max_bytes
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise errors.Unsupported(
                "shared memory is disabled on this worker; start it with "
                "--allow-client-shm (only for clients on the same node)"
            )

    def _check_new(self, name: str, byte_size: int) -> None:
        self._check_enabled()
        if not name:
            raise errors.InvalidArgument("a shared memory region needs a name")
        if name in self._regions:
            raise errors.InvalidArgument(
                f"shared memory region '{name}' is already registered; unregister it first"
            )
        if byte_size <= 0:
            raise errors.InvalidArgument(f"region '{name}': byte_size must be > 0")
        if len(self._regions) >= self.max_regions:
            raise errors.InvalidArgument(
                f"region '{name}': {len(self._regions)} shared memory regions are registered, "
                f"the most this worker allows (--max-shm-regions); unregister some first"
            )
        mapped = sum(r.byte_size for r in self._regions.values())
        if mapped + byte_size > self.max_bytes:
            raise errors.InvalidArgument(
                f"region '{name}': {byte_size} more bytes would map {mapped + byte_size} bytes "
                f"of shared memory in all, over this worker's {self.max_bytes} "
                "(--max-shm-bytes); unregister some regions first"
            )

    def register_system(self, name: str, key: str, offset: Any, byte_size: Any) -> None:
        offset = _int("offset", offset)
        byte_size = _int("byte_size", byte_size)
        if not isinstance(name, str) or not isinstance(key, str):
            raise errors.InvalidArgument("a region's name and key must be strings")
        with self._lock:
            self._check_new(name, byte_size)
            if not _KEY.match(key) or key.strip("/") in ("", ".", ".."):
                raise errors.InvalidArgument(
                    f"shared memory key {key!r} is not a POSIX shared memory name such as /input0"
                )
            if offset < 0:
                raise errors.InvalidArgument(f"region '{name}': offset must be >= 0, got {offset}")
            mapping = self._map(name, key, offset, byte_size)
            self._regions[name] = SystemRegion(name, key, offset, byte_size, mapping)
        logger.info("registered shared memory region '%s' (%s, %d bytes)", name, key, byte_size)

    def _map(self, name: str, key: str, offset: int, byte_size: int) -> mmap.mmap:
        """Map ``offset + byte_size`` bytes of the object ``key`` names in the root directory.

        The key has no slash (checked), O_NOFOLLOW refuses a symbolic link and fstat a
        non-regular file, so only a shared memory object itself can be mapped."""
        path = self.root / key.lstrip("/")
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise errors.InvalidArgument(
                f"region '{name}': no shared memory object {key!r} on this node ({path}); "
                "create it first (tritonclient.utils.shared_memory.create_shared_memory_region)"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise errors.InvalidArgument(
                    f"region '{name}': {path} is a symbolic link; register the shared memory "
                    "object itself"
                ) from None
            raise errors.InvalidArgument(f"region '{name}': cannot open {path}: {exc}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise errors.InvalidArgument(
                    f"region '{name}': {path} is not a shared memory object"
                )
            if offset + byte_size > info.st_size:
                raise errors.InvalidArgument(
                    f"region '{name}': offset {offset} + byte_size {byte_size} exceeds the "
                    f"shared memory object's size of {info.st_size} bytes"
                )
            return mmap.mmap(fd, offset + byte_size)
        except OSError as exc:
            raise errors.InvalidArgument(f"region '{name}': cannot map {path}: {exc}") from exc
        finally:
            os.close(fd)

    def register_cuda(self, name: str, raw_handle: Any, device_id: Any, byte_size: Any) -> None:
        device_id = _int("device_id", device_id)
        byte_size = _int("byte_size", byte_size)
        with self._lock:
            self._check_new(name, byte_size)
            handle = decode_handle(raw_handle)
            cupy = _cupy()
            try:
                with cupy.cuda.Device(device_id):
                    pointer = int(cupy.cuda.runtime.ipcOpenMemHandle(handle))
            except Exception as exc:
                raise errors.InvalidArgument(
                    f"region '{name}': cannot open the CUDA IPC handle on GPU {device_id}: {exc}"
                ) from exc
            self._regions[name] = CudaRegion(name, device_id, byte_size, pointer, cupy)
        logger.info("registered CUDA shared memory region '%s' (GPU %d)", name, device_id)

    def unregister(self, name: str = "", kind: str = SYSTEM) -> None:
        """Unregister one region of ``kind``, or all of them when ``name`` is empty."""
        self._check_enabled()
        with self._lock:
            if name and (name not in self._regions or self._regions[name].kind != kind):
                raise errors.NotFound(f"no {kind} shared memory region '{name}' is registered")
            names = [name] if name else [n for n, r in self._regions.items() if r.kind == kind]
            for region_name in names:
                region = self._regions.pop(region_name)
                region.retired = True
                region.close_if_unused()

    def status(self, name: str = "", kind: str = SYSTEM) -> list[dict[str, Any]]:
        self._check_enabled()
        with self._lock:
            if name:
                region = self._regions.get(name)
                if region is None or region.kind != kind:
                    raise errors.NotFound(f"no {kind} shared memory region '{name}' is registered")
                return [region.status()]
            return [r.status() for r in self._regions.values() if r.kind == kind]

    def lease(self) -> Lease:
        return Lease(self)

    def _hold(self, name: str) -> Region:
        """The region ``name``, with one more user (a lease holds it)."""
        self._check_enabled()
        with self._lock:
            try:
                region = self._regions[name]
            except KeyError:
                raise errors.InvalidArgument(
                    f"shared memory region '{name}' is not registered"
                ) from None
            region.users += 1
            return region

    def _release(self, regions: list[Region]) -> None:
        with self._lock:
            for region in regions:
                region.users -= 1
                region.close_if_unused()


@dataclass
class Lease:
    """The regions one request uses; hold it until the response is written."""

    registry: Registry
    held: list[Region] = field(default_factory=list)

    def _hold(self, name: str) -> Region:
        region = self.registry._hold(name)
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
        return offset, size

    def read(
        self,
        name: str,
        params: dict[str, Any],
        datatype: str,
        shape: list[int],
        budget: tensors.Budget | None = None,
    ) -> Array:
        """An input tensor from its region (a view over system shared memory).

        ``budget`` checks the shape against the model and counts its elements; the bytes are
        not charged to the request, as they are read in place and bounded by the region."""
        what = f"input '{name}'"
        region = self._hold(str(params["shared_memory_region"]))
        start, size = self._span(region, params, what)
        view = region.read(start, size)
        return tensors.from_raw(name, view, datatype, shape, budget, in_place=True)

    def place(self, name: str, params: dict[str, Any]) -> Placement:
        """Where an output goes; checked now, written after inference."""
        what = f"output '{name}'"
        region = self._hold(str(params["shared_memory_region"]))
        start, size = self._span(region, params, what)
        return Placement(region, start, size)

    def release(self) -> None:
        self.registry._release(self.held)
        self.held.clear()


@dataclass(frozen=True)
class Placement:
    region: Region
    offset: int
    capacity: int

    def write(self, name: str, array: Array) -> dict[str, Any]:
        """Copy the output in; returns the response parameters that point at it."""
        raw = tensors.to_raw(array)
        if len(raw) > self.capacity:
            raise errors.InvalidArgument(
                f"output '{name}' needs {len(raw)} bytes but its shared memory span holds "
                f"{self.capacity}"
            )
        self.region.write(self.offset, raw)
        params: dict[str, Any] = {
            "shared_memory_region": self.region.name,
            "shared_memory_byte_size": len(raw),
        }
        if self.offset:
            params["shared_memory_offset"] = self.offset
        return params

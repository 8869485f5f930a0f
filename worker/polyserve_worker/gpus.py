"""Which CUDA devices this process may use: where a GPU instance group that names no GPUs
puts its instances.

Triton places such a group's ``count`` instances on every GPU it can see; so does the
worker. The devices are CUDA ordinals (0..N-1 of what this process sees): with
``CUDA_VISIBLE_DEVICES`` set, its entries (indexes or ``GPU-``/``MIG-`` UUIDs; CUDA stops at
the first invalid one, and ``-1`` hides every device), else every device NVML reports, which
in a container is what the device plugin mounted (``nvidia.com/gpu`` requests). No
framework is imported; without the NVIDIA driver the answer is no device.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)


def visible(environ: dict[str, str] | None = None) -> list[int]:
    """The CUDA ordinals this process may use (empty: none)."""
    env = os.environ if environ is None else environ
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return list(range(_listed(listed)))
    return list(range(_nvml_count()))


def _listed(value: str) -> int:
    count = 0
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break  # CUDA ignores everything from the first invalid entry on
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        count += 1
    return count


def _nvml_count() -> int:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0  # no NVIDIA driver here
    if nvml.nvmlInit_v2() != 0:
        return 0
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    finally:
        nvml.nvmlShutdown()

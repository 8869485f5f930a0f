"""Nodes that reflect the machine, and the ones a sandbox config declares.

The Xeon-pool node carries the labels Node Feature Discovery would publish for this CPU
(``feature.node.kubernetes.io/cpu-cpuid.AMXBF16``, ``...AVX512BF16``: NFD's names, from the
real ``/proc/cpuinfo`` flags) and allocatable CPU and memory of this machine (the CPUs this
process may run on, the memory the kernel reports). A GPU node exists only when
``nvidia-smi`` lists GPUs, with GPU Feature Discovery's labels and ``nvidia.com/gpu``
allocatable; nothing pretends to be a GPU that is not there. Declared nodes (labels, taints,
allocatable) are for placement tests; their pods run on this machine like any other.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

NFD_CPUID = "feature.node.kubernetes.io/cpu-cpuid."
#: /proc/cpuinfo flag -> NFD's cpuid feature name, for the features that matter to
#: inference engines (NFD publishes these without underscores).
CPUID_FEATURES = {
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA3",
    "avx_vnni": "AVXVNNI",
    "avx512f": "AVX512F",
    "avx512bw": "AVX512BW",
    "avx512vl": "AVX512VL",
    "avx512_vnni": "AVX512VNNI",
    "avx512_bf16": "AVX512BF16",
    "avx512_fp16": "AVX512FP16",
    "amx_tile": "AMXTILE",
    "amx_bf16": "AMXBF16",
    "amx_int8": "AMXINT8",
    "amx_fp16": "AMXFP16",
}
KUBELET_VERSION = "v1.33.0-polyserve-sandbox"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeSpec:
    """A node to register: its name, labels, taints and allocatable resources."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: list[Obj] = field(default_factory=list)
    allocatable: Mapping[str, str] = field(default_factory=dict)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux names them."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("vendor_id"):
            vendor = line.split(":", 1)[1].strip()
            return {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(vendor, vendor)
    return None


def nfd_labels(flags: set[str]) -> dict[str, str]:
    """The NFD cpuid labels a node with these CPU flags carries."""
    return {NFD_CPUID + name: "true" for flag, name in CPUID_FEATURES.items() if flag in flags}


def machine_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 or v1 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    for path in (Path("/sys/fs/cgroup/cpu.max"),):
        try:
            quota, period = path.read_text().split()
            if quota != "max":
                cpus = min(cpus, max(1, int(int(quota) // int(period))))
        except (OSError, ValueError):
            pass
    try:
        v1_quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        v1_period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if v1_quota > 0:
            cpus = min(cpus, max(1, v1_quota // v1_period))
    except (OSError, ValueError):
        pass
    return cpus


def machine_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes of memory the kernel reports."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: int


def gpus() -> list[Gpu]:
    """The GPUs ``nvidia-smi`` lists; none when it is missing or finds none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        name, _, memory = line.partition(",")
        try:
            found.append(Gpu(name.strip(), int(float(memory.strip()))))
        except ValueError:
            continue
    return found


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def xeon_node(name: str = "xeon-0", extra_labels: Mapping[str, str] | None = None) -> NodeSpec:
    """This machine as a node of the CPU pool."""
    labels = {
        **nfd_labels(cpu_flags()),
        **({"feature.node.kubernetes.io/cpu-model.vendor_id": v} if (v := cpu_vendor()) else {}),
        **(extra_labels or {}),
    }
    allocatable = {"cpu": str(machine_cpus()), "memory": f"{machine_memory() // 1024}Ki"}
    return NodeSpec(name=name, labels=labels, allocatable=allocatable)


def gpu_node(found: list[Gpu], name: str = "gpu-0") -> NodeSpec | None:
    """This machine's GPUs as a node of the GPU pool (GPU Feature Discovery's labels)."""
    if not found:
        return None
    product = found[0].name.replace(" ", "-")
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(len(found)),
        "nvidia.com/gpu.memory": str(found[0].memory_mib),
    }
    allocatable = {
        "cpu": str(machine_cpus()),
        "memory": f"{machine_memory() // 1024}Ki",
        GPU_RESOURCE: str(len(found)),
    }
    return NodeSpec(name=name, labels=labels, allocatable=allocatable)


def node_object(spec: NodeSpec) -> Obj:
    """The Node object a kubelet would register for ``spec``."""
    allocatable = {"pods": "110", **spec.allocatable}
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _arch(),
        **spec.labels,
    }
    node: Obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": {"taints": list(spec.taints)} if spec.taints else {},
        "status": {
            "capacity": dict(allocatable),
            "allocatable": dict(allocatable),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status (polyserve sandbox)",
                }
            ],
            "nodeInfo": {
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": _arch(),
                "osImage": platform.platform(),
                "kernelVersion": platform.release(),
                "containerRuntimeVersion": "polyserve-sandbox://processes",
            },
        },
    }
    return node

"""What this machine is, for the tuner: its CPU model and features, the CPUs the worker may
use, and its NVIDIA GPUs.

A tuned config belongs to the hardware it was measured on, so the report and the operator's
``status.tuning`` say which (a node's instance type is not visible from inside a pod; its CPU
model and GPU product are). ``--hardware`` fixes parts of the profile (``pool=xeon``,
``backend=openvino``, ``precision=bf16``), as a tier's hardware does; the rest is read here.
Reads ``/proc`` and runs ``nvidia-smi`` when present; knows no framework.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from polyserve_worker import backends, cpus
from polyserve_worker.tuning import space

#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AMX first, AVX512_BF16 after.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
POOLS = ("xeon", "gpu")


class HardwareError(Exception):
    """A ``--hardware`` value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Machine:
    """What the tuner measured on."""

    cpu_model: str
    cpus: int
    bf16: bool
    gpus: tuple[str, ...]

    def describe(self) -> str:
        gpus = f", GPU {', '.join(self.gpus)}" if self.gpus else ""
        return f"{self.cpu_model} ({self.cpus} CPUs{', bf16' if self.bf16 else ''}){gpus}"


def cpu_info(text: str) -> tuple[str, bool]:
    """(model name, native bf16) from ``/proc/cpuinfo``'s text."""
    model, flags = "unknown CPU", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, any(f in flags for f in BF16_FLAGS)


def nvidia_gpus() -> tuple[str, ...]:
    """GPU products ``nvidia-smi`` lists; none without it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def this_machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> Machine:
    try:
        model, bf16 = cpu_info(cpuinfo.read_text())
    except OSError:
        model, bf16 = "unknown CPU", False
    return Machine(cpu_model=model, cpus=cpus.available(), bf16=bf16, gpus=nvidia_gpus())


def parse(text: str) -> dict[str, str]:
    """``pool=xeon,backend=openvino,precision=bf16`` -> its keys (each optional)."""
    found: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in ("pool", "backend", "precision"):
            raise HardwareError(
                f"--hardware {text!r}: expected pool=xeon|gpu, backend=NAME|auto, "
                "precision=fp32|bf16|fp16|auto, comma-separated"
            )
        found[key] = value.strip()
    return found


def profile(text: str, machine: Machine) -> space.Hardware:
    """The hardware the space is built for: what ``--hardware`` fixes, the machine the rest.
    A GPU pool on a machine without one is refused: nothing could be measured."""
    given = parse(text)
    pool = given.get("pool") or ("gpu" if machine.gpus else "xeon")
    if pool not in POOLS:
        raise HardwareError(f"--hardware pool={pool}: one of {', '.join(POOLS)}")
    if pool == "gpu" and not machine.gpus:
        raise HardwareError("--hardware pool=gpu: this machine shows no NVIDIA GPU (nvidia-smi)")
    backend = given.get("backend", "auto")
    # The operator's names for the CUDA builds are the worker's backends on a GPU.
    backend = {"onnxruntime-cuda": "onnxruntime", "pytorch-cuda": "pytorch"}.get(backend, backend)
    if backend != "auto" and backend not in backends.REGISTRY:
        raise HardwareError(
            f"--hardware backend={backend}: one of auto, {', '.join(sorted(backends.REGISTRY))}"
        )
    precision = given.get("precision", "auto")
    if precision != "auto" and precision not in backends.PRECISIONS:
        raise HardwareError(
            f"--hardware precision={precision}: one of auto, {', '.join(backends.PRECISIONS)}"
        )
    return space.Hardware(
        kind="KIND_GPU" if pool == "gpu" else "KIND_CPU",
        cpus=machine.cpus,
        bf16=machine.bf16,
        backend=None if backend == "auto" else backend,
        precision=None if precision == "auto" else precision,
    )

"""Backend registry: an explicit map from Triton's platform and backend names to modules.

Framework modules are imported only when a model needs them, so a worker starts with just
the frameworks its repository uses, and a missing framework fails that model's load with
advice on which extra to install while the rest keep serving. What each backend can do
(file names, devices, precisions) is static data here, so a config can be checked and an
error can list the alternatives without importing any framework.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyserve_worker import errors
from polyserve_worker.backends import base

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class BackendInfo:
    module: str
    cls: str
    extra: str  # pip extra that installs the framework
    filename: str  # Triton's default model file (or directory) name
    platform: str  # Triton's platform name
    #: instance kind -> precisions the backend can run there
    precisions: Mapping[str, frozenset[str]]
    #: other file names that identify the backend (``model.pt2``); one found on disk
    #: becomes the config's ``default_model_filename``
    alternatives: tuple[str, ...] = ()


def _p(*names: str) -> frozenset[str]:
    return frozenset(names)


REGISTRY: dict[str, BackendInfo] = {
    "onnxruntime": BackendInfo(
        "polyserve_worker.backends.onnxruntime",
        "OnnxRuntimeBackend",
        "onnx",
        "model.onnx",
        "onnxruntime_onnx",
        # fp16 on GPU runs through the TensorRT execution provider (trt_fp16_enable).
        {"KIND_CPU": _p("fp32"), "KIND_GPU": _p("fp32", "fp16")},
    ),
    "pytorch": BackendInfo(
        "polyserve_worker.backends.pytorch",
        "PyTorchBackend",
        "torch",
        "model.pt",
        "pytorch_libtorch",
        # Weights and floating inputs cast to the precision; int8 needs a quantized model,
        # which runs as fp32 says (the file decides), so it is not offered as a switch.
        {"KIND_CPU": _p("fp32", "fp16", "bf16"), "KIND_GPU": _p("fp32", "fp16", "bf16")},
        alternatives=("model.pt2",),
    ),
    "tensorflow": BackendInfo(
        "polyserve_worker.backends.tensorflow",
        "TensorFlowBackend",
        "tensorflow",
        "model.savedmodel",
        "tensorflow_savedmodel",
        # A SavedModel runs in the types its graph was saved with: no precision switch.
        {"KIND_CPU": _p("fp32"), "KIND_GPU": _p("fp32")},
    ),
    "openvino": BackendInfo(
        "polyserve_worker.backends.openvino",
        "OpenVinoBackend",
        "openvino",
        "model.xml",
        "openvino",
        # INFERENCE_PRECISION_HINT: bf16 where the CPU has AVX512_BF16/AMX (else it runs
        # f32 and says so), f16 on OpenVINO's (Intel) GPU plugin.
        {"KIND_CPU": _p("fp32", "bf16"), "KIND_GPU": _p("fp32", "fp16")},
        alternatives=("model.onnx",),  # OpenVINO reads ONNX directly
    ),
    "tensorrt": BackendInfo(
        "polyserve_worker.backends.tensorrt",
        "TensorRtBackend",
        "tensorrt",
        "model.plan",
        "tensorrt_plan",
        # GPU only, and an engine's precision is fixed when it is built (trtexec --fp16,
        # --int8): a config parameter cannot change it, so none is offered.
        {"KIND_GPU": _p("fp32")},
    ),
}

#: Triton platform names -> backend names.
PLATFORMS: dict[str, str] = {info.platform: name for name, info in REGISTRY.items()}

#: Backends Triton has that this worker does not: a clear answer instead of a guess.
KNOWN_ELSEWHERE = {
    "python": "python",
}

_loaded: dict[str, base.Backend] = {}


def resolve_name(
    config: Any, version_dir: Path | None, extra: Mapping[str, base.Backend] | None = None
) -> str:
    """The backend a config asks for, or the one its model file implies."""
    name = str(config.backend or PLATFORMS.get(config.platform, config.platform))
    if extra and name in extra:
        return name
    if name:
        if name not in REGISTRY:
            if name in KNOWN_ELSEWHERE or config.platform in KNOWN_ELSEWHERE:
                raise errors.ModelLoadError(
                    f"model '{config.name}': backend '{name}' is not available in this worker "
                    f"version; available: {', '.join(sorted(REGISTRY))}"
                )
            raise errors.ModelLoadError(
                f"model '{config.name}': unknown backend or platform "
                f"'{config.backend or config.platform}'; known: "
                f"{', '.join(sorted({*REGISTRY, *PLATFORMS}))}"
            )
        return name
    if version_dir is not None:
        for backend_name, info in REGISTRY.items():
            for filename in (info.filename, *info.alternatives):
                if config.default_model_filename not in ("", filename):
                    continue
                if (version_dir / filename).exists():
                    if filename != info.filename:
                        config.default_model_filename = filename
                    return backend_name
    raise errors.ModelLoadError(
        f"model '{config.name}': cannot tell its framework; set 'backend' in its config "
        f"(one of {', '.join(sorted(REGISTRY))}) or name the file "
        f"{' or '.join(f for i in REGISTRY.values() for f in (i.filename, *i.alternatives))}"
    )


def model_filename(name: str, version_dir: Path, default: str) -> str:
    """The model file a named backend should load: its default name, or an alternative it
    also reads (OpenVINO reads model.onnx) when only that one is there."""
    info = REGISTRY.get(name)
    if info is None or (version_dir / default).exists():
        return default
    for filename in info.alternatives:
        if (version_dir / filename).exists():
            return filename
    return default


def check_precision(name: str, precision: str, kinds: list[str], model: str) -> None:
    """Refuse a precision the backend cannot run on an instance kind, listing who can."""
    if precision not in PRECISIONS:
        raise errors.ModelLoadError(
            f"model '{model}': precision '{precision}' is not one of {', '.join(PRECISIONS)}"
        )
    info = REGISTRY.get(name)
    if info is None:
        return  # an injected backend checks for itself
    for kind in kinds:
        if precision not in info.precisions.get(kind, frozenset()):
            raise errors.ModelLoadError(
                f"model '{model}': backend '{name}' cannot run precision {precision} on "
                f"{kind}. Supported: {support_table()}"
            )


def support_table() -> str:
    """'backend: KIND_CPU fp32, KIND_GPU fp16/fp32; ...' for error messages and docs."""
    parts = []
    for name, info in sorted(REGISTRY.items()):
        kinds = ", ".join(
            f"{kind} {'/'.join(sorted(p))}" for kind, p in sorted(info.precisions.items())
        )
        parts.append(f"{name}: {kinds}")
    return "; ".join(parts)


def get(name: str, extra: Mapping[str, base.Backend] | None = None) -> base.Backend:
    """The backend object for ``name``, importing its framework on first use.

    ``extra`` adds backends that are not in the registry (tests inject honest fakes here).
    """
    if extra and name in extra:
        return extra[name]
    if name in _loaded:
        return _loaded[name]
    info = REGISTRY[name]
    try:
        module = importlib.import_module(info.module)
    except ImportError as exc:
        raise errors.ModelLoadError(
            f"backend '{name}' cannot be imported ({exc}): pip install 'polyserve[{info.extra}]'"
        ) from exc
    backend: base.Backend = getattr(module, info.cls)()
    _loaded[name] = backend
    return backend


def platform_of(name: str) -> str:
    info = REGISTRY.get(name)
    return info.platform if info else name

"""Backend registry: an explicit map from Triton's platform and backend names to modules.

Framework modules are imported only when a model needs them, so a worker starts with just
the frameworks its repository uses, and a missing framework fails that model's load with
advice on which extra to install while the rest keep serving. What each backend can do is
static data here, the one table everything else reads without importing a framework: the
model formats it loads and their file names (autocomplete finds a model's backend from its
files), the devices and precisions it runs, the parameters it reads (checked at load and,
through the operator, at admission), and which backend is fastest for a format on a device
(the operator's ``hardware.backend: auto``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyserve_worker import errors
from polyserve_worker.backends import base, configs

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
KINDS = ("KIND_CPU", "KIND_GPU")

#: Model formats (KServe's ``modelFormat`` names, the InferenceModel's too) -> the file
#: names that hold one, Triton's default first. A SavedModel is a directory: Triton's
#: ``model.savedmodel/``, or its own files (``saved_model.pb``, ``variables/``) straight in
#: the version directory, as a fetched SavedModel directory lands.
FORMATS: dict[str, tuple[str, ...]] = {
    "onnx": ("model.onnx",),
    "openvino": ("model.xml",),
    "tensorrt": ("model.plan", "model.engine"),
    "pytorch": ("model.pt", "model.pt2"),
    "tensorflow": ("model.savedmodel", "saved_model.pb"),
}


@dataclass(frozen=True)
class BackendInfo:
    module: str
    cls: str
    extra: str  # pip extra that installs the framework
    platform: str  # Triton's platform name
    #: model formats it loads, its own first (whose first file name is Triton's default)
    formats: tuple[str, ...]
    #: instance kind -> precisions the backend can run there
    precisions: Mapping[str, frozenset[str]]
    #: whose GPUs its KIND_GPU instances run on: "nvidia" (CUDA) or "intel"
    gpu: str = "nvidia"
    #: formats whose precision was fixed when the file was built (an engine): only fp32,
    #: which means "as built", may be asked for
    fixed_precision: tuple[str, ...] = ()
    #: whether it carries string (BYTES) tensors
    strings: bool = False
    #: parameters it reads as integers >= 0, and parameters with a fixed set of values
    int_parameters: tuple[str, ...] = ()
    choice_parameters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        """Triton's default model file (or directory) name."""
        return FORMATS[self.formats[0]][0]

    @property
    def alternatives(self) -> tuple[str, ...]:
        """Other file names it loads (``model.pt2``, OpenVINO's ``model.onnx``); one found on
        disk becomes the config's ``default_model_filename``."""
        names = [n for f in self.formats for n in FORMATS[f]]
        return tuple(n for n in names if n != self.filename)


def _p(*names: str) -> frozenset[str]:
    return frozenset(names)


_THREADS = ("intra_op_thread_count", "inter_op_thread_count")

REGISTRY: dict[str, BackendInfo] = {
    "onnxruntime": BackendInfo(
        "polyserve_worker.backends.onnxruntime",
        "OnnxRuntimeBackend",
        "onnx",
        "onnxruntime_onnx",
        ("onnx",),
        # fp16 on GPU runs through the TensorRT execution provider (trt_fp16_enable).
        {"KIND_CPU": _p("fp32"), "KIND_GPU": _p("fp32", "fp16")},
        strings=True,
        int_parameters=_THREADS,
    ),
    "pytorch": BackendInfo(
        "polyserve_worker.backends.pytorch",
        "PyTorchBackend",
        "torch",
        "pytorch_libtorch",
        ("pytorch",),
        # Weights and floating inputs cast to the precision; int8 needs a quantized model,
        # which runs as fp32 says (the file decides), so it is not offered as a switch.
        {"KIND_CPU": _p("fp32", "fp16", "bf16"), "KIND_GPU": _p("fp32", "fp16", "bf16")},
        int_parameters=("INTRA_OP_THREAD_COUNT", "intra_op_thread_count"),
    ),
    "tensorflow": BackendInfo(
        "polyserve_worker.backends.tensorflow",
        "TensorFlowBackend",
        "tensorflow",
        "tensorflow_savedmodel",
        ("tensorflow",),
        # A SavedModel runs in the types its graph was saved with: no precision switch.
        {"KIND_CPU": _p("fp32"), "KIND_GPU": _p("fp32")},
        strings=True,
        int_parameters=_THREADS,
    ),
    "openvino": BackendInfo(
        "polyserve_worker.backends.openvino",
        "OpenVinoBackend",
        "openvino",
        "openvino",
        ("openvino", "onnx"),  # OpenVINO reads ONNX directly
        # INFERENCE_PRECISION_HINT: bf16 where the CPU has AVX512_BF16/AMX (else it runs
        # f32 and says so), f16 on OpenVINO's (Intel) GPU plugin.
        {"KIND_CPU": _p("fp32", "bf16"), "KIND_GPU": _p("fp32", "fp16")},
        gpu="intel",
        int_parameters=("INFERENCE_NUM_THREADS",),
        choice_parameters={"PERFORMANCE_HINT": ("LATENCY", "THROUGHPUT")},
    ),
    "tensorrt": BackendInfo(
        "polyserve_worker.backends.tensorrt",
        "TensorRtBackend",
        "tensorrt",
        "tensorrt_plan",
        # An ONNX file is built into an engine at load (TensorRT's ONNX parser), cached.
        ("tensorrt", "onnx"),
        # GPU only. An engine's precision is fixed when it is built (trtexec --fp16): a
        # plan runs as built; one built here from ONNX is built in fp32 or fp16.
        {"KIND_GPU": _p("fp32", "fp16")},
        fixed_precision=("tensorrt",),
    ),
}

#: Fastest first on each instance kind: what ``auto`` picks among the backends that load a
#: format there. A compiler for the exact device comes first (TensorRT for the NVIDIA GPU,
#: OpenVINO for the Xeon's AVX-512/AMX: its in-process ceiling beats ONNX Runtime's in
#: bench/RESULTS.md, frameworks), ONNX Runtime next, the frameworks' own runtimes last.
FASTEST: dict[str, tuple[str, ...]] = {
    "KIND_GPU": ("tensorrt", "onnxruntime", "pytorch", "tensorflow", "openvino"),
    "KIND_CPU": ("openvino", "onnxruntime", "pytorch", "tensorflow", "tensorrt"),
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
        f"{' or '.join(f for names in FORMATS.values() for f in names)}"
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


def runs_on(name: str, kind: str, gpu: str = "nvidia") -> bool:
    """Whether the backend runs instances of ``kind`` (on ``gpu``'s GPUs for KIND_GPU)."""
    info = REGISTRY[name]
    return kind in info.precisions and (kind != "KIND_GPU" or info.gpu == gpu)


def loads(name: str, model_format: str) -> bool:
    """Whether the backend loads files of ``model_format``."""
    return model_format in REGISTRY[name].formats


def candidates(
    model_format: str, kind: str, gpu: str = "nvidia", strings: bool = False
) -> list[str]:
    """The backends that load the format and run on the kind (and carry string tensors,
    when the model has some), fastest first."""
    return [
        name
        for name in FASTEST[kind]
        if loads(name, model_format)
        and runs_on(name, kind, gpu)
        and (REGISTRY[name].strings or not strings)
    ]


def fastest(model_format: str, kind: str, gpu: str = "nvidia", strings: bool = False) -> str | None:
    """What ``auto`` picks: the fastest backend for the format on the kind (among those that
    carry string tensors, when the model has some), if any."""
    found = candidates(model_format, kind, gpu, strings)
    return found[0] if found else None


def format_of(filename: str) -> str | None:
    """The model format of a file name (``resnet.onnx`` -> onnx), by its suffix."""
    suffix = Path(filename).suffix
    for model_format, names in FORMATS.items():
        if suffix and suffix in {Path(n).suffix for n in names}:
            return model_format
    return None


def check_precision(
    name: str, precision: str, kinds: list[str], model: str, filename: str | None = None
) -> None:
    """Refuse a precision the backend cannot run on an instance kind, listing who can, or
    one asked of a file whose precision was fixed when it was built."""
    if precision not in PRECISIONS:
        raise errors.ModelLoadError(
            f"model '{model}': precision '{precision}' is not one of {', '.join(PRECISIONS)}"
        )
    info = REGISTRY.get(name)
    if info is None:
        return  # an injected backend checks for itself
    built = format_of(filename) if filename else None
    if precision != "fp32" and built in info.fixed_precision:
        raise errors.ModelLoadError(
            f"model '{model}': a {built} file's precision was fixed when it was built (e.g. "
            f"trtexec --fp16), so precision {precision} cannot be asked of it: leave precision "
            f"at fp32 (as built), or give the ONNX file and let {name} build it in {precision}"
        )
    for kind in kinds:
        if precision not in info.precisions.get(kind, frozenset()):
            raise errors.ModelLoadError(
                f"model '{model}': backend '{name}' cannot run precision {precision} on "
                f"{kind}. Supported: {support_table()}"
            )


def check_parameters(name: str, config: Any) -> None:
    """Refuse a parameter the backend reads with a value it cannot take (an integer below
    zero, a choice it does not know), before any instance is built."""
    info = REGISTRY.get(name)
    if info is None:
        return
    for key in info.int_parameters:
        configs.int_param(config, (key,), 0)
    for key, choices in info.choice_parameters.items():
        if key in config.parameters:
            configs.choice_param(config, key, choices, choices[0])


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

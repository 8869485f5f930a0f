"""Backend registry: an explicit map from Triton's platform and backend names to modules.

Framework modules are imported only when a model needs them, so a worker starts with just
the frameworks its repository uses, and a missing framework fails that model's load with
advice on which extra to install while the rest keep serving.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polyserve_worker import errors
from polyserve_worker.backends import base

#: backend name -> (module, class, extra to install, default model file name)
REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "onnxruntime": (
        "polyserve_worker.backends.onnxruntime",
        "OnnxRuntimeBackend",
        "onnx",
        "model.onnx",
    ),
}

#: Triton platform names -> backend names.
PLATFORMS: dict[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
}

#: Backends that exist in Triton but not (yet) here: a clear answer instead of a guess.
KNOWN_ELSEWHERE = {
    "pytorch_libtorch": "pytorch",
    "pytorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow": "tensorflow",
    "tensorrt_plan": "tensorrt",
    "tensorrt": "tensorrt",
    "openvino": "openvino",
    "python": "python",
}

_loaded: dict[str, base.Backend] = {}


def resolve_name(
    config: Any, version_dir: Path | None, extra: Mapping[str, base.Backend] | None = None
) -> str:
    """The backend a config asks for, or the one its model file implies."""
    name = config.backend or PLATFORMS.get(config.platform, config.platform)
    if extra and name in extra:
        return str(name)
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
        return str(name)
    if version_dir is not None:
        for backend_name, (_, _, _, filename) in REGISTRY.items():
            if (version_dir / filename).exists():
                return backend_name
    raise errors.ModelLoadError(
        f"model '{config.name}': cannot tell its framework; set 'backend' in its config "
        f"(one of {', '.join(sorted(REGISTRY))}) or name the file "
        f"{' or '.join(v[3] for v in REGISTRY.values())}"
    )


def get(name: str, extra: Mapping[str, base.Backend] | None = None) -> base.Backend:
    """The backend object for ``name``, importing its framework on first use.

    ``extra`` adds backends that are not in the registry (tests inject honest fakes here).
    """
    if extra and name in extra:
        return extra[name]
    if name in _loaded:
        return _loaded[name]
    module_name, class_name, extra_name, _ = REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise errors.ModelLoadError(
            f"backend '{name}' cannot be imported ({exc}): pip install 'polyserve[{extra_name}]'"
        ) from exc
    backend: base.Backend = getattr(module, class_name)()
    _loaded[name] = backend
    return backend

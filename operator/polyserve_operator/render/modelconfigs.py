"""Worker model configurations: the spec's embedded config, completed for its hardware.

The worker owns the schema (``polyserve_worker.config``); this module only fills in what the
operator knows better than the user: the model's name, the worker backend ``hardware.backend``
means for the model's format on its pool (``engines``: ``auto`` is the fastest), its Triton
platform, the instance kind of the pool with an instance group on every GPU of the pod (as
Triton places them), where engines built at load are cached, and the Triton ensemble of an
InferenceEnsemble. Pure functions.
"""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import urlsplit

from polyserve_operator import api
from polyserve_operator.render import engines
from polyserve_worker import backends as worker_backends
from polyserve_worker import config as worker_config
from polyserve_worker.backends import configs as backend_configs

#: Where the worker container mounts the engine cache volume (``engine_cache`` parameter).
ENGINE_CACHE_DIR = "/var/cache/polyserve/engines"


def chosen_backend(spec: api.InferenceModelSpec) -> str:
    """The worker backend that serves the model: what ``status.backend`` says. For ``auto``,
    the fastest that loads the format on the pool and carries its tensors. A spec that
    admission refuses (no backend loads its format on its pool) still renders, with its
    format's own backend, so ``polyserve render`` can show it."""
    hw, fmt = spec.hardware, spec.model_format.name
    chosen = engines.choose(hw.backend, fmt, hw.pool, strings=has_strings(spec))
    if chosen is not None:
        return chosen
    return next(n for n, i in worker_backends.REGISTRY.items() if i.formats[0] == fmt)


def has_strings(spec: api.InferenceModelSpec) -> bool:
    """Whether the model's config lists a string (BYTES) tensor."""
    config = spec.config
    tensors = [*(config.input or []), *(config.output or [])] if config is not None else []
    return any(t.data_type == "TYPE_STRING" for t in tensors)


def gpu_count(hw: api.Hardware) -> int:
    """GPUs each pod gets (0 off the gpu pool)."""
    if hw.pool != "gpu":
        return 0
    return hw.gpu.count if hw.gpu is not None else 1


def builds_engines(spec: api.InferenceModelSpec) -> bool:
    """Whether the worker builds engines at load that are worth keeping: TensorRT from an
    ONNX file, or ONNX Runtime's TensorRT provider (fp16 on a GPU)."""
    backend = chosen_backend(spec)
    if backend == "tensorrt":
        return spec.model_format.name != "tensorrt"
    return (
        backend == "onnxruntime"
        and spec.hardware.pool == "gpu"
        and (spec.hardware.precision == "fp16")
    )


def for_model(name: str, spec: api.InferenceModelSpec) -> worker_config.ModelConfigSpec:
    """The complete worker config of one InferenceModel, named ``name``."""
    base = spec.config or worker_config.ModelConfigSpec()
    backend = chosen_backend(spec)
    update: dict[str, Any] = {"name": name, "backend": base.backend or backend}
    platform = _platform(backend, spec.model_format.name)
    if base.platform is None and platform is not None:
        update["platform"] = platform
    update["instance_group"] = _instance_groups(base.instance_group, spec.hardware)
    filename = artifact_filename(spec.artifact.uri)
    if base.default_model_filename is None and filename is not None:
        # The fetch keeps a single file's name; tell the worker which file is the model.
        update["default_model_filename"] = filename
    params = dict(base.parameters or {})
    if spec.hardware.precision != "fp32":
        params.setdefault("precision", spec.hardware.precision)
    if builds_engines(spec):
        params.setdefault(backend_configs.ENGINE_CACHE, ENGINE_CACHE_DIR)
    if params != (base.parameters or {}):
        update["parameters"] = params
    return base.model_copy(update=update)


def _platform(backend: str, model_format: str) -> str | None:
    """Triton's platform string when the backend serves its own format and Triton names a
    platform for it (onnxruntime_onnx, tensorrt_plan, ...; OpenVINO has only a backend)."""
    info = worker_backends.REGISTRY[backend]
    if model_format != info.formats[0] or info.platform == backend:
        return None
    return info.platform


def _instance_groups(
    groups: list[worker_config.InstanceGroup] | None, hw: api.Hardware
) -> list[worker_config.InstanceGroup]:
    """The pool's device kind by default; on a pod with several GPUs, GPU instances on every
    one of them (``gpus: [0..N-1]``, the devices the pod sees), as Triton places a group
    that names no GPUs. A group that names its GPUs keeps them."""
    count = gpu_count(hw)
    every = list(range(count)) if count > 1 else None
    if groups is None:
        if hw.pool == "gpu":
            return [worker_config.InstanceGroup(kind="KIND_GPU", count=1, gpus=every)]
        return [worker_config.InstanceGroup(kind="KIND_CPU", count=1)]
    return [
        g.model_copy(update={"gpus": every}) if g.kind == "KIND_GPU" and g.gpus is None else g
        for g in groups
    ]


#: Suffixes of single-file model artifacts (a directory, such as a SavedModel, has none).
MODEL_FILE_SUFFIXES = (".onnx", ".pt", ".pt2", ".plan", ".engine")


def artifact_filename(uri: str) -> str | None:
    """The file name a single-file artifact will have in the version directory."""
    name = posixpath.basename(urlsplit(uri).path.rstrip("/"))
    return name if name.endswith(MODEL_FILE_SUFFIXES) else None


def tensor_name(source: str, exported: dict[tuple[str, str], str]) -> str:
    """The ensemble-internal tensor for a wiring source (an input name or STEP.OUTPUT)."""
    if "." in source:
        step, output = source.split(".", 1)
        return exported.get((step, output), f"{step}.{output}")
    return source


def for_ensemble(name: str, spec: api.InferenceEnsembleSpec) -> worker_config.ModelConfigSpec:
    """The Triton ensemble config that wires the members in-process."""
    # A step output that the ensemble returns is named after the ensemble output, so that
    # one model output maps to one tensor even when later steps also consume it.
    exported = {
        (step.name, output): target
        for step in spec.steps
        for output, target in (step.outputs or {}).items()
    }
    consumed: dict[str, set[str]] = {}
    for step in spec.steps:
        for source in step.inputs.values():
            if "." in source:
                producer, output = source.split(".", 1)
                consumed.setdefault(producer, set()).add(output)
    steps = []
    for step in spec.steps:
        output_map = {
            out: tensor_name(f"{step.name}.{out}", exported)
            for out in sorted(consumed.get(step.name, set()))
        }
        output_map.update(step.outputs or {})
        steps.append(
            worker_config.EnsembleStep(
                model_name=step.model_ref,
                input_map={k: tensor_name(v, exported) for k, v in step.inputs.items()},
                output_map=output_map,
            )
        )
    return worker_config.ModelConfigSpec(
        name=name,
        platform="ensemble",
        max_batch_size=spec.max_batch_size,
        input=spec.inputs,
        output=spec.outputs,
        ensemble_scheduling=worker_config.EnsembleScheduling(step=steps),
    )

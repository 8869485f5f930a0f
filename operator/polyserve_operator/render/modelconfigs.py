"""Worker model configurations: the spec's embedded config, completed for its hardware.

The worker owns the schema (``polyserve_worker.config``); this module only fills in what the
operator knows better than the user: the model's name, the backend/platform that matches
``hardware.backend``, the instance kind of the pool, and the Triton ensemble of an
InferenceEnsemble. Pure functions.
"""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import urlsplit

from polyserve_operator import api
from polyserve_worker import config as worker_config

# hardware.backend -> (Triton backend, Triton platform)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime_onnx"),
    "onnxruntime-cuda": ("onnxruntime", "onnxruntime_onnx"),
    "openvino": ("openvino", None),
    "tensorrt": ("tensorrt", "tensorrt_plan"),
    "pytorch-cuda": ("pytorch", "pytorch_libtorch"),
}


def for_model(name: str, spec: api.InferenceModelSpec) -> worker_config.ModelConfigSpec:
    """The complete worker config of one InferenceModel, named ``name``."""
    base = spec.config or worker_config.ModelConfigSpec()
    backend, platform = BACKENDS[spec.hardware.backend]
    update: dict[str, Any] = {"name": name, "backend": base.backend or backend}
    if base.platform is None and platform is not None:
        update["platform"] = platform
    if base.instance_group is None:
        group = (
            worker_config.InstanceGroup(kind="KIND_GPU", count=1)
            if spec.hardware.pool == "gpu"
            else worker_config.InstanceGroup(kind="KIND_CPU", count=1)
        )
        update["instance_group"] = [group]
    filename = artifact_filename(spec.artifact.uri)
    if base.default_model_filename is None and filename is not None:
        # The fetch keeps a single file's name; tell the worker which file is the model.
        update["default_model_filename"] = filename
    if spec.hardware.precision != "fp32":
        params = dict(base.parameters or {})
        params.setdefault("precision", spec.hardware.precision)
        update["parameters"] = params
    return base.model_copy(update=update)


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

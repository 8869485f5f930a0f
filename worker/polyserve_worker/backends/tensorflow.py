"""TensorFlow backend: SavedModel directories (``model.savedmodel/``) through one signature.

The only module that imports tensorflow. The signature is chosen by the ``signature``
parameter (default ``serving_default``, as TF Serving); its keyword inputs and named
outputs are the model's tensors, so the config is completed from it, names sorted. On GPU
instances memory growth is turned on before TensorFlow touches a card, so one model does
not take a whole GPU from the others. TensorFlow's thread pools are per process: the
``intra_op_thread_count`` / ``inter_op_thread_count`` parameters of the first TensorFlow
model loaded set them (unset: the container's CPUs, ``cpus``), and a later model asking for
other counts is told it cannot. A SavedModel is the ``model.savedmodel`` directory, or the
version directory itself when its ``saved_model.pb`` lies there (a fetched SavedModel
directory).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyserve_worker import cpus, errors
from polyserve_worker.backends import base, configs
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
#: The file that marks a SavedModel directory.
SAVED_MODEL_FILE = "saved_model.pb"

# tf.DType.name is numpy's name, plus TensorFlow's string tensors.
_TF_TYPES = {**configs.DTYPE_NAMES, "string": "TYPE_STRING"}

_setup_lock = threading.Lock()
_threads: tuple[int, int] | None = None  # the process's (intra, inter) once TF has them


def _tf() -> Any:
    try:
        import tensorflow
    except ImportError as exc:
        raise errors.ModelLoadError(
            "TensorFlow is not installed in this worker: pip install 'polyserve[tensorflow]'"
        ) from exc
    return tensorflow


def _setup(tf: Any, config: Any) -> None:
    """Process-wide settings, applied before TensorFlow initialises its runtime."""
    global _threads
    asked = (
        configs.int_param(config, ("intra_op_thread_count",), 0),
        configs.int_param(config, ("inter_op_thread_count",), 0),
    )
    with _setup_lock:
        if _threads is None:
            # Grow GPU memory on demand instead of reserving every card at start.
            for gpu in tf.config.list_physical_devices("GPU"):
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:  # something in this process initialised the GPUs first
                    logger.warning("TensorFlow GPUs were initialised already: memory growth off")
            # Unset counts follow the container's CPUs: TensorFlow's own default is the
            # node's cores, however few of them the container's CPU limit lets it use.
            cores = cpus.available()
            chosen = (asked[0] or cores, asked[1] or cores)
            try:
                tf.config.threading.set_intra_op_parallelism_threads(chosen[0])
                tf.config.threading.set_inter_op_parallelism_threads(chosen[1])
            except RuntimeError as exc:
                if asked != (0, 0):
                    raise errors.ModelLoadError(
                        f"model '{config.name}': TensorFlow ran in this process before its "
                        f"thread counts could be set: {exc}"
                    ) from exc
                logger.warning("TensorFlow ran before its thread counts could be set: %s", exc)
                chosen = (
                    tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads(),
                )
            _threads = chosen
            logger.info(
                "TensorFlow threads: %d intra-op, %d inter-op (0 = TensorFlow decides)", *chosen
            )
        elif any(a and a != t for a, t in zip(asked, _threads, strict=True)):
            raise errors.ModelLoadError(
                f"model '{config.name}': TensorFlow thread counts are per process and were "
                f"already set to intra {_threads[0]}, inter {_threads[1]} by the first "
                "TensorFlow model; give every TensorFlow model the same counts or none"
            )


def _signature(tf: Any, config: Any, model_path: Path) -> tuple[Any, Any]:
    """(the loaded SavedModel, the signature the config names): the model must stay alive."""
    name = configs.parameters(config).get("signature", DEFAULT_SIGNATURE)
    if model_path.name == SAVED_MODEL_FILE:  # the SavedModel's own files in the version dir
        model_path = model_path.parent
    try:
        loaded = tf.saved_model.load(str(model_path))
    except Exception as exc:
        raise errors.ModelLoadError(
            f"model '{config.name}': TensorFlow cannot load the SavedModel {model_path}: {exc}"
        ) from exc
    signatures = loaded.signatures
    if name not in signatures:
        raise errors.ModelLoadError(
            f"model '{config.name}': the SavedModel has no signature '{name}'; it has "
            f"{', '.join(sorted(signatures)) or 'none'} (choose one with the 'signature' "
            "parameter)"
        )
    return loaded, signatures[name]


def _specs(signature: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _, inputs = signature.structured_input_signature
    outputs = signature.structured_outputs
    if not isinstance(outputs, Mapping):
        raise errors.ModelLoadError("a serving signature returns a dict of named tensors")
    return dict(sorted(inputs.items())), dict(sorted(outputs.items()))


def _type(name: str, spec: Any) -> str:
    try:
        return _TF_TYPES[spec.dtype.name]
    except KeyError:
        raise errors.ModelLoadError(
            f"tensor '{name}' has type {spec.dtype.name}, which the protocol cannot carry"
        ) from None


def _shape(spec: Any) -> list[int | None]:
    if spec.shape.rank is None:
        raise errors.ModelLoadError(f"tensor '{spec.name}' has unknown rank; set its dims")
    return [d if d is None else int(d) for d in spec.shape.as_list()]


class TensorFlowBackend:
    name = "tensorflow"
    default_filename = "model.savedmodel"

    def complete_config(self, config: Any, model_path: Path) -> None:
        tf = _tf()
        _setup(tf, config)
        _, signature = _signature(tf, config, model_path)
        inputs, outputs = _specs(signature)
        batched = configs.autocomplete_batching(
            config, [_shape(spec) for spec in (*inputs.values(), *outputs.values())]
        )
        if not config.input:
            for name, spec in inputs.items():
                configs.fill(config.input.add(), name, _type(name, spec), _shape(spec), batched)
        if not config.output:
            for name, spec in outputs.items():
                configs.fill(config.output.add(), name, _type(name, spec), _shape(spec), batched)
        for kind, listed, known in (
            ("input", config.input, inputs),
            ("output", config.output, outputs),
        ):
            unknown = [t.name for t in listed if t.name not in known]
            if unknown:
                raise errors.ModelLoadError(
                    f"model '{config.name}': {kind}s {unknown} are not in the signature, "
                    f"which has {sorted(known)}"
                )

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        return await asyncio.to_thread(TensorFlowInstance, config, model_path, instance)


class TensorFlowInstance(base.BlockingInstance):
    def __init__(self, config: Any, model_path: Path, instance: base.InstanceSpec) -> None:
        super().__init__(config.name, batched=config.max_batch_size > 0)
        tf = self._tf = _tf()
        _setup(tf, config)
        self._device = _device(tf, config, instance)
        with tf.device(self._device):
            self._model, self._signature = _signature(tf, config, model_path)
        inputs, outputs = _specs(self._signature)
        self._input_types = {name: spec.dtype for name, spec in inputs.items()}
        self._outputs = list(outputs)
        logger.info(
            "model '%s' instance %s: TensorFlow %s on %s",
            config.name,
            instance.name,
            tf.__version__,
            self._device,
        )

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> base.Outputs:
        tf = self._tf
        with tf.device(self._device):
            feed = {
                name: tf.constant(array, dtype=self._input_types[name])
                for name, array in inputs.items()
                if name in self._input_types
            }
            produced = self._signature(**feed)
        wanted = list(outputs) or self._outputs
        return {name: produced[name].numpy() for name in wanted}

    def release(self) -> None:
        del self._signature
        del self._model


def _device(tf: Any, config: Any, instance: base.InstanceSpec) -> str:
    if instance.kind != "KIND_GPU":
        return "/CPU:0"
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise errors.ModelLoadError(
            f"model '{config.name}': instance_group KIND_GPU needs a GPU, but TensorFlow "
            f"{tf.__version__} sees none: install 'polyserve[tensorflow-gpu]' on a node with "
            "an NVIDIA GPU, or use KIND_CPU"
        )
    if instance.device_id >= len(gpus):
        raise errors.ModelLoadError(
            f"model '{config.name}': GPU {instance.device_id} does not exist ({len(gpus)} visible)"
        )
    return f"/GPU:{instance.device_id}"

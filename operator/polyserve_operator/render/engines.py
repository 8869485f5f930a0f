"""``hardware.backend``: which worker backend each value means, where it runs, what it loads.

The facts come from the worker's backend registry (``polyserve_worker.backends``: the model
formats each backend loads, the device kinds it runs, which is fastest): this module only
maps the API's words onto them. A pool is a device kind (xeon: KIND_CPU; gpu: KIND_GPU on
NVIDIA cards); a value names a worker backend and, for the ``-cuda`` spellings kept from
before every backend ran on both pools, the pool it needs. ``auto`` is the fastest backend
the registry knows for the model's format on the pool (among those that carry string
tensors, when the model's config lists some: OpenVINO does not). The CEL rules (``rules``), the
webhook (``validating``) and the rendered configs (``modelconfigs``) all read this one
table. Pure data and functions.
"""

from __future__ import annotations

from polyserve_worker import backends as registry

AUTO = "auto"

#: Pool -> the instance kind its nodes offer (gpu pools are NVIDIA nodes).
POOL_KINDS = {"xeon": "KIND_CPU", "gpu": "KIND_GPU"}
POOLS = tuple(POOL_KINDS)

#: ``hardware.backend`` -> (worker backend, the pool it needs; None: the pool decides).
VALUES: dict[str, tuple[str, str | None]] = {
    "onnxruntime": ("onnxruntime", None),
    "openvino": ("openvino", None),
    "pytorch": ("pytorch", None),
    "tensorflow": ("tensorflow", None),
    "tensorrt": ("tensorrt", None),
    "onnxruntime-cuda": ("onnxruntime", "gpu"),
    "pytorch-cuda": ("pytorch", "gpu"),
}

#: Model formats the InferenceModel API accepts (the worker registry's, in its order).
FORMATS = tuple(registry.FORMATS)


def worker_backend(value: str) -> str:
    """The worker backend a (non-auto) value names."""
    return VALUES[value][0]


def runs_on(value: str, pool: str) -> bool:
    """Whether a value runs on the pool: its backend runs the pool's instance kind (on
    NVIDIA GPUs for gpu) and the value does not need the other pool."""
    if value == AUTO:
        return True
    backend, needs = VALUES[value]
    return needs in (None, pool) and registry.runs_on(backend, POOL_KINDS[pool])


def loads(value: str, model_format: str) -> bool:
    """Whether a value's backend loads the format (auto loads what some backend does)."""
    return value == AUTO or registry.loads(worker_backend(value), model_format)


def values_on(pool: str) -> tuple[str, ...]:
    """Every value that runs on the pool, auto included, in the API's order."""
    return tuple(v for v in (*VALUES, AUTO) if runs_on(v, pool))


def values_loading(model_format: str) -> tuple[str, ...]:
    """Every non-auto value whose backend loads the format."""
    return tuple(v for v in VALUES if loads(v, model_format))


def formats_on(pool: str) -> tuple[str, ...]:
    """The formats some backend loads on the pool (what auto can serve there)."""
    return tuple(f for f in FORMATS if fastest(f, pool) is not None)


def fastest(model_format: str, pool: str, strings: bool = False) -> str | None:
    """The worker backend ``auto`` picks for the format on the pool (one that carries
    string tensors when the model has some), if any."""
    return registry.fastest(model_format, POOL_KINDS[pool], strings=strings)


def choose(value: str, model_format: str | None, pool: str, strings: bool = False) -> str | None:
    """The worker backend a value means for a model of ``model_format`` on ``pool``; for
    auto without a format (an ensemble's own hardware), or with none that fits, None."""
    if value != AUTO:
        return worker_backend(value)
    if model_format is None:
        return None
    return fastest(model_format, pool, strings) or fastest(model_format, pool)

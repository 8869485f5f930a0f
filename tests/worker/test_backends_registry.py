"""The backend registry: the one table of formats, devices, precisions and parameters.

What ``auto`` picks, which files mean which format, and the parameter and precision checks
every backend shares are read from this table without importing a framework; a real worker
shows the checks refuse a model at load with the fix while the others serve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from polyserve_worker import backends, errors
from polyserve_worker import config as model_config
from tests.worker import framework_models
from tests.worker.conftest import StartWorker


@pytest.mark.parametrize(
    ("model_format", "kind", "expected"),
    [
        ("onnx", "KIND_GPU", "tensorrt"),
        ("onnx", "KIND_CPU", "openvino"),
        ("openvino", "KIND_CPU", "openvino"),
        ("openvino", "KIND_GPU", None),  # OpenVINO's GPU plugin drives Intel GPUs only
        ("tensorrt", "KIND_GPU", "tensorrt"),
        ("tensorrt", "KIND_CPU", None),
        ("pytorch", "KIND_CPU", "pytorch"),
        ("pytorch", "KIND_GPU", "pytorch"),
        ("tensorflow", "KIND_CPU", "tensorflow"),
        ("tensorflow", "KIND_GPU", "tensorflow"),
    ],
)
def test_auto_picks_the_fastest_backend_that_loads_the_format_on_the_device(
    model_format: str, kind: str, expected: str | None
) -> None:
    assert backends.fastest(model_format, kind) == expected


def test_a_model_with_string_tensors_gets_the_fastest_backend_that_carries_strings() -> None:
    assert backends.fastest("onnx", "KIND_CPU", strings=True) == "onnxruntime"
    assert backends.fastest("onnx", "KIND_GPU", strings=True) == "onnxruntime"
    assert backends.fastest("pytorch", "KIND_CPU", strings=True) is None


def test_every_backend_is_ranked_on_every_kind_and_loads_its_own_format() -> None:
    for kind in backends.KINDS:
        assert sorted(backends.FASTEST[kind]) == sorted(backends.REGISTRY)
    for name, info in backends.REGISTRY.items():
        assert set(info.formats) <= set(backends.FORMATS)
        assert backends.format_of(info.filename) == info.formats[0], name


def test_onnx_files_load_on_onnxruntime_openvino_and_tensorrt() -> None:
    assert [n for n in backends.REGISTRY if backends.loads(n, "onnx")] == [
        "onnxruntime",
        "openvino",
        "tensorrt",
    ]
    assert backends.format_of("resnet50.onnx") == "onnx"
    assert backends.format_of("saved_model.pb") == "tensorflow"
    assert backends.format_of("bert.engine") == "tensorrt"
    assert backends.format_of("weights.bin") is None


def test_a_built_engines_precision_cannot_be_changed_but_an_onnx_build_can() -> None:
    with pytest.raises(errors.ModelLoadError, match="fixed when it was built"):
        backends.check_precision("tensorrt", "fp16", ["KIND_GPU"], "m", "model.plan")
    backends.check_precision("tensorrt", "fp16", ["KIND_GPU"], "m", "model.onnx")
    with pytest.raises(errors.ModelLoadError, match="cannot run precision int8 on KIND_GPU"):
        backends.check_precision("tensorrt", "int8", ["KIND_GPU"], "m", "model.onnx")


@pytest.mark.parametrize(
    ("backend", "parameters", "problem"),
    [
        ("onnxruntime", "{intra_op_thread_count: -2}", "must be >= 0"),
        ("onnxruntime", "{inter_op_thread_count: many}", "must be an integer"),
        ("pytorch", "{INTRA_OP_THREAD_COUNT: -1}", "must be >= 0"),
        ("openvino", "{PERFORMANCE_HINT: FAST}", "must be one of LATENCY, THROUGHPUT"),
    ],
)
def test_parameters_a_backend_reads_are_checked_from_the_table(
    backend: str, parameters: str, problem: str
) -> None:
    config = model_config.parse_yaml(f"name: m\nparameters: {parameters}\n")
    with pytest.raises(errors.ModelLoadError, match=problem):
        backends.check_parameters(backend, config)


def test_a_negative_thread_count_fails_its_onnx_model_at_load_and_the_rest_serve(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    for name in ("good", "negative"):
        framework_models.onnx_mlp(tmp_path / name / "1" / "model.onnx")
    (tmp_path / "negative" / "config.yaml").write_text("parameters: {intra_op_thread_count: -1}\n")
    worker = start_worker(tmp_path, strict_readiness=False)
    client = httpclient.InferenceServerClient(worker.http)
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert "intra_op_thread_count must be >= 0, got -1" in index["negative"]["reason"]
    x = np.ones((2, 8), dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [2, 8], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("good", [inp]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(result, framework_models.reference(x), rtol=1e-5, atol=1e-5)

"""The OpenVINO backend: IR and ONNX, FP32 and BF16, infer-request pools, both protocols."""

from __future__ import annotations

import concurrent.futures
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.worker import framework_models
from tests.worker.conftest import RunningWorker, StartWorker, WorkerThread, settings_for

ov = framework_models.require("openvino", "openvino")


def _typed_model(path: Path, element: str, numpy_type: type) -> None:
    """out = x * 2 in one element type, shape [batch, 2]."""
    import openvino.opset13 as ops

    x = ops.parameter([-1, 2], getattr(ov.Type, element), name="x")
    two = ops.convert(ops.constant(np.array([2.0], dtype=np.float32)), element)
    model = ov.Model([ops.multiply(x, two)], [x], f"double_{element}")
    model.outputs[0].get_tensor().set_names({"out"})
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)


@pytest.fixture(scope="module")
def ov_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ov")
    onnx_file = root / ".source" / "model.onnx"
    framework_models.onnx_mlp(onnx_file)
    framework_models.openvino_mlp(root / "ir" / "1" / "model.xml", onnx_file)
    shutil.copytree(root / "ir", root / "ir_bf16")
    (root / "ir_bf16" / "config.yaml").write_text("parameters: {precision: bf16}\n")
    shutil.copytree(root / "ir", root / "streams")
    (root / "streams" / "config.yaml").write_text(
        "max_batch_size: 8\ndynamic_batching: {max_queue_delay_microseconds: 2000}\n"
        "parameters: {PERFORMANCE_HINT: THROUGHPUT, NUM_STREAMS: '2', "
        "INFERENCE_NUM_THREADS: '2'}\n"
    )
    (root / "from_onnx" / "1").mkdir(parents=True)
    shutil.copy(onnx_file, root / "from_onnx" / "1" / "model.onnx")
    (root / "from_onnx" / "config.yaml").write_text(
        "backend: openvino\ndefault_model_filename: model.onnx\n"
    )
    _typed_model(root / "fp16" / "1" / "model.xml", "f16", np.float16)
    _typed_model(root / "bf16" / "1" / "model.xml", "bf16", ml_dtypes.bfloat16)
    # Models that must fail to load, each for its own reason, beside the ones that serve.
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.xml").write_text("<net><layers>")
    (root / "corrupt" / "1" / "model.bin").write_bytes(b"")
    for name, config in (
        ("fp16_cpu", "parameters: {precision: fp16}\n"),
        ("hint", "parameters: {PERFORMANCE_HINT: FASTEST}\n"),
        ("gpu", "instance_group: [{kind: KIND_GPU}]\n"),
    ):
        shutil.copytree(root / "ir", root / name, ignore=shutil.ignore_patterns("config.*"))
        (root / name / "config.yaml").write_text(config)
    return root


@pytest.fixture(scope="module")
def served(ov_repo: Path) -> Iterator[RunningWorker]:
    thread = WorkerThread(settings_for(ov_repo, strict_readiness=False))
    yield thread.start()
    thread.stop()


def _infer(worker: RunningWorker, model: str, x: np.ndarray, grpc: bool = False) -> np.ndarray:
    module = grpcclient if grpc else httpclient
    client = module.InferenceServerClient(worker.grpc if grpc else worker.http)
    datatype = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}[str(x.dtype)]
    name = "INPUT0" if datatype == "FP32" else "x"
    inp = module.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp]).as_numpy("OUTPUT0" if datatype == "FP32" else "out")
    assert result is not None
    return result


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)


def test_ir_and_onnx_serve_over_http_and_grpc_with_configs_from_the_file(
    served: RunningWorker,
) -> None:
    config = httpclient.InferenceServerClient(served.http).get_model_config("ir")
    assert config["backend"] == "openvino"
    assert config["max_batch_size"] == 4
    assert [(t["name"], t["dims"]) for t in config["input"]] == [("INPUT0", [8])]
    x = _x(3)
    for model in ("ir", "from_onnx"):
        for grpc in (False, True):
            np.testing.assert_allclose(
                _infer(served, model, x, grpc), framework_models.reference(x), rtol=1e-5, atol=1e-5
            )


def test_bf16_runs_in_bf16_on_this_cpu_and_answers_fp32(served: RunningWorker) -> None:
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has neither AVX512_BF16 nor AMX")
    x = _x(4)
    bf16 = _infer(served, "ir_bf16", x)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, framework_models.reference(x), rtol=0.05, atol=0.05)
    assert not np.array_equal(bf16, _infer(served, "ir", x))


def test_each_instance_says_which_precision_and_how_many_requests_it_runs(
    ov_repo: Path, tmp_path: Path, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(ov_repo / "ir", tmp_path / "ir")
    shutil.copytree(ov_repo / "ir_bf16", tmp_path / "ir_bf16")
    shutil.copytree(ov_repo / "streams", tmp_path / "streams")
    with caplog.at_level(logging.INFO, logger="polyserve_worker.backends.openvino"):
        start_worker(tmp_path)
    lines = [r.getMessage() for r in caplog.records if "OpenVINO CPU runs" in r.getMessage()]
    assert any(line.startswith("model 'ir' ") and "runs f32 (asked f32" in line for line in lines)
    bf16_capable = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    expected = "runs bf16 (asked bf16" if bf16_capable else "runs f32 (asked bf16"
    assert any(line.startswith("model 'ir_bf16' ") and expected in line for line in lines)
    # One infer request per stream: the parts of a batch run at once.
    assert any(
        line.startswith("model 'streams' ")
        and "THROUGHPUT hint, 2 streams, 2 infer requests" in line
        for line in lines
    )


def test_throughput_streams_overlap_the_parts_of_a_batch_and_keep_rows_apart(
    served: RunningWorker,
) -> None:
    inputs = [_x(1 + seed % 3, seed) for seed in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda x: _infer(served, "streams", x, grpc=True), inputs))
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(answer, framework_models.reference(x), rtol=1e-5, atol=1e-5)


def test_fp16_and_bf16_tensors_round_trip(served: RunningWorker) -> None:
    half = np.array([[1.5, -2.0], [3.0, 0.25]], dtype=np.float16)
    np.testing.assert_array_equal(_infer(served, "fp16", half), half * 2)
    brain = np.array([[1.5, -2.0]], dtype=ml_dtypes.bfloat16)
    for grpc in (False, True):
        out = _infer(served, "bf16", brain, grpc)
        np.testing.assert_array_equal(out.astype(np.float32), brain.astype(np.float32) * 2)


def test_broken_openvino_models_fail_alone_and_say_why(served: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(served.http)
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["ir"]["state"] == "READY"
    assert "OpenVINO cannot read" in index["corrupt"]["reason"]
    reason = index["fp16_cpu"]["reason"]
    assert "cannot run precision fp16 on KIND_CPU" in reason
    assert "openvino: KIND_CPU bf16/fp32" in reason
    assert "PERFORMANCE_HINT must be one of LATENCY, THROUGHPUT" in index["hint"]["reason"]
    if not any(d.startswith("GPU") for d in ov.Core().available_devices):
        assert "needs OpenVINO's GPU plugin" in index["gpu"]["reason"]

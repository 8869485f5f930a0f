"""The TensorRT backend, and ONNX Runtime's CUDA and TensorRT providers: GPU paths.

The GPU tests build engines from the ONNX perceptron with TensorRT's own builder (and let
the backend build and cache one from ONNX) and run only where ``nvidia-smi`` and the
``tensorrt`` package exist; everywhere else they skip and say so. How an ONNX file's
optimization profile and cache path are chosen runs everywhere. Without TensorRT, a
``tensorrt_plan`` model fails with install advice while the rest of the repository serves:
that runs on every machine that lacks TensorRT.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from polyserve_worker import config as model_config
from polyserve_worker import errors
from polyserve_worker.backends import tensorrt
from tests.worker import framework_models
from tests.worker.conftest import RunningWorker, StartWorker

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = shutil.which("nvidia-smi") is not None

needs_tensorrt_gpu = pytest.mark.skipif(
    not (HAS_TENSORRT and HAS_GPU),
    reason=(
        "needs an NVIDIA GPU (nvidia-smi) and TensorRT (pip install polyserve[tensorrt]); "
        f"here: nvidia-smi {'found' if HAS_GPU else 'missing'}, "
        f"tensorrt {'installed' if HAS_TENSORRT else 'missing'}"
    ),
)


def _index(worker: RunningWorker) -> dict[str, dict[str, str]]:
    rows = httpclient.InferenceServerClient(worker.http).get_model_repository_index()
    return {row["name"]: row for row in rows}


def _infer(worker: RunningWorker, model: str, x: np.ndarray, grpc: bool) -> np.ndarray:
    module: Any = grpcclient if grpc else httpclient
    client = module.InferenceServerClient(worker.grpc if grpc else worker.http)
    inp = module.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp]).as_numpy("OUTPUT0")
    assert result is not None
    return result


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; the GPU tests cover it")
def test_a_missing_framework_fails_its_model_with_install_advice_and_the_rest_serve(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    framework_models.onnx_mlp(tmp_path / "onnx" / "1" / "model.onnx")
    (tmp_path / "engine" / "1").mkdir(parents=True)
    (tmp_path / "engine" / "1" / "model.plan").write_bytes(b"an engine from elsewhere")
    (tmp_path / "engine" / "config.pbtxt").write_text('platform: "tensorrt_plan"\n')
    worker = start_worker(tmp_path, strict_readiness=False)
    index = _index(worker)
    assert index["engine"]["state"] == "UNAVAILABLE"
    assert "pip install 'polyserve[tensorrt]'" in index["engine"]["reason"]
    x = np.ones((2, 8), dtype=np.float32)
    for grpc in (False, True):
        np.testing.assert_allclose(
            _infer(worker, "onnx", x, grpc), framework_models.reference(x), rtol=1e-5, atol=1e-5
        )


def _engine(onnx_file: Path, plan: Path, fp16: bool = False) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_file.read_bytes()), [
        parser.get_error(i) for i in range(parser.num_errors)
    ]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("INPUT0", (1, 8), (4, 8), (8, 8))
    config.add_optimization_profile(profile)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(bytes(serialized))


@pytest.mark.gpu
@needs_tensorrt_gpu
def test_engines_serve_with_configs_read_from_the_engine(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    onnx_file = tmp_path / ".source" / "model.onnx"
    framework_models.onnx_mlp(onnx_file)
    _engine(onnx_file, tmp_path / "fp32" / "1" / "model.plan")
    _engine(onnx_file, tmp_path / "fp16" / "1" / "model.plan", fp16=True)
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "model.plan").write_bytes(b"not an engine")
    shutil.copytree(tmp_path / "fp32", tmp_path / "on_cpu")
    (tmp_path / "on_cpu" / "config.yaml").write_text("instance_group: [{kind: KIND_CPU}]\n")
    worker = start_worker(tmp_path, strict_readiness=False)
    index = _index(worker)
    assert "TensorRT cannot deserialize" in index["corrupt"]["reason"]
    assert "run only on NVIDIA GPUs" in index["on_cpu"]["reason"]
    config = httpclient.InferenceServerClient(worker.http).get_model_config("fp32")
    assert config["backend"] == "tensorrt"
    assert config["max_batch_size"] == 8  # the profile's largest batch
    assert config["instance_group"][0]["kind"] == "KIND_GPU"
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [8])
    ]
    rng = np.random.default_rng(5)
    for model, tolerance in (("fp32", 1e-3), ("fp16", 2e-2)):
        for grpc in (False, True):
            x = rng.standard_normal((3, 8)).astype(np.float32)
            np.testing.assert_allclose(
                _infer(worker, model, x, grpc),
                framework_models.reference(x),
                rtol=tolerance,
                atol=tolerance,
            )
    inputs = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: _infer(worker, "fp32", x, True), inputs))
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(answer, framework_models.reference(x), rtol=1e-3, atol=1e-3)


def _ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


@pytest.mark.gpu
@pytest.mark.skipif(
    not (HAS_GPU and "CUDAExecutionProvider" in _ort_providers()),
    reason="needs an NVIDIA GPU and onnxruntime-gpu (pip install polyserve[onnx-gpu])",
)
def test_onnx_runtime_runs_on_cuda_and_on_tensorrt_in_fp16(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    framework_models.onnx_mlp(tmp_path / "cuda" / "1" / "model.onnx")
    (tmp_path / "cuda" / "config.yaml").write_text("instance_group: [{kind: KIND_GPU}]\n")
    framework_models.onnx_mlp(tmp_path / "trt16" / "1" / "model.onnx")
    (tmp_path / "trt16" / "config.yaml").write_text(
        "instance_group: [{kind: KIND_GPU}]\nparameters: {precision: fp16}\n"
    )
    worker = start_worker(tmp_path, strict_readiness=False)
    x = np.random.default_rng(6).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(
        _infer(worker, "cuda", x, True), framework_models.reference(x), rtol=1e-3, atol=1e-3
    )
    if "TensorrtExecutionProvider" in _ort_providers():
        np.testing.assert_allclose(
            _infer(worker, "trt16", x, False), framework_models.reference(x), rtol=2e-2, atol=2e-2
        )
    else:
        assert "TensorRT execution provider" in _index(worker)["trt16"]["reason"]


def _config(text: str) -> Any:
    return model_config.parse_yaml("name: m\n" + text)


def test_an_onnx_file_is_built_for_batches_up_to_max_batch_size_tuned_for_the_largest() -> None:
    inputs = [("INPUT0", [-1, 8])]
    profile = tensorrt.build_profile(_config(""), inputs, [[-1, 4]])
    assert profile == {"INPUT0": ((1, 8), (4, 8), (4, 8))}  # Triton's default batch of 4
    profile = tensorrt.build_profile(
        _config("max_batch_size: 16\ninput: [{name: INPUT0, data_type: TYPE_FP32, dims: [8]}]"),
        inputs,
        [[-1, 4]],
    )
    assert profile == {"INPUT0": ((1, 8), (16, 8), (16, 8))}


def test_other_dynamic_dims_take_the_configs_sizes_or_the_load_says_which_to_give() -> None:
    inputs = [("tokens", [-1, -1])]
    listed = _config(
        "max_batch_size: 8\ninput: [{name: tokens, data_type: TYPE_INT64, dims: [128]}]"
    )
    assert tensorrt.build_profile(listed, inputs, [[-1, 2]]) == {
        "tokens": ((1, 128), (8, 128), (8, 128))
    }
    with pytest.raises(errors.ModelLoadError, match="'tokens' has a dynamic dimension 1"):
        tensorrt.build_profile(_config(""), inputs, [[-1, 2]])


def test_engines_are_cached_by_gpu_product_tensorrt_version_precision_and_onnx_digest(
    tmp_path: Path,
) -> None:
    profile = {"INPUT0": ((1, 8), (4, 8), (4, 8))}
    path = tensorrt.cache_path(tmp_path, "NVIDIA H200", "10.3.0", "fp16", "ab" * 32, profile)
    assert path.parent == tmp_path / "NVIDIA-H200" / "10.3.0" / "fp16"
    assert path.name.startswith("ab" * 32 + "-") and path.suffix == ".plan"
    other = {"INPUT0": ((1, 8), (8, 8), (8, 8))}
    assert tensorrt.cache_path(tmp_path, "NVIDIA H200", "10.3.0", "fp16", "ab" * 32, other) != path


@pytest.mark.gpu
@needs_tensorrt_gpu
def test_an_onnx_model_on_tensorrt_is_built_once_and_a_restart_loads_the_cached_engine(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    framework_models.onnx_mlp(repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.yaml").write_text(
        f"backend: tensorrt\nparameters: {{precision: fp16, engine_cache: {cache}}}\n"
    )
    worker = start_worker(repo)
    config = httpclient.InferenceServerClient(worker.http).get_model_config("mlp")
    assert (config["backend"], config["max_batch_size"]) == ("tensorrt", 4)
    x = np.random.default_rng(8).standard_normal((3, 8)).astype(np.float32)
    for grpc in (False, True):
        np.testing.assert_allclose(
            _infer(worker, "mlp", x, grpc), framework_models.reference(x), rtol=2e-2, atol=2e-2
        )
    (plan,) = cache.glob("*/*/fp16/*.plan")
    built = plan.stat().st_mtime_ns
    restarted = start_worker(repo)
    np.testing.assert_allclose(
        _infer(restarted, "mlp", x, True), framework_models.reference(x), rtol=2e-2, atol=2e-2
    )
    assert plan.stat().st_mtime_ns == built, "the restart rebuilt the engine"

"""The PyTorch backend: TorchScript and torch.export models served through both protocols."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.worker import framework_models
from tests.worker.conftest import RunningWorker, StartWorker, WorkerThread, settings_for

torch = framework_models.require("torch", "torch")

MLP_CONFIG = """\
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 8 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
"""


def _script(path: Path, module: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(path))


class Difference(torch.nn.Module):
    def forward(
        self, minuend: torch.Tensor, subtrahend: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return minuend - subtrahend, minuend * 2


class Halves(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"doubled": x * 2, "halved": x / 2}


@pytest.fixture(scope="module")
def torch_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("torch")
    framework_models.torchscript_mlp(root / "mlp" / "1" / "model.pt")
    (root / "mlp" / "config.pbtxt").write_text(MLP_CONFIG)
    framework_models.torch_export_mlp(root / "exported" / "1" / "model.pt2")
    # No config at all: the file name says PyTorch, the program says the rest.
    framework_models.torchscript_mlp(root / "mlp_bf16" / "1" / "model.pt")
    (root / "mlp_bf16" / "config.pbtxt").write_text(
        MLP_CONFIG + 'parameters { key: "precision" value: { string_value: "bf16" } }\n'
    )
    _script(root / "by_name" / "1" / "model.pt", Difference())
    # Listed out of order and without positions: they bind to forward's argument names.
    (root / "by_name" / "config.yaml").write_text(
        "backend: pytorch\nmax_batch_size: 4\n"
        "input:\n"
        "  - {name: subtrahend, data_type: TYPE_FP16, dims: [3]}\n"
        "  - {name: minuend, data_type: TYPE_FP16, dims: [3]}\n"
        "output:\n"
        "  - {name: difference, data_type: TYPE_FP16, dims: [3]}\n"
        "  - {name: twice, data_type: TYPE_FP16, dims: [3]}\n"
    )
    _script(root / "keyed" / "1" / "model.pt", Halves())
    (root / "keyed" / "config.yaml").write_text(
        "backend: pytorch\nmax_batch_size: 4\n"
        "input: [{name: x, data_type: TYPE_BF16, dims: [2]}]\n"
        "output:\n"
        "  - {name: halved, data_type: TYPE_BF16, dims: [2]}\n"
        "  - {name: doubled, data_type: TYPE_BF16, dims: [2]}\n"
    )
    # Models that must fail to load, each for its own reason, beside the ones that serve.
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.pt").write_bytes(b"not a torchscript archive")
    (root / "corrupt" / "config.pbtxt").write_text(MLP_CONFIG)
    framework_models.torchscript_mlp(root / "untyped" / "1" / "model.pt")
    framework_models.torchscript_mlp(root / "text" / "1" / "model.pt")
    (root / "text" / "config.pbtxt").write_text(
        MLP_CONFIG.replace("TYPE_FP32 dims: [ 8 ]", "TYPE_STRING dims: [ 8 ]")
    )
    framework_models.torchscript_mlp(root / "int8" / "1" / "model.pt")
    (root / "int8" / "config.pbtxt").write_text(
        MLP_CONFIG + 'parameters { key: "precision" value: { string_value: "int8" } }\n'
    )
    framework_models.torchscript_mlp(root / "gpu" / "1" / "model.pt")
    (root / "gpu" / "config.pbtxt").write_text(MLP_CONFIG.replace("KIND_CPU", "KIND_GPU"))
    return root


@pytest.fixture(scope="module")
def served(torch_repo: Path) -> Iterator[RunningWorker]:
    """One worker for the module: loading torch models once keeps these tests quick."""
    thread = WorkerThread(settings_for(torch_repo, strict_readiness=False))
    yield thread.start()
    thread.stop()


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)


def _http(worker: RunningWorker, model: str, name: str, x: np.ndarray, out: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(worker.http)
    inp = httpclient.InferInput(name, list(x.shape), _datatype(x))
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp]).as_numpy(out)
    assert result is not None
    return result


def _grpc(worker: RunningWorker, model: str, name: str, x: np.ndarray, out: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(worker.grpc)
    inp = grpcclient.InferInput(name, list(x.shape), _datatype(x))
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp]).as_numpy(out)
    assert result is not None
    return result


def _datatype(x: np.ndarray) -> str:
    return {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}[str(x.dtype)]


def test_torchscript_serves_over_http_and_grpc(served: RunningWorker) -> None:
    x = _x(3)
    expected = framework_models.reference(x)
    for call in (_http, _grpc):
        np.testing.assert_allclose(
            call(served, "mlp", "INPUT__0", x, "OUTPUT__0"), expected, rtol=1e-5, atol=1e-5
        )


def test_concurrent_torchscript_requests_are_batched_and_answered_correctly(
    served: RunningWorker,
) -> None:
    inputs = [_x(1, seed) for seed in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: _grpc(served, "mlp", "INPUT__0", x, "OUTPUT__0"), inputs))
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(answer, framework_models.reference(x), rtol=1e-5, atol=1e-5)
    stats = httpclient.InferenceServerClient(served.http).get_inference_statistics("mlp")
    assert stats["model_stats"][0]["inference_count"] >= 16


def test_torch_export_program_completes_its_config_from_the_file(served: RunningWorker) -> None:
    config = httpclient.InferenceServerClient(served.http).get_model_config("exported")
    assert config["backend"] == "pytorch"
    assert config["max_batch_size"] == 4
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT__0", "TYPE_FP32", [8])
    ]
    assert [(t["name"], t["dims"]) for t in config["output"]] == [("OUTPUT__0", [4])]
    x = _x(2)
    for call in (_http, _grpc):
        np.testing.assert_allclose(
            call(served, "exported", "INPUT__0", x, "OUTPUT__0"),
            framework_models.reference(x),
            rtol=1e-5,
            atol=1e-5,
        )


def test_bf16_precision_computes_in_bf16_and_answers_in_the_config_type(
    served: RunningWorker,
) -> None:
    x = _x(4)
    answer = _http(served, "mlp_bf16", "INPUT__0", x, "OUTPUT__0")
    assert answer.dtype == np.float32
    np.testing.assert_allclose(answer, framework_models.reference(x), rtol=0.05, atol=0.05)
    assert not np.array_equal(answer, _http(served, "mlp", "INPUT__0", x, "OUTPUT__0"))


def test_inputs_named_like_forward_arguments_bind_by_name_in_fp16(served: RunningWorker) -> None:
    minuend = np.array([[5.0, 6.0, 7.0]], dtype=np.float16)
    subtrahend = np.array([[1.0, 2.0, 3.0]], dtype=np.float16)
    client = grpcclient.InferenceServerClient(served.grpc)
    feeds = []
    for name, value in (("minuend", minuend), ("subtrahend", subtrahend)):
        inp = grpcclient.InferInput(name, [1, 3], "FP16")
        inp.set_data_from_numpy(value)
        feeds.append(inp)
    result = client.infer("by_name", feeds)
    np.testing.assert_array_equal(result.as_numpy("difference"), minuend - subtrahend)
    np.testing.assert_array_equal(result.as_numpy("twice"), minuend * 2)


def test_a_dict_returning_model_binds_outputs_by_key_in_bf16(served: RunningWorker) -> None:
    import ml_dtypes

    x = np.array([[1.0, 4.0], [-2.0, 8.0]], dtype=ml_dtypes.bfloat16)
    client = httpclient.InferenceServerClient(served.http)
    inp = httpclient.InferInput("x", [2, 2], "BF16")
    inp.set_data_from_numpy(x, binary_data=True)
    outs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("halved", "doubled")]
    result = client.infer("keyed", [inp], outputs=outs)
    np.testing.assert_array_equal(result.as_numpy("halved").astype(np.float32), x / 2)
    np.testing.assert_array_equal(result.as_numpy("doubled").astype(np.float32), x * 2)


def _index(worker: RunningWorker) -> dict[str, dict[str, str]]:
    rows = httpclient.InferenceServerClient(worker.http).get_model_repository_index()
    return {row["name"]: row for row in rows}


def test_broken_torch_models_fail_alone_and_say_why(served: RunningWorker) -> None:
    index = _index(served)
    assert index["mlp"]["state"] == "READY"
    assert "PyTorch cannot load" in index["corrupt"]["reason"]
    assert "list every input and output" in index["untyped"]["reason"]
    assert "cannot hold strings" in index["text"]["reason"]
    assert "cannot run precision int8 on KIND_CPU" in index["int8"]["reason"]
    with pytest.raises(InferenceServerException, match="not ready"):
        _http(served, "corrupt", "INPUT__0", _x(1), "OUTPUT__0")


def _has_cuda() -> bool:
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_has_cuda(), reason="checks the error on a machine without CUDA")
def test_a_gpu_instance_without_cuda_fails_with_a_clear_error(served: RunningWorker) -> None:
    assert "KIND_GPU needs CUDA" in _index(served)["gpu"]["reason"]


@pytest.mark.gpu
@pytest.mark.skipif(
    not (_has_cuda() and shutil.which("nvidia-smi")),
    reason="needs an NVIDIA GPU (nvidia-smi) and a CUDA build of torch",
)
def test_gpu_instances_serve_in_fp32_and_fp16(tmp_path: Path, start_worker: StartWorker) -> None:
    subprocess.run(["nvidia-smi", "-L"], check=True)
    for name, extra in (
        ("fp32", ""),
        ("fp16", 'parameters { key: "precision" value: { string_value: "fp16" } }\n'),
    ):
        framework_models.torchscript_mlp(tmp_path / name / "1" / "model.pt")
        (tmp_path / name / "config.pbtxt").write_text(
            MLP_CONFIG.replace("KIND_CPU", "KIND_GPU") + extra
        )
    worker = start_worker(tmp_path)
    x = _x(4)
    for name, tolerance in (("fp32", 1e-4), ("fp16", 1e-2)):
        np.testing.assert_allclose(
            _grpc(worker, name, "INPUT__0", x, "OUTPUT__0"),
            framework_models.reference(x),
            rtol=tolerance,
            atol=tolerance,
        )

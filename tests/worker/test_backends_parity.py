"""One network in every CPU format, served side by side by one worker, answers the same.

The same two-layer perceptron (``framework_models``) as ONNX (ONNX Runtime), TorchScript and
torch.export (PyTorch), SavedModel (TensorFlow) and IR (OpenVINO); each is served with a
dynamic batcher and without batching, and every answer over HTTP and gRPC, for one sample,
several samples and concurrent single requests, must match the numpy reference.
"""

from __future__ import annotations

import concurrent.futures
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.worker import framework_models
from tests.worker.conftest import RunningWorker, WorkerThread, settings_for

for _framework in ("torch", "tensorflow", "openvino"):
    framework_models.require(_framework, _framework)

#: model -> (model file, backend, input name, output name)
FORMATS = {
    "onnx": ("model.onnx", "onnxruntime", "INPUT0", "OUTPUT0"),
    "torchscript": ("model.pt", "pytorch", "INPUT__0", "OUTPUT__0"),
    "torch_export": ("model.pt2", "pytorch", "INPUT__0", "OUTPUT__0"),
    "savedmodel": ("model.savedmodel", "tensorflow", "x", "y"),
    "openvino": ("model.xml", "openvino", "INPUT0", "OUTPUT0"),
}

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _config(name: str, batched: bool) -> str:
    filename, backend, input_name, output_name = FORMATS[name]
    dims, out_dims = ("[8]", "[4]") if batched else ("[-1, 8]", "[-1, 4]")
    lines = [
        f"backend: {backend}",
        f"default_model_filename: {filename}",
        f"max_batch_size: {8 if batched else 0}",
        f"input: [{{name: {input_name}, data_type: TYPE_FP32, dims: {dims}}}]",
        f"output: [{{name: {output_name}, data_type: TYPE_FP32, dims: {out_dims}}}]",
        "instance_group: [{kind: KIND_CPU, count: 1}]",
    ]
    if batched:
        lines.append("dynamic_batching: {max_queue_delay_microseconds: 3000}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def parity_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parity")
    source = root / ".source"
    framework_models.onnx_mlp(source / "model.onnx")
    framework_models.torchscript_mlp(source / "model.pt")
    framework_models.torch_export_mlp(source / "model.pt2")
    framework_models.savedmodel_mlp(source / "model.savedmodel")
    framework_models.openvino_mlp(source / "model.xml", source / "model.onnx")
    for name, (filename, *_) in FORMATS.items():
        for batched in (True, False):
            model = name if batched else f"{name}_unbatched"
            version = root / model / "1"
            version.mkdir(parents=True)
            for path in source.glob(filename.replace(".xml", ".*")):
                (version / path.name).symlink_to(path, target_is_directory=path.is_dir())
            (root / model / "config.yaml").write_text(_config(name, batched))
    return root


@pytest.fixture(scope="module")
def served(parity_repo: Path) -> Iterator[RunningWorker]:
    thread = WorkerThread(settings_for(parity_repo))
    yield thread.start()
    thread.stop()


def _infer(worker: RunningWorker, model: str, x: np.ndarray, protocol: str) -> np.ndarray:
    _, _, input_name, output_name = FORMATS[model.removesuffix("_unbatched")]
    if protocol == "grpc":
        gclient = grpcclient.InferenceServerClient(worker.grpc)
        ginp = grpcclient.InferInput(input_name, list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        result = gclient.infer(model, [ginp]).as_numpy(output_name)
    else:
        binary = protocol == "http-binary"
        client = httpclient.InferenceServerClient(worker.http)
        inp = httpclient.InferInput(input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput(output_name, binary_data=binary)
        result = client.infer(model, [inp], outputs=[out]).as_numpy(output_name)
    assert result is not None
    return result


MODELS = [m for name in FORMATS for m in (name, f"{name}_unbatched")]


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
def test_every_format_returns_the_reference_outputs(served: RunningWorker, protocol: str) -> None:
    rng = np.random.default_rng(11)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        expected = framework_models.reference(x)
        answers = {model: _infer(served, model, x, protocol) for model in MODELS}
        for model, answer in answers.items():
            assert answer.shape == expected.shape, model
            np.testing.assert_allclose(answer, expected, **TOLERANCE, err_msg=model)


def test_concurrent_requests_batched_by_the_server_match_across_formats(
    served: RunningWorker,
) -> None:
    rng = np.random.default_rng(12)
    inputs = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(8)]
    jobs = [(model, i) for model in FORMATS for i in range(len(inputs))]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: _infer(served, job[0], inputs[job[1]], "grpc"), jobs))
    for (model, i), answer in zip(jobs, answers, strict=True):
        np.testing.assert_allclose(
            answer, framework_models.reference(inputs[i]), **TOLERANCE, err_msg=model
        )
    stats = httpclient.InferenceServerClient(served.http).get_inference_statistics()
    for row in stats["model_stats"]:
        if row["name"] in FORMATS:
            assert row["execution_count"] <= row["inference_count"], row["name"]


def test_every_format_reports_the_same_metrics(served: RunningWorker) -> None:
    x = np.ones((2, 8), dtype=np.float32)
    for model in FORMATS:
        _infer(served, model, x, "http-binary")
    with urllib.request.urlopen(served.metrics, timeout=5) as response:
        text = response.read().decode()
    samples = {
        (family.name if family.type == "counter" else s.name, s.labels.get("model")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "le" not in s.labels
    }
    for model in FORMATS:
        assert samples[("nv_inference_request_success", model)] >= 1, model
        assert samples[("nv_inference_count", model)] >= 2, model
        assert samples[("nv_inference_compute_infer_duration_us", model)] > 0, model
        assert samples[("nv_inference_request_failure", model)] == 0, model

"""The TensorFlow backend: SavedModel signatures served through both protocols."""

from __future__ import annotations

import concurrent.futures
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.worker import framework_models
from tests.worker.conftest import RunningWorker, StartWorker, WorkerThread, settings_for

tf = framework_models.require("tensorflow", "tensorflow")


def _savedmodel(path: Path) -> None:
    """One SavedModel, three signatures: text and numbers, FP16, BF16."""

    class Tagger(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 3], tf.float32, name="values"),
                tf.TensorSpec([None, 2], tf.string, name="words"),
            ]
        )
        def serve(self, values: Any, words: Any) -> dict[str, Any]:
            return {
                "scaled": values * 3.0,
                "shout": tf.strings.upper(words, encoding="utf-8"),
                "total": tf.reduce_sum(values, axis=1, keepdims=True),
            }

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float16, name="half")])
        def halves(self, half: Any) -> dict[str, Any]:
            return {"out": half / 2}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.bfloat16, name="brain")])
        def brains(self, brain: Any) -> dict[str, Any]:
            return {"out": brain * 2}

    module = Tagger()
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.serve,
            "halves": module.halves,
            "brains": module.brains,
        },
    )


@pytest.fixture(scope="module")
def tf_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf")
    source = root / ".source"
    _savedmodel(source)
    for name, config in (
        ("tagger", "max_batch_size: 8\ndynamic_batching: {max_queue_delay_microseconds: 2000}\n"),
        ("halves", "max_batch_size: 4\nparameters: {signature: halves}\n"),
        ("brains", "max_batch_size: 4\nparameters: {signature: brains}\n"),
        ("autocomplete", None),
    ):
        shutil.copytree(source, root / name / "1" / "model.savedmodel")
        if config is not None:
            (root / name / "config.yaml").write_text(config)
    framework_models.savedmodel_mlp(root / "mlp" / "1" / "model.savedmodel")
    # A SavedModel directory fetched as an artifact: its own files in the version directory.
    framework_models.savedmodel_mlp(root / "fetched" / "1")
    # Models that must fail to load, each for its own reason, beside the ones that serve.
    for name, config in (
        ("unsigned", "parameters: {signature: predict}\n"),
        ("bf16", "parameters: {precision: bf16}\n"),
        ("gpu", "instance_group: [{kind: KIND_GPU}]\n"),
    ):
        shutil.copytree(root / "mlp", root / name)
        (root / name / "config.yaml").write_text(config)
    (root / "corrupt" / "1" / "model.savedmodel").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"junk")
    (root / "corrupt" / "config.yaml").write_text("backend: tensorflow\n")
    return root


@pytest.fixture(scope="module")
def served(tf_repo: Path) -> Iterator[RunningWorker]:
    """One worker for the module: TensorFlow loads once for every test here."""
    thread = WorkerThread(settings_for(tf_repo, strict_readiness=False))
    yield thread.start()
    thread.stop()


def test_a_savedmodel_without_config_is_completed_from_its_signature(
    served: RunningWorker,
) -> None:
    config = httpclient.InferenceServerClient(served.http).get_model_config("autocomplete")
    assert config["backend"] == "tensorflow"
    assert config["max_batch_size"] == 4
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("values", "TYPE_FP32", [3]),
        ("words", "TYPE_STRING", [2]),
    ]
    assert [t["name"] for t in config["output"]] == ["scaled", "shout", "total"]


def _tagger_inputs(module: Any, batch: int) -> tuple[list[Any], np.ndarray, np.ndarray]:
    values = np.arange(batch * 3, dtype=np.float32).reshape(batch, 3)
    words = np.array([[b"hi", "ünï".encode()]] * batch, dtype=object)
    a = module.InferInput("values", list(values.shape), "FP32")
    a.set_data_from_numpy(values)
    b = module.InferInput("words", list(words.shape), "BYTES")
    b.set_data_from_numpy(words)
    return [a, b], values, words


def test_numbers_and_text_serve_over_http_and_grpc(served: RunningWorker) -> None:
    for module, client in (
        (httpclient, httpclient.InferenceServerClient(served.http)),
        (grpcclient, grpcclient.InferenceServerClient(served.grpc)),
    ):
        feeds, values, _ = _tagger_inputs(module, 2)
        result = client.infer("tagger", feeds)
        np.testing.assert_array_equal(result.as_numpy("scaled"), values * 3)
        np.testing.assert_array_equal(result.as_numpy("total"), values.sum(1, keepdims=True))
        shout = [bytes(x) for x in result.as_numpy("shout").reshape(-1)]
        assert shout == [b"HI", "ÜNÏ".encode()] * 2


def test_concurrent_requests_batch_and_each_gets_its_own_rows(served: RunningWorker) -> None:
    client = grpcclient.InferenceServerClient(served.grpc)

    def call(seed: int) -> tuple[np.ndarray, np.ndarray]:
        values = np.full((1, 3), seed, dtype=np.float32)
        words = np.array([[str(seed).encode(), b"x"]], dtype=object)
        a = grpcclient.InferInput("values", [1, 3], "FP32")
        a.set_data_from_numpy(values)
        b = grpcclient.InferInput("words", [1, 2], "BYTES")
        b.set_data_from_numpy(words)
        result = client.infer("tagger", [a, b])
        return result.as_numpy("scaled"), result.as_numpy("shout")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(16)))
    for seed, (scaled, shout) in enumerate(answers):
        np.testing.assert_array_equal(scaled, np.full((1, 3), seed * 3, dtype=np.float32))
        assert bytes(shout[0, 0]) == str(seed).encode()


def test_a_named_signature_serves_fp16_and_bf16(served: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(served.http)
    half = np.array([[1, 2, 3, 4]], dtype=np.float16)
    inp = httpclient.InferInput("half", [1, 4], "FP16")
    inp.set_data_from_numpy(half)
    np.testing.assert_array_equal(client.infer("halves", [inp]).as_numpy("out"), half / 2)
    brain = np.array([[1.5, -2.0]], dtype=ml_dtypes.bfloat16)
    ginp = grpcclient.InferInput("brain", [1, 2], "BF16")
    ginp.set_data_from_numpy(brain)
    out = grpcclient.InferenceServerClient(served.grpc).infer("brains", [ginp]).as_numpy("out")
    np.testing.assert_array_equal(out.astype(np.float32), brain.astype(np.float32) * 2)


def test_the_mlp_matches_its_numpy_reference(served: RunningWorker) -> None:
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    inp = httpclient.InferInput("x", [4, 8], "FP32")
    inp.set_data_from_numpy(x)
    result = httpclient.InferenceServerClient(served.http).infer("mlp", [inp]).as_numpy("y")
    np.testing.assert_allclose(result, framework_models.reference(x), rtol=1e-5, atol=1e-5)


def test_a_savedmodels_own_files_in_the_version_directory_serve_without_a_config(
    served: RunningWorker,
) -> None:
    client = httpclient.InferenceServerClient(served.http)
    config = client.get_model_config("fetched")
    assert (config["backend"], config["default_model_filename"]) == ("tensorflow", "saved_model.pb")
    x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
    inp = httpclient.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("fetched", [inp]).as_numpy("y")
    np.testing.assert_allclose(result, framework_models.reference(x), rtol=1e-5, atol=1e-5)


def test_broken_savedmodels_fail_alone_and_say_why(served: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(served.http)
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["mlp"]["state"] == "READY"
    assert "no signature 'predict'; it has serving_default" in index["unsigned"]["reason"]
    assert "TensorFlow cannot load the SavedModel" in index["corrupt"]["reason"]
    assert "cannot run precision bf16 on KIND_CPU" in index["bf16"]["reason"]
    if not tf.config.list_physical_devices("GPU"):
        assert "KIND_GPU needs a GPU" in index["gpu"]["reason"]


@pytest.mark.gpu
@pytest.mark.skipif(
    not tf.config.list_physical_devices("GPU"),
    reason="needs a GPU that TensorFlow sees (pip install polyserve[tensorflow-gpu])",
)
def test_gpu_instances_serve_with_memory_growth(
    tf_repo: Path, tmp_path: Path, start_worker: StartWorker
) -> None:
    shutil.copytree(tf_repo / "mlp", tmp_path / "mlp")
    (tmp_path / "mlp" / "config.yaml").write_text("instance_group: [{kind: KIND_GPU}]\n")
    worker = start_worker(tmp_path)
    x = np.ones((2, 8), dtype=np.float32)
    inp = grpcclient.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(x)
    result = grpcclient.InferenceServerClient(worker.grpc).infer("mlp", [inp]).as_numpy("y")
    np.testing.assert_allclose(result, framework_models.reference(x), rtol=1e-4, atol=1e-4)
    gpu = tf.config.list_physical_devices("GPU")[0]
    assert tf.config.experimental.get_memory_growth(gpu)

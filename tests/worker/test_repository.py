"""Model repository: Triton layout, config forms, versions, control modes, load/unload."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from polyserve_worker import errors, repository
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker


def scale_infer(worker: RunningWorker, version: str = "") -> float:
    client = httpclient.InferenceServerClient(worker.http)
    inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    return float(client.infer("scale", [inp], model_version=version).as_numpy("OUTPUT0")[0, 0])


def test_latest_version_serves_by_default(tmp_path: Path, start_worker: StartWorker) -> None:
    worker = start_worker(models.scale_versions(tmp_path, {1: 1.0, 2: 2.0, 3: 3.0}))
    assert scale_infer(worker) == 3.0
    client = httpclient.InferenceServerClient(worker.http)
    assert client.get_model_metadata("scale")["versions"] == ["3"]
    assert not client.is_model_ready("scale", "1")


def test_version_policy_all_and_specific(tmp_path: Path, start_worker: StartWorker) -> None:
    worker = start_worker(models.scale_versions(tmp_path / "a", {1: 1.0, 2: 2.0}, "{all: {}}"))
    assert scale_infer(worker, "1") == 1.0 and scale_infer(worker, "2") == 2.0
    worker = start_worker(
        models.scale_versions(
            tmp_path / "b", {1: 1.0, 2: 2.0, 3: 3.0}, "{specific: {versions: [1, 3]}}"
        )
    )
    client = httpclient.InferenceServerClient(worker.http)
    assert client.get_model_metadata("scale")["versions"] == ["1", "3"]
    assert scale_infer(worker) == 3.0
    worker = start_worker(
        models.scale_versions(
            tmp_path / "c", {1: 1.0, 2: 2.0, 3: 3.0}, "{latest: {num_versions: 2}}"
        )
    )
    assert httpclient.InferenceServerClient(worker.http).get_model_metadata("scale")[
        "versions"
    ] == ["2", "3"]


def test_a_triton_repository_with_config_pbtxt_serves_unchanged(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    worker = start_worker(models.triton_repository(tmp_path))
    client = grpcclient.InferenceServerClient(worker.grpc)
    config = client.get_model_config("simple").config
    assert config.platform == "onnxruntime_onnx"
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    a = np.ones((1, 16), np.int32)
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a * 2)


def test_a_model_without_config_is_completed_from_the_model_file(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.add_sub(tmp_path / "bare" / "1" / "model.onnx")
    worker = start_worker(tmp_path)
    config = httpclient.InferenceServerClient(worker.http).get_model_config("bare")
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert [t["name"] for t in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["input"][0]["dims"] == [16]
    assert config["backend"] == "onnxruntime"


def test_a_broken_model_fails_alone_and_says_why(tmp_path: Path, start_worker: StartWorker) -> None:
    models.triton_repository(tmp_path)
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "config.pbtxt").write_text("max_batch_size: lots")
    worker = start_worker(tmp_path, strict_readiness=False)
    client = httpclient.InferenceServerClient(worker.http)
    assert client.is_model_ready("simple")
    assert not client.is_model_ready("broken")
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "ONNX Runtime" in index["broken"]["reason"]
    assert "config.pbtxt" in index["typo"]["reason"]
    with pytest.raises(InferenceServerException, match="not ready"):
        client.get_model_metadata("broken")


def test_an_unavailable_backend_names_what_to_install(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    (tmp_path / "py" / "1").mkdir(parents=True)
    (tmp_path / "py" / "config.pbtxt").write_text('backend: "python"')
    worker = start_worker(tmp_path, strict_readiness=False)
    index = httpclient.InferenceServerClient(worker.http).get_model_repository_index()
    assert "not available" in index[0]["reason"]


def test_explicit_mode_loads_and_unloads_through_both_protocols(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.triton_repository(tmp_path)
    models.scale_versions(tmp_path, {1: 2.0})
    worker = start_worker(tmp_path, model_control_mode="explicit", load_model=("simple",))
    http = httpclient.InferenceServerClient(worker.http)
    grpc = grpcclient.InferenceServerClient(worker.grpc)
    assert not http.is_model_ready("scale")
    assert {r["name"]: r.get("state") for r in http.get_model_repository_index()} == {
        "scale": None,
        "simple": "READY",
    }
    http.load_model("scale")
    assert scale_infer(worker) == 2.0
    grpc.unload_model("scale")
    assert not http.is_model_ready("scale")
    grpc.load_model("scale")
    assert http.is_model_ready("scale")
    http.unload_model("scale")
    with pytest.raises(InferenceServerException, match="no model 'ghost'"):
        http.load_model("ghost")


def test_load_with_a_config_override_replaces_the_config_on_disk(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.scale_versions(tmp_path, {1: 1.0, 2: 2.0})
    worker = start_worker(tmp_path, model_control_mode="explicit")
    client = httpclient.InferenceServerClient(worker.http)
    client.load_model(
        "scale",
        config=json.dumps({"max_batch_size": 2, "version_policy": {"specific": {"versions": [1]}}}),
    )
    assert client.get_model_config("scale")["max_batch_size"] == 2
    assert scale_infer(worker) == 1.0


def test_poll_mode_picks_up_new_changed_and_removed_models(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.scale_versions(tmp_path, {1: 1.0})
    worker = start_worker(tmp_path, model_control_mode="poll", repository_poll_secs=0.1)
    client = httpclient.InferenceServerClient(worker.http)
    assert scale_infer(worker) == 1.0
    models.scale(tmp_path / "scale" / "2" / "model.onnx", 2.0)
    models.add_sub(tmp_path / "bare" / "1" / "model.onnx")
    wait_for(lambda: client.is_model_ready("bare") and scale_infer(worker) == 2.0)
    shutil.rmtree(tmp_path / "bare")
    wait_for(lambda: not client.is_model_ready("bare"))


def wait_for(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def test_loading_and_unloading_fifty_times_keeps_memory_flat(tmp_path: Path) -> None:
    root = models.scale_versions(tmp_path, {1: 1.0})
    for n in range(8):
        models.mlp_like(root / f"big{n}" / "1" / "model.onnx")
    repo = repository.Repository(root)

    async def cycle() -> None:
        await repo.load("big0")
        await repo.unload("big0")

    for _ in range(5):  # warm the allocator and ONNX Runtime's one-time state
        await cycle()
    gc.collect()
    before = _rss_bytes()
    for _ in range(50):
        await cycle()
    # No gc.collect() here: unloading must free sessions by itself, not wait for a collection.
    growth = _rss_bytes() - before
    # One load holds ~4 MB of weights; a leak of one model per cycle would be ~200 MB.
    assert growth < 24 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB over 50 cycles"


async def test_resolve_explains_missing_and_unready_models(tmp_path: Path) -> None:
    repo = repository.Repository(models.scale_versions(tmp_path, {1: 1.0}))
    with pytest.raises(errors.NotFound):
        repo.resolve("nothing")
    with pytest.raises(errors.Unavailable, match="not loaded"):
        repo.resolve("scale")
    await repo.load("scale")
    with pytest.raises(errors.InvalidArgument, match="integer"):
        repo.resolve("scale", "latest")
    await repo.close()


def test_a_precision_the_backend_cannot_run_fails_the_load_and_lists_alternatives(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.scale_versions(tmp_path, {1: 1.0})
    (tmp_path / "scale" / "config.yaml").write_text(
        "max_batch_size: 4\nparameters: {precision: bf16}\n"
    )
    worker = start_worker(tmp_path, strict_readiness=False)
    index = httpclient.InferenceServerClient(worker.http).get_model_repository_index()
    reason = index[0]["reason"]
    assert "cannot run precision bf16 on KIND_CPU" in reason
    assert "onnxruntime: KIND_CPU fp32" in reason


def test_a_reload_keeps_serving_the_old_version_until_the_new_one_is_ready(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.scale_versions(tmp_path, {1: 1.0})
    worker = start_worker(tmp_path, model_control_mode="explicit", load_model=("scale",))
    client = httpclient.InferenceServerClient(worker.http)
    models.scale(tmp_path / "scale" / "2" / "model.onnx", 2.0)
    done = asyncio.run_coroutine_threadsafe(worker.worker.repository.load("scale"), worker.loop)
    seen = set()
    while not done.done():
        seen.add(scale_infer(worker))  # never 503 while the reload runs
    done.result(10)
    seen.add(scale_infer(worker))
    assert seen <= {1.0, 2.0} and 2.0 in seen
    assert client.get_model_metadata("scale")["versions"] == ["2"]


def test_kind_gpu_without_a_gpu_provider_fails_the_load_with_advice(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.scale_versions(tmp_path, {1: 1.0})
    (tmp_path / "scale" / "config.yaml").write_text(
        "max_batch_size: 4\ninstance_group: [{kind: KIND_GPU, count: 1}]\n"
    )
    worker = start_worker(tmp_path, strict_readiness=False)
    reason = httpclient.InferenceServerClient(worker.http).get_model_repository_index()[0]["reason"]
    assert "KIND_GPU" in reason and "polyserve[onnx-gpu]" in reason


def test_a_named_backend_finds_the_alternative_file_it_reads(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    """What the operator renders for an ONNX artifact on OpenVINO: backend openvino, model.onnx."""
    pytest.importorskip("openvino", reason="needs polyserve[openvino]")
    models.scale_versions(tmp_path, {1: 3.0})
    (tmp_path / "scale" / "config.yaml").write_text("backend: openvino\nmax_batch_size: 4\n")
    worker = start_worker(tmp_path)
    assert scale_infer(worker) == 3.0
    config = httpclient.InferenceServerClient(worker.http).get_model_config("scale")
    assert config["backend"] == "openvino"


def test_a_model_can_be_loaded_from_files_sent_with_the_request(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    models.scale(tmp_path / "upload.onnx", 5.0)
    content = (tmp_path / "upload.onnx").read_bytes()
    worker = start_worker(repo, model_control_mode="explicit")
    http = httpclient.InferenceServerClient(worker.http)
    config = json.dumps({"max_batch_size": 4, "backend": "onnxruntime"})
    with pytest.raises(InferenceServerException, match="need a 'config'"):
        http.load_model("scale", files={"file:1/model.onnx": content})
    with pytest.raises(InferenceServerException, match="<version>/<path>"):
        http.load_model("scale", config=config, files={"file:../model.onnx": content})
    http.load_model("scale", config=config, files={"file:1/model.onnx": content})
    assert scale_infer(worker) == 5.0
    grpc = grpcclient.InferenceServerClient(worker.grpc)
    models.scale(tmp_path / "upload.onnx", 7.0)
    grpc.load_model(
        "scale", config=config, files={"file:1/model.onnx": (tmp_path / "upload.onnx").read_bytes()}
    )
    assert scale_infer(worker) == 7.0
    http.unload_model("scale")
    assert not http.is_model_ready("scale")
    assert not list(Path(tempfile.gettempdir()).glob("polyserve-upload-scale-*"))


def test_an_instance_group_over_the_cap_fails_the_load_before_building_anything(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.scale_versions(tmp_path, {1: 1.0, 2: 2.0})
    worker = start_worker(tmp_path, model_control_mode="explicit", max_model_instances=8)
    client = httpclient.InferenceServerClient(worker.http)
    started = time.monotonic()
    with pytest.raises(InferenceServerException, match="--max-model-instances") as caught:
        client.load_model(
            "scale", config=json.dumps({"instance_group": [{"kind": "KIND_CPU", "count": 100000}]})
        )
    assert caught.value.status() == "400"
    assert time.monotonic() - started < 5, "no session may be built for a refused load"
    policy = {"all": {}}  # 5 instances x 2 versions = 10 > 8
    with pytest.raises(InferenceServerException, match="10 instances over 2 version"):
        client.load_model(
            "scale",
            config=json.dumps(
                {"version_policy": policy, "instance_group": [{"kind": "KIND_CPU", "count": 5}]}
            ),
        )
    client.load_model(
        "scale",
        config=json.dumps(
            {"version_policy": policy, "instance_group": [{"kind": "KIND_CPU", "count": 4}]}
        ),
    )
    assert scale_infer(worker, "2") == 2.0


@pytest.mark.parametrize("escape", ["relative", "absolute"])
def test_a_default_model_filename_outside_the_model_directory_fails_the_load(
    tmp_path: Path, start_worker: StartWorker, escape: str
) -> None:
    repo = tmp_path / "repo"
    models.scale_versions(repo, {1: 1.0})
    models.scale(tmp_path / "outside" / "model.onnx", 7.0)  # a model, but not this one's
    filename = (
        "../../../outside/model.onnx"
        if escape == "relative"
        else str(tmp_path / "outside" / "model.onnx")
    )
    worker = start_worker(repo, model_control_mode="explicit")
    client = httpclient.InferenceServerClient(worker.http)
    config = {"backend": "onnxruntime", "default_model_filename": filename}
    with pytest.raises(InferenceServerException, match="default_model_filename '") as caught:
        client.load_model("scale", config=json.dumps(config))
    assert caught.value.status() == "400"
    assert not client.is_model_ready("scale")


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        (
            {"input": [{"name": "WRONG", "data_type": "TYPE_FP32", "dims": [4]}]},
            "input 'WRONG' is not in the model file",
        ),
        (
            {"input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]}]},
            "input 'INPUT0' is TYPE_INT32 in the config but TYPE_FP32 in the model file",
        ),
        (
            {"input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [5]}]},
            "has shape [-1, 5] (with the batch dimension) in the config but [-1, 4]",
        ),
        (
            {"output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]}]},
            "output 'OUT' is not in the model file",
        ),
    ],
)
def test_a_config_whose_tensors_do_not_match_the_model_file_fails_at_load(
    tmp_path: Path, start_worker: StartWorker, tensors: dict[str, object], fragment: str
) -> None:
    models.scale_versions(tmp_path, {1: 1.0})
    worker = start_worker(tmp_path, model_control_mode="explicit")
    client = httpclient.InferenceServerClient(worker.http)
    config = {"max_batch_size": 4, **tensors}
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("scale", config=json.dumps(config))
    assert caught.value.status() == "400"
    assert fragment in str(caught.value)
    assert not client.is_model_ready("scale")

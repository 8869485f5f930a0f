"""Ensembles: in-process pipelines whose steps run through their members' own batchers."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from polyserve_worker.backends import base
from polyserve_worker.tensors import Array
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker, in_background

DIAMOND_PBTXT = """
name: "diamond"
platform: "ensemble"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "DIFF" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    { model_name: "double" model_version: -1
      input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "twice" } },
    { model_name: "triple" model_version: -1
      input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "thrice" } },
    { model_name: "addsub" model_version: -1
      input_map { key: "INPUT0" value: "twice" } input_map { key: "INPUT1" value: "thrice" }
      output_map { key: "OUTPUT0" value: "SUM" } output_map { key: "OUTPUT1" value: "DIFF" } }
  ]
}
"""

CHAIN_YAML = """
platform: ensemble
max_batch_size: 4
input: [{name: X, data_type: FP32, dims: [4]}]
output: [{name: Y, data_type: FP32, dims: [4]}]
ensemble_scheduling:
  step:
    - {model_name: double, input_map: {INPUT0: X}, output_map: {OUTPUT0: mid}}
    - {model_name: triple, input_map: {INPUT0: mid}, output_map: {OUTPUT0: Y}}
"""


def member_repo(root: Path) -> Path:
    for name, factor in (("double", 2.0), ("triple", 3.0)):
        models.scale(root / name / "1" / "model.onnx", factor)
        (root / name / "config.yaml").write_text("max_batch_size: 8\ndynamic_batching: {}\n")
    models.add_sub(root / "addsub" / "1" / "model.onnx", "FP32", width=4)
    (root / "addsub" / "config.yaml").write_text("max_batch_size: 8\n")
    return root


def ensemble_repo(root: Path) -> Path:
    member_repo(root)
    (root / "diamond").mkdir()
    (root / "diamond" / "config.pbtxt").write_text(DIAMOND_PBTXT)
    (root / "chain" / "1").mkdir(parents=True)
    (root / "chain" / "config.yaml").write_text(CHAIN_YAML)
    return root


@pytest.fixture
def served(tmp_path: Path, start_worker: StartWorker) -> RunningWorker:
    return start_worker(ensemble_repo(tmp_path))


X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]], dtype=np.float32)


def test_a_diamond_ensemble_runs_its_branches_and_joins_them(served: RunningWorker) -> None:
    http = httpclient.InferenceServerClient(served.http)
    inp = httpclient.InferInput("X", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = http.infer("diamond", [inp])
    np.testing.assert_allclose(result.as_numpy("SUM"), 5 * X)
    np.testing.assert_allclose(result.as_numpy("DIFF"), -X)
    grpc = grpcclient.InferenceServerClient(served.grpc)
    ginp = grpcclient.InferInput("X", list(X.shape), "FP32")
    ginp.set_data_from_numpy(X)
    out = grpc.infer("diamond", [ginp], outputs=[grpcclient.InferRequestedOutput("DIFF")])
    np.testing.assert_allclose(out.as_numpy("DIFF"), -X)
    assert out.as_numpy("SUM") is None


def test_a_yaml_chain_ensemble_serves_and_reports_metadata_and_stats(served: RunningWorker) -> None:
    http = httpclient.InferenceServerClient(served.http)
    inp = httpclient.InferInput("X", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    np.testing.assert_allclose(http.infer("chain", [inp]).as_numpy("Y"), 6 * X)
    meta = http.get_model_metadata("chain")
    assert meta["platform"] == "ensemble"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    config = http.get_model_config("chain")
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["double", "triple"]
    stats = http.get_inference_statistics("chain")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 1
    assert stats["inference_count"] == 2
    member = http.get_inference_statistics("double")["model_stats"][0]
    assert member["inference_count"] == 2


def test_bad_input_to_an_ensemble_is_400_like_any_model(served: RunningWorker) -> None:
    http = httpclient.InferenceServerClient(served.http)
    inp = httpclient.InferInput("X", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match=r"expects shape \[-1, 4\]") as caught:
        http.infer("chain", [inp])
    assert caught.value.status() == "400"


def test_an_ensemble_is_ready_only_while_its_members_are(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    worker = start_worker(
        ensemble_repo(tmp_path), model_control_mode="explicit", load_model=("chain",)
    )
    http = httpclient.InferenceServerClient(worker.http)
    assert http.is_model_ready("chain")
    assert http.is_model_ready("double"), "loading an ensemble loads its members"
    http.unload_model("triple")
    assert not http.is_model_ready("chain")
    inp = httpclient.InferInput("X", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException, match="member 'triple' is UNAVAILABLE"):
        http.infer("chain", [inp])
    http.load_model("triple")
    np.testing.assert_allclose(http.infer("chain", [inp]).as_numpy("Y"), 6 * X)


BROKEN = {
    "unknown": (
        "{model_name: nothing, input_map: {INPUT0: X}, output_map: {OUTPUT0: Y}}",
        "'nothing' is not in the repository",
    ),
    "unmapped": (
        "{model_name: addsub, input_map: {INPUT0: X}, output_map: {OUTPUT0: Y}}",
        "model input 'INPUT1' is not mapped",
    ),
    "dangling": (
        "{model_name: double, input_map: {INPUT0: nowhere}, output_map: {OUTPUT0: Y}}",
        "reads tensor 'nowhere'",
    ),
    "badname": (
        "{model_name: double, input_map: {IN: X}, output_map: {OUTPUT0: Y}}",
        "has no input 'IN'",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_graph_fails_to_load_naming_the_edge(
    tmp_path: Path, start_worker: StartWorker, case: str
) -> None:
    member_repo(tmp_path)
    step, fragment = BROKEN[case]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text(
        "platform: ensemble\nmax_batch_size: 4\n"
        "input: [{name: X, data_type: FP32, dims: [4]}]\n"
        "output: [{name: Y, data_type: FP32, dims: [4]}]\n"
        f"ensemble_scheduling: {{step: [{step}]}}\n"
    )
    worker = start_worker(tmp_path, strict_readiness=False)
    http = httpclient.InferenceServerClient(worker.http)
    rows = {r["name"]: r for r in http.get_model_repository_index()}
    assert rows["bad"]["state"] == "UNAVAILABLE"
    assert fragment in rows["bad"]["reason"]
    assert http.is_model_ready("double"), "the members keep serving"


def test_cycles_and_type_mismatches_are_load_errors(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    member_repo(tmp_path)
    models.identity(tmp_path / "ints" / "1" / "model.onnx", "INT32")
    head = (
        "platform: ensemble\nmax_batch_size: 4\n"
        "input: [{name: X, data_type: FP32, dims: [4]}]\n"
        "output: [{name: Y, data_type: FP32, dims: [4]}]\n"
    )
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "config.yaml").write_text(
        head + "ensemble_scheduling: {step: ["
        "{model_name: double, input_map: {INPUT0: b}, output_map: {OUTPUT0: a}},"
        "{model_name: triple, input_map: {INPUT0: a}, output_map: {OUTPUT0: b}},"
        "{model_name: double, input_map: {INPUT0: X}, output_map: {OUTPUT0: Y}}]}\n"
    )
    (tmp_path / "types").mkdir()
    (tmp_path / "types" / "config.yaml").write_text(
        head + "ensemble_scheduling: {step: ["
        "{model_name: ints, input_map: {INPUT0: X}, output_map: {OUTPUT0: Y}}]}\n"
    )
    worker = start_worker(tmp_path, strict_readiness=False)
    rows = {
        r["name"]: r
        for r in httpclient.InferenceServerClient(worker.http).get_model_repository_index()
    }
    assert "a cycle" in rows["loop"]["reason"]
    assert "TYPE_INT32" in rows["types"]["reason"] and "TYPE_FP32" in rows["types"]["reason"]


class GatedBackend:
    """Adds one to its input once the gate opens; records how many run at once."""

    name = "gated"
    default_filename = "model.txt"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.batches: list[int] = []

    def complete_config(self, config: Any, model_path: Path) -> None:
        pass

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        return GatedInstance(self, config.name)


class GatedInstance(base.BlockingInstance):
    def __init__(self, backend: GatedBackend, name: str) -> None:
        super().__init__(name, batched=True)
        self.backend = backend

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> base.Outputs:
        with self.backend.lock:
            self.backend.active += 1
            self.backend.peak = max(self.backend.peak, self.backend.active)
            self.backend.batches.append(int(inputs["INPUT0"].shape[0]))
        try:
            if not self.backend.gate.wait(30):
                raise RuntimeError("gate never opened")
            if (inputs["INPUT0"] < 0).any():
                raise ValueError("negative values are not allowed")
            return {"OUTPUT0": inputs["INPUT0"] + 1}
        finally:
            with self.backend.lock:
                self.backend.active -= 1


GATED_MEMBER = """
backend: gated
max_batch_size: 8
input: [{name: INPUT0, data_type: FP32, dims: [2]}]
output: [{name: OUTPUT0, data_type: FP32, dims: [2]}]
dynamic_batching: {}
"""

FORK = """
platform: ensemble
max_batch_size: 4
input: [{name: X, data_type: FP32, dims: [2]}]
output: [{name: A, data_type: FP32, dims: [2]}, {name: B, data_type: FP32, dims: [2]}]
ensemble_scheduling:
  step:
    - {model_name: left, input_map: {INPUT0: X}, output_map: {OUTPUT0: A}}
    - {model_name: right, input_map: {INPUT0: X}, output_map: {OUTPUT0: B}}
"""


@pytest.fixture
def gated(tmp_path: Path, start_worker: StartWorker) -> tuple[RunningWorker, GatedBackend]:
    for name in ("left", "right"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.txt").write_text("fake")
        (tmp_path / name / "config.yaml").write_text(GATED_MEMBER)
    (tmp_path / "fork").mkdir()
    (tmp_path / "fork" / "config.yaml").write_text(FORK)
    backend = GatedBackend()
    return start_worker(tmp_path, extra_backends={"gated": backend}), backend


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def fork_input(values: list[float]) -> httpclient.InferInput:
    inp = httpclient.InferInput("X", [1, 2], "FP32")
    inp.set_data_from_numpy(np.array([values], dtype=np.float32))
    return inp


def call(worker: RunningWorker, model: str, name: str, values: list[float]) -> Any:
    """A blocking infer on its own thread and client; returns a Future of the result."""

    def run() -> Any:
        inp = httpclient.InferInput(name, [1, 2], "FP32")
        inp.set_data_from_numpy(np.array([values], dtype=np.float32))
        return httpclient.InferenceServerClient(worker.http).infer(model, [inp])

    return in_background(run)


def test_independent_steps_run_concurrently(gated: tuple[RunningWorker, GatedBackend]) -> None:
    worker, backend = gated
    pending = call(worker, "fork", "X", [1.0, 2.0])
    wait_until(lambda: backend.peak == 2)
    backend.gate.set()
    result = pending.result(30)
    np.testing.assert_allclose(result.as_numpy("A"), [[2.0, 3.0]])
    np.testing.assert_allclose(result.as_numpy("B"), [[2.0, 3.0]])


def test_ensemble_traffic_batches_with_direct_traffic(
    gated: tuple[RunningWorker, GatedBackend],
) -> None:
    worker, backend = gated
    first = call(worker, "left", "INPUT0", [5.0, 6.0])
    wait_until(lambda: backend.active == 1)
    via_ensemble = call(worker, "fork", "X", [1.0, 1.0])
    second = call(worker, "left", "INPUT0", [5.0, 6.0])
    left = worker.worker.repository.resolve("left")
    wait_until(lambda: left.stats.pending == 2)
    backend.gate.set()
    for pending in (first, second, via_ensemble):
        pending.result(30)
    assert backend.batches.count(2) == 1, f"batches were {backend.batches}"


def test_a_failing_step_fails_the_request_naming_step_and_model(
    gated: tuple[RunningWorker, GatedBackend],
) -> None:
    worker, backend = gated
    backend.gate.set()
    client = httpclient.InferenceServerClient(worker.http)
    with pytest.raises(
        InferenceServerException, match=r"ensemble 'fork' step \d \(model '(left|right)'\)"
    ) as caught:
        client.infer("fork", [fork_input([-1.0, 1.0])])
    assert caught.value.status() == "500"
    assert "negative values" in str(caught.value)


def test_the_request_timeout_covers_the_whole_graph(
    gated: tuple[RunningWorker, GatedBackend],
) -> None:
    worker, backend = gated
    client = httpclient.InferenceServerClient(worker.http)
    with pytest.raises(InferenceServerException, match="did not finish within 50000 us") as caught:
        client.infer("fork", [fork_input([1.0, 1.0])], timeout=50_000)
    assert caught.value.status() == "503"
    backend.gate.set()

"""`polyserve sandbox load`: steady open-loop traffic against a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from polyserve_sandbox import load
from tests.worker import models
from tests.worker.conftest import RunningWorker, WorkerThread, settings_for


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[RunningWorker]:
    models.add_sub(tmp_path / "addsub" / "1" / "model.onnx", "FP32", width=4)
    (tmp_path / "addsub" / "config.yaml").write_text("max_batch_size: 8\n")
    models.identity(tmp_path / "flat" / "1" / "model.onnx", "INT32", batch_dim=False)
    thread = WorkerThread(settings_for(tmp_path))
    yield thread.start()
    thread.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_sends_the_rate_asked_for_and_counts_every_answer(
    worker: RunningWorker, protocol: str
) -> None:
    lines: list[str] = []
    address = worker.http if protocol == "http" else worker.grpc
    code = load.run(
        address, "addsub", rate=40, seconds=2.0, protocol=protocol, every=1.0, log=lines.append
    )
    assert code == 0, lines
    done = lines[-1]
    assert done.startswith("done: ") and "0 failed" in done and "p95" in done
    ok = int(done.split()[1])
    assert 70 <= ok <= 81, done  # 40/s for 2 s: 80 due, the last may not be sent yet
    assert any("ok/s" in line for line in lines[1:-1])


def test_load_shapes_inputs_from_metadata_of_an_unbatched_model(worker: RunningWorker) -> None:
    lines: list[str] = []
    assert load.run(worker.http, "flat", rate=20, seconds=0.5, log=lines.append) == 0, lines


def test_load_of_a_model_the_worker_does_not_have_says_what_to_do(worker: RunningWorker) -> None:
    with pytest.raises(load.LoadError, match=r"not ready.*--model"):
        load.run(worker.http, "nothing", rate=1, seconds=1)


def test_failed_requests_are_counted_with_their_words_and_exit_1(
    worker: RunningWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests the server refuses: an input the model does not have.
    monkeypatch.setattr(
        load, "inputs_of", lambda metadata, batched: [load.InputSpec("WRONG", "FP32", [1, 4])]
    )
    lines: list[str] = []
    assert load.run(worker.http, "addsub", rate=20, seconds=0.5, log=lines.append) == 1
    assert "0 ok" in lines[-2] or lines[-2].startswith("done: 0 ok"), lines
    assert "WRONG" in lines[-1] and "x InferenceServerException" in lines[-1], lines


def test_inputs_of_refuses_tensors_it_cannot_make_and_says_what_to_use() -> None:
    with pytest.raises(load.LoadError, match="perf_analyzer"):
        load.inputs_of({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1]}]}, False)
    assert load.inputs_of(
        {"inputs": [{"name": "X", "datatype": "INT64", "shape": [-1, -1, 3]}]}, True
    ) == [load.InputSpec("X", "INT64", [1, 1, 3])]

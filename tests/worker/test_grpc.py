"""The gRPC transport, driven by tritonclient.grpc."""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from polyserve_worker.transport import grpc as grpc_transport
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker


@pytest.fixture(params=["native", "aio"])
def simple(
    request: pytest.FixtureRequest, tmp_path: Path, start_worker: StartWorker
) -> RunningWorker:
    """A worker on each gRPC transport (--grpc-transport): both pass every test here."""
    return start_worker(models.triton_repository(tmp_path), grpc_transport=request.param)


def inputs_for(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("INPUT0", list(a.shape), "INT32"),
        grpcclient.InferInput("INPUT1", list(b.shape), "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def test_health_metadata_config_and_statistics(simple: RunningWorker) -> None:
    client = grpcclient.InferenceServerClient(simple.grpc)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert "statistics" in client.get_server_metadata().extensions
    meta = client.get_model_metadata("simple")
    assert meta.platform == "onnxruntime_onnx"
    assert list(meta.inputs[0].shape) == [-1, 16]
    config = client.get_model_config("simple").config
    assert config.max_batch_size == 8
    assert config.instance_group[0].count == 2
    client.infer("simple", inputs_for(np.zeros((2, 16), np.int32), np.ones((2, 16), np.int32)))
    stats = client.get_inference_statistics("simple").model_stats[0]
    assert stats.inference_count == 2
    assert stats.inference_stats.success.count == 1
    index = client.get_model_repository_index()
    assert [(m.name, m.state) for m in index.models] == [("simple", "READY")]


def test_infer_with_raw_contents_returns_sum_and_difference(simple: RunningWorker) -> None:
    client = grpcclient.InferenceServerClient(simple.grpc)
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    result = client.infer("simple", inputs_for(a, b), request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response().id == "r1"


def test_infer_with_typed_contents(simple: RunningWorker) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(simple.grpc))
    request = pb.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", list(range(16))), ("INPUT1", [2] * 16)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(values)
    response = stub.ModelInfer(request, timeout=10)
    out = np.frombuffer(response.raw_output_contents[0], dtype="<i4")
    np.testing.assert_array_equal(out, np.arange(16) + 2)


def test_stream_infer_answers_every_request_and_reports_errors_in_stream(
    simple: RunningWorker,
) -> None:
    client = grpcclient.InferenceServerClient(simple.grpc)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(5):
        a = np.full((1, 16), i, dtype=np.int32)
        client.async_stream_infer("simple", inputs_for(a, a), request_id=str(i))
    bad = grpcclient.InferInput("INPUT0", [1, 3], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.int32))
    client.async_stream_infer("simple", [bad], request_id="bad")
    got = {}
    errors = []
    for _ in range(6):
        result, error = answers.get(timeout=10)
        if error is not None:
            errors.append(str(error))
        else:
            got[result.get_response().id] = result.as_numpy("OUTPUT0")
    client.stop_stream()
    assert sorted(got) == ["0", "1", "2", "3", "4"]
    for key, value in got.items():
        np.testing.assert_array_equal(value, np.full((1, 16), 2 * int(key)))
    assert len(errors) == 1
    # Its shape is checked against the model before its data is decoded.
    assert "expects shape [-1, 16], got [1, 3]" in errors[0]


@pytest.mark.parametrize(
    ("model", "shape", "code", "fragment"),
    [
        ("nope", [1, 16], grpc.StatusCode.NOT_FOUND, "unknown model"),
        ("simple", [16], grpc.StatusCode.INVALID_ARGUMENT, "the first dimension is the batch size"),
        ("simple", [1, -1], grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    ],
)
def test_errors_carry_the_protocol_status(
    simple: RunningWorker, model: str, shape: list[int], code: grpc.StatusCode, fragment: str
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(simple.grpc))
    request = pb.ModelInferRequest(model_name=model)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=shape)
        request.raw_input_contents.append(b"\0" * 64)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == code
    assert fragment in caught.value.details()


def test_raw_contents_of_the_wrong_length_are_invalid(simple: RunningWorker) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(simple.grpc))
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(b"\0" * 10)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 64 bytes" in caught.value.details()


def test_unknown_version_is_not_found(simple: RunningWorker) -> None:
    client = grpcclient.InferenceServerClient(simple.grpc)
    with pytest.raises(InferenceServerException, match="no version 3"):
        client.get_model_metadata("simple", "3")


def test_unimplemented_rpcs_say_so(simple: RunningWorker) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(simple.grpc))
    with pytest.raises(grpc.RpcError) as caught:
        stub.LogSettings(pb.LogSettingsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "logging extension" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.TraceSetting(pb.TraceSettingRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_stream_whose_client_reads_no_answers_stops_reading_requests(
    simple: RunningWorker,
) -> None:
    """At most max_stream_in_flight requests are taken ahead of the answers the client has
    read; the rest wait in the client (HTTP/2 flow control), not in the worker."""
    servicer = grpc_transport.InferenceServicer(simple.worker.core, max_stream_in_flight=4)
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.ones(16, np.int32).tobytes())
    pulled = 0

    async def requests() -> Any:
        nonlocal pulled
        for _ in range(300):
            pulled += 1
            yield request

    async def scenario() -> tuple[int, int]:
        stream = servicer.ModelStreamInfer(requests(), None)
        await anext(stream)  # the client reads one answer, then nothing for a while
        for _ in range(500):
            await asyncio.sleep(0)
        held = pulled
        rest = [answer async for answer in stream]
        assert all(not answer.error_message for answer in rest)
        return held, 1 + len(rest)

    held, answered = simple.call(scenario())
    assert held <= 5, f"{held} requests taken while the client read no answers"
    assert answered == 300

"""The REST transport, driven by tritonclient.http and by raw HTTP for malformed input."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker

#: Each test runs on both HTTP fronts (aiohttp, httptools): they answer alike.
pytestmark = pytest.mark.http_fronts


@pytest.fixture
def simple(tmp_path: Path, start_worker: StartWorker) -> RunningWorker:
    return start_worker(models.triton_repository(tmp_path), http_max_input_size=1 << 20)


def raw(
    worker: RunningWorker,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(worker.http, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def error_of(
    worker: RunningWorker, method: str, path: str, body: bytes | None = None, **kw: Any
) -> tuple[int, str]:
    status, _, payload = raw(worker, method, path, body, **kw)
    doc = json.loads(payload)
    assert set(doc) == {"error"}, doc
    return status, doc["error"]


def simple_inputs(
    batch: int = 1, binary: bool = True
) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.ones((batch, 16), dtype=np.int32)
    inputs = [
        httpclient.InferInput("INPUT0", a.shape, "INT32"),
        httpclient.InferInput("INPUT1", b.shape, "INT32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs, a, b


def test_health_metadata_and_config_follow_the_protocol(simple: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(simple.http)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    meta = client.get_server_metadata()
    assert set(meta["extensions"]) >= {"binary_tensor_data", "model_repository", "statistics"}
    model = client.get_model_metadata("simple")
    assert model["platform"] == "onnxruntime_onnx"
    assert model["versions"] == ["1"]
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [16]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert client.get_model_metadata("simple", "1")["name"] == "simple"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_returns_sum_and_difference(simple: RunningWorker, binary: bool) -> None:
    client = httpclient.InferenceServerClient(simple.http)
    inputs, a, b = simple_inputs(batch=3, binary=binary)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")
    ]
    result = client.infer("simple", inputs, outputs=outputs, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_version"] == "1"


def test_infer_returns_only_the_requested_output(simple: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(simple.http)
    inputs, a, b = simple_inputs()
    result = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_binary_data_output_flag_makes_every_output_binary(simple: RunningWorker) -> None:
    doc = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
        ],
        "parameters": {"binary_data_output": True},
    }
    status, headers, body = raw(simple, "POST", "/v2/models/simple/infer", json.dumps(doc).encode())
    assert status == 200
    header_size = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:header_size])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [64, 64]
    first = np.frombuffer(body[header_size : header_size + 64], dtype="<i4")
    np.testing.assert_array_equal(first, np.arange(16) + 1)


def test_statistics_count_requests_and_batches(simple: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(simple.http)
    for _ in range(3):
        client.infer("simple", simple_inputs(batch=2)[0])
    stats = client.get_inference_statistics("simple")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 3
    assert stats["inference_count"] == 6
    assert stats["execution_count"] >= 1
    assert stats["last_inference"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in everything] == ["simple"]


def test_concurrent_requests_are_batched_and_split_back(simple: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(simple.http, concurrency=16)
    pending = []
    expected = []
    for i in range(32):
        a = np.full((1, 16), i, dtype=np.int32)
        b = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [
            httpclient.InferInput("INPUT0", [1, 16], "INT32"),
            httpclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        pending.append(client.async_infer("simple", inputs))
        expected.append(a + b)
    for request, want in zip(pending, expected, strict=True):
        np.testing.assert_array_equal(request.get_result().as_numpy("OUTPUT0"), want)
    client.close()


# -- error paths -------------------------------------------------------------------------


def test_unknown_model_and_version_are_404(simple: RunningWorker) -> None:
    status, message = error_of(simple, "GET", "/v2/models/nope")
    assert status == 404 and "nope" in message
    status, message = error_of(simple, "GET", "/v2/models/simple/versions/9")
    assert status == 404 and "version 9" in message
    status, message = error_of(simple, "POST", "/v2/models/nope/infer", b"{}")
    assert status == 404
    status, _ = error_of(simple, "GET", "/v2/nowhere")
    assert status == 404


def test_model_ready_of_unknown_model_is_404(simple: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(simple.http)
    assert not client.is_model_ready("nope")


def one_input(**fields: object) -> bytes:
    """An infer body with one input INPUT0 built from ``fields``."""
    return json.dumps({"inputs": [{"name": "INPUT0", **fields}]}).encode()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "'inputs'"),
        (b'{"inputs": [{"name": "INPUT0"}]}', "'shape'"),
        (
            b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32"}]}',
            "neither 'data'",
        ),
        (
            one_input(shape=[1, -16], datatype="INT32", data=[]),
            "negative",
        ),
        (
            one_input(shape=[4000000, 4000000, 4000000], datatype="INT32", data=[]),
            "more than",
        ),
        (
            one_input(shape=[1, 16], datatype="INT32", data=[1, 2]),
            "needs 16 elements",
        ),
        (
            one_input(shape=[1, 16], datatype="WAT", data=[]),
            "unknown datatype",
        ),
        (
            one_input(shape=[1, 16], datatype="INT32", data=["x"]),
            "needs 16",
        ),
    ],
)
def test_malformed_requests_get_400_with_a_reason(
    simple: RunningWorker, body: bytes, fragment: str
) -> None:
    status, message = error_of(simple, "POST", "/v2/models/simple/infer", body)
    assert status == 400
    assert fragment in message


def test_shape_mistakes_explain_the_batch_dimension(simple: RunningWorker) -> None:
    doc = {
        "inputs": [
            {"name": "INPUT0", "shape": [16], "datatype": "INT32", "data": [0] * 16},
            {"name": "INPUT1", "shape": [16], "datatype": "INT32", "data": [0] * 16},
        ]
    }
    status, message = error_of(simple, "POST", "/v2/models/simple/infer", json.dumps(doc).encode())
    assert status == 400
    assert "expects shape [-1, 16]" in message
    assert "max_batch_size 8" in message
    assert "[1, 16]" in message


def test_wrong_datatype_batch_size_and_names_are_400(simple: RunningWorker) -> None:
    def request(*inputs: dict[str, Any]) -> tuple[int, str]:
        return error_of(
            simple, "POST", "/v2/models/simple/infer", json.dumps({"inputs": list(inputs)}).encode()
        )

    good = {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}
    status, message = request(
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}, good
    )
    assert status == 400 and "expected INT32" in message
    big = {"name": "INPUT0", "shape": [9, 16], "datatype": "INT32", "data": [0] * 144}
    status, message = request(big, {**good, "shape": [9, 16], "data": [0] * 144})
    assert status == 400 and "batch size 9" in message
    status, message = request({**good, "name": "INPUT7"}, good)
    assert status == 400 and "INPUT7" in message
    status, message = request(good)
    assert status == 400 and "INPUT0" in message
    status, message = request({**good, "name": "INPUT0", "shape": [2, 16], "data": [0] * 32}, good)
    assert status == 400 and "disagree" in message


def test_truncated_binary_payload_is_400(simple: RunningWorker) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 64},
                },
                {
                    "name": "INPUT1",
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 64},
                },
            ]
        }
    ).encode()
    body = header + b"\0" * 100
    status, message = error_of(
        simple,
        "POST",
        "/v2/models/simple/infer",
        body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and "truncated" in message
    status, message = error_of(
        simple,
        "POST",
        "/v2/models/simple/infer",
        body,
        headers={"Inference-Header-Content-Length": "99999"},
    )
    assert status == 400 and "outside the body" in message


def test_unsupported_content_type_is_400(simple: RunningWorker) -> None:
    status, message = error_of(
        simple,
        "POST",
        "/v2/models/simple/infer",
        b"<xml/>",
        headers={"Content-Type": "application/xml"},
    )
    assert status == 400 and "Content-Type" in message


def test_body_over_the_limit_is_413_and_the_server_keeps_serving(simple: RunningWorker) -> None:
    status, message = error_of(simple, "POST", "/v2/models/simple/infer", b"x" * (2 << 20))
    assert status == 413 and "--http-max-input-size" in message
    client = httpclient.InferenceServerClient(simple.http)
    inputs, a, b = simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


def test_bad_requests_never_disturb_good_ones_in_flight(simple: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(simple.http, concurrency=8)
    failures: list[BaseException] = []

    def hammer() -> None:
        for body in (b"{", b"[]", b'{"inputs": 5}', b"\xff\xfe"):
            try:
                raw(simple, "POST", "/v2/models/simple/infer", body)
            except BaseException as exc:  # pragma: no cover - recorded for the assert
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    results = []
    for _ in range(20):
        inputs, a, b = simple_inputs()
        results.append((client.async_infer("simple", inputs), a + b))
    for request, want in results:
        np.testing.assert_array_equal(request.get_result().as_numpy("OUTPUT0"), want)
    for thread in threads:
        thread.join()
    assert not failures
    client.close()


def test_method_not_allowed_is_json(simple: RunningWorker) -> None:
    status, message = error_of(simple, "GET", "/v2/models/simple/infer")
    assert status == 405 and "GET" in message


def test_repository_api_is_refused_outside_explicit_mode(simple: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(simple.http)
    with pytest.raises(InferenceServerException, match="explicit"):
        client.load_model("simple")
    index = client.get_model_repository_index()
    assert index == [{"name": "simple", "version": "1", "state": "READY", "reason": ""}]


def test_a_raw_binary_request_is_one_input_of_batch_one(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.scale_versions(tmp_path, {1: 2.0})
    models.identity(tmp_path / "id_fp32" / "1" / "model.onnx", "FP32")
    models.identity(tmp_path / "id_bytes" / "1" / "model.onnx", "BYTES")
    models.triton_repository(tmp_path)
    worker = start_worker(tmp_path)
    headers = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}
    x = np.arange(4, dtype="<f4")
    status, reply_headers, body = raw(
        worker, "POST", "/v2/models/scale/infer", x.tobytes(), headers
    )
    assert status == 200
    size = int(reply_headers["Inference-Header-Content-Length"])
    header = json.loads(body[:size])
    assert header["outputs"][0]["shape"] == [1, 4]
    np.testing.assert_array_equal(np.frombuffer(body[size:], "<f4"), x * 2)
    status, reply_headers, body = raw(
        worker, "POST", "/v2/models/id_fp32/infer", np.ones(6, "<f4").tobytes(), headers
    )
    assert status == 200 and json.loads(
        body[: int(reply_headers["Inference-Header-Content-Length"])]
    )["outputs"][0]["shape"] == [1, 6]
    status, reply_headers, body = raw(
        worker, "POST", "/v2/models/id_bytes/infer", b"hello", headers
    )
    size = int(reply_headers["Inference-Header-Content-Length"])
    assert status == 200 and body[size:] == b"\x05\x00\x00\x00hello"
    status, message = error_of(
        worker, "POST", "/v2/models/simple/infer", b"\0" * 128, headers=headers
    )
    assert status == 400 and "one input" in message
    status, message = error_of(worker, "POST", "/v2/models/scale/infer", b"\0" * 6, headers=headers)
    assert status == 400 and "cannot tell a shape" in message

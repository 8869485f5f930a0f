"""What serves the gRPC port (--grpc-transport) and several processes on one port (--workers).

test_grpc.py and test_limits.py run every gRPC test on both fronts; this file covers what
only the choice itself and the scaling out add.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from polyserve_worker import main
from polyserve_worker import settings as worker_settings
from polyserve_worker.transport import grpc as grpc_transport
from tests.worker import models
from tests.worker.conftest import StartWorker


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_auto_serves_grpc_on_the_native_front_where_it_is_installed_and_aio_is_the_default(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    assert grpc_transport.native_available()
    worker = start_worker(models.triton_repository(tmp_path), grpc_transport="auto")
    assert worker.worker.grpc_transport == "native"
    aio = start_worker(models.triton_repository(tmp_path / "aio"))
    assert aio.worker.grpc_transport == "aio", "the default drains with GOAWAY"


def test_the_operator_renders_the_front_and_process_flags_as_the_worker_parses_them() -> None:
    args = worker_settings.to_args({"grpc_transport": "native", "workers": 4})
    assert args == ["--grpc-transport=native", "--workers=4"]
    parsed = worker_settings.parse(["--model-repository", "/m", *args])
    assert (parsed.grpc_transport, parsed.workers) == ("native", 4)
    with pytest.raises(ValueError):
        worker_settings.to_args({"grpc_transport": "tonic"})
    with pytest.raises(ValueError):
        worker_settings.to_args({"workers": 0})


@pytest.mark.parametrize("transport", ["native", "aio"])
def test_a_message_over_the_size_limit_is_refused_and_the_connection_keeps_serving(
    tmp_path: Path, start_worker: StartWorker, transport: str
) -> None:
    worker = start_worker(
        models.triton_repository(tmp_path),
        grpc_transport=transport,
        http_max_input_size=1 << 20,
    )
    channel = grpc.insecure_channel(worker.grpc, options=[("grpc.max_send_message_length", -1)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.ones(16, np.int32).tobytes())
    too_big = pb.ModelInferRequest()
    too_big.CopyFrom(request)
    too_big.raw_input_contents[0] = b"\0" * (2 << 20)
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(too_big, timeout=10)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    answer = stub.ModelInfer(request, timeout=10)
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], "<i4"), [2] * 16)


@pytest.mark.parametrize("transport", ["native", "aio"])
@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x3a\xff\xff" + b"\0" * (80 << 10)])
def test_garbage_instead_of_a_request_is_invalid_argument_and_the_port_keeps_serving(
    tmp_path: Path, start_worker: StartWorker, transport: str, garbage: bytes
) -> None:
    """Our own parsing (identity serializers, raw contents split off): a small and a large
    malformed message."""
    worker = start_worker(models.triton_repository(tmp_path), grpc_transport=transport)
    channel = grpc.insecure_channel(worker.grpc)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as failure:
        call(garbage, timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpcclient.InferenceServerClient(worker.grpc).is_server_ready()


def test_workers_above_one_need_fixed_ports(tmp_path: Path) -> None:
    argv = ["--model-repository", str(tmp_path), "--workers", "2", "--http-port", "0"]
    assert main.main(argv) == 2


def metrics_ports(log: Path) -> list[int]:
    return [int(port) for port in re.findall(r"metrics on (\d+)", log.read_text())]


def counts_by_worker(port: int) -> dict[str, float]:
    """nv_inference_count of the "simple" model by the ``worker`` label ("" without it)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        s.labels.get("worker", ""): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "nv_inference_count"
        for s in family.samples
        if s.labels.get("model") == "simple"
    }


def test_two_worker_processes_share_both_ports_and_stop_together(tmp_path: Path) -> None:
    repo = models.triton_repository(tmp_path / "repo")
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "polyserve_worker.main",
                "--model-repository",
                str(repo),
                "--host",
                "127.0.0.1",
                "--http-port",
                str(http),
                "--grpc-port",
                str(grpc_port),
                "--metrics-port",
                str(metrics),
                "--workers",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: len(metrics_ports(log)) == 2, "both processes to serve")
        assert metrics in metrics_ports(log)  # the first process keeps the metrics port
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.ones((1, 16), np.int32))

        served = [0]

        def both_served() -> bool:
            # Each new connection lands on either process (SO_REUSEPORT).
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                client.infer("simple", inputs)
                served[0] += 1
            except InferenceServerException as exc:
                assert "not ready (LOADING)" in str(exc)  # that process is still starting
            finally:
                client.close()
            # Each process's own count: the first's (worker="0") on the metrics port, which
            # serves both, the other's alone on its own port.
            return all(
                counts_by_worker(port).get("0" if port == metrics else "", 0) > 0
                for port in metrics_ports(log)
            )

        wait_for(both_served, "inferences on both processes")
        # The metrics port answers for the pod: both processes' samples, by process.
        (other,) = [port for port in metrics_ports(log) if port != metrics]
        pod = counts_by_worker(metrics)
        assert set(pod) == {"0", "1"}
        assert pod["1"] == counts_by_worker(other)[""], "the second process's own count"
        # The statistics extension answers for the pod, whichever process a connection reaches.
        for _ in range(6):
            by_http = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
            by_grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            for answer in (
                by_http.get_inference_statistics("simple"),
                by_grpc.get_inference_statistics("simple", as_json=True),
            ):
                (model,) = answer["model_stats"]
                success = model["inference_stats"]["success"]["count"]
                assert int(success) == served[0], answer
            by_http.close()
            by_grpc.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- large tensors: one copy fewer on the way in ---------------------------------------------

settings_profile = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

raw_requests = st.builds(
    lambda name, request_id, raws, params: _request(name, request_id, raws, params),
    st.text(max_size=20),
    st.text(max_size=10),
    st.lists(st.binary(max_size=300), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers(-(2**40), 2**40), max_size=3),
)


def _request(name: str, request_id: str, raws: list[bytes], params: dict[str, int]) -> Any:
    request = pb.ModelInferRequest(model_name=name, id=request_id)
    for index, raw in enumerate(raws):
        request.inputs.add(name=f"INPUT{index}", datatype="UINT8", shape=[1, len(raw)])
        request.raw_input_contents.append(raw)
        request.outputs.add(name=f"OUTPUT{index}")
    for key, value in params.items():
        request.parameters[key].int64_param = value
    return request


@settings_profile
@given(request=raw_requests)
def test_splitting_off_raw_contents_keeps_every_other_field(request: Any) -> None:
    rest, raw = grpc_transport.split_raw_contents(request.SerializeToString())
    assert [bytes(part) for part in raw] == list(request.raw_input_contents)
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    del expected.raw_input_contents[:]
    assert pb.ModelInferRequest.FromString(rest) == expected


@settings_profile
@given(data=st.binary(max_size=200))
def test_splitting_arbitrary_bytes_ends_in_a_result_or_a_value_error(data: bytes) -> None:
    try:
        rest, raw = grpc_transport.split_raw_contents(data)
    except ValueError:
        return
    assert len(rest) + sum(len(part) for part in raw) <= len(data)


@pytest.mark.parametrize("transport", ["native", "aio"])
def test_a_large_tensor_comes_back_intact_through_either_front(
    tmp_path: Path, start_worker: StartWorker, transport: str
) -> None:
    models.identity(tmp_path / "id_fp32" / "1" / "model.onnx", "FP32")
    worker = start_worker(tmp_path, grpc_transport=transport)
    data = np.random.default_rng(0).standard_normal((1, 150_528)).astype(np.float32)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    client = grpcclient.InferenceServerClient(worker.grpc)
    np.testing.assert_array_equal(client.infer("id_fp32", [tensor]).as_numpy("OUTPUT0"), data)


def test_a_large_binary_http_body_is_read_into_place_and_comes_back_intact(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    models.identity(tmp_path / "id_fp32" / "1" / "model.onnx", "FP32")
    worker = start_worker(tmp_path)
    data = np.random.default_rng(1).standard_normal((2, 150_528)).astype(np.float32)
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=True)
    output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
    client = httpclient.InferenceServerClient(worker.http)
    answer = client.infer("id_fp32", [tensor], outputs=[output]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(answer, data)

"""Stopping without dropping requests: what a client sees while the worker drains.

On SIGTERM the worker turns unready at once, closes its listeners, serves what still arrives
on open connections (HTTP answers say ``Connection: close``), answers what is left near the
deadline with 503/UNAVAILABLE, and exits within ``--exit-timeout-secs``. The load tests run
the worker as a process and count every request a client sent that got no answer at all.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker, in_background
from tests.worker.test_lifecycle import GATED_CONFIG, GatedBackend, start_process

#: Each test runs on both HTTP fronts (aiohttp, httptools): they answer alike.
pytestmark = pytest.mark.http_fronts

INFER_BODY = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]},
        ]
    }
).encode()


def wait_for(condition: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def gated(
    tmp_path: Path, start_worker: StartWorker
) -> Iterator[tuple[RunningWorker, GatedBackend]]:
    (tmp_path / "gated" / "1").mkdir(parents=True)
    (tmp_path / "gated" / "1" / "model.txt").write_text("fake")
    (tmp_path / "gated" / "config.yaml").write_text(GATED_CONFIG)
    backend = GatedBackend()
    worker = start_worker(
        tmp_path, extra_backends={"gated": backend}, exit_timeout_secs=10, exit_idle_secs=0.2
    )
    yield worker, backend
    backend.gate.set()  # let a held instance thread finish whatever the test did


def gated_input() -> httpclient.InferInput:
    inp = httpclient.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(np.array([[1.0, 2.0]], np.float32))
    return inp


def test_on_stop_readiness_fails_at_once_and_open_connections_are_still_served(
    gated: tuple[RunningWorker, GatedBackend],
) -> None:
    worker, backend = gated
    in_flight = in_background(
        lambda: httpclient.InferenceServerClient(worker.http).infer("gated", [gated_input()])
    )
    served = worker.worker.repository.resolve("gated")
    wait_for(lambda: served.in_flight == 1, "the request to reach the model")
    kept = http.client.HTTPConnection(worker.http, timeout=10)
    kept.request("GET", "/v2/health/ready")
    assert kept.getresponse().read() and True
    busy = http.client.HTTPConnection(worker.http, timeout=10)
    busy.request("GET", "/v2/health/live")
    busy.getresponse().read()

    stopping = asyncio.run_coroutine_threadsafe(worker.worker.stop(), worker.loop)
    wait_for(lambda: worker.worker.core.draining, "the drain to start")
    kept.request("GET", "/v2/health/ready")
    ready = kept.getresponse()
    ready.read()
    assert ready.status == 503
    assert ready.getheader("Connection") == "close", "a draining worker closes after answering"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", worker.worker.http_port), timeout=5)

    # A client that already had a connection could not have known: it is served.
    late = in_background(lambda: _post(busy, "/v2/models/gated/infer", INFER_BODY))
    wait_for(lambda: served.in_flight == 2, "the late request to reach the model")
    assert not stopping.done(), "stop must wait for the requests in flight"
    backend.gate.set()
    np.testing.assert_array_equal(in_flight.result(30).as_numpy("OUTPUT0"), [[2.0, 4.0]])
    code, headers, body = late.result(30)
    assert code == 200 and json.loads(body)["outputs"][0]["data"] == [2.0, 4.0]
    assert headers.get("Connection") == "close"
    stopping.result(30)


def _post(
    conn: http.client.HTTPConnection, path: str, body: bytes
) -> tuple[int, dict[str, str], bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_what_still_runs_at_the_exit_deadline_is_answered_and_the_stop_keeps_the_deadline(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    (tmp_path / "gated" / "1").mkdir(parents=True)
    (tmp_path / "gated" / "1" / "model.txt").write_text("fake")
    (tmp_path / "gated" / "config.yaml").write_text(GATED_CONFIG)
    backend = GatedBackend()  # never opened: the model hangs
    worker = start_worker(tmp_path, extra_backends={"gated": backend}, exit_timeout_secs=1.5)
    try:
        conn = http.client.HTTPConnection(worker.http, timeout=30)
        over_http = in_background(lambda: _post(conn, "/v2/models/gated/infer", INFER_BODY))
        grpc_client = grpcclient.InferenceServerClient(worker.grpc)
        inp = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
        inp.set_data_from_numpy(np.array([[1.0, 2.0]], np.float32))
        over_grpc = in_background(lambda: grpc_client.infer("gated", [inp], client_timeout=30))
        served = worker.worker.repository.resolve("gated")
        wait_for(lambda: served.in_flight == 2, "both requests to reach the model")
        started = time.monotonic()
        worker.call(worker.worker.stop(), timeout=30)
        took = time.monotonic() - started
        assert took < 1.5 + 0.5, f"stop took {took:.1f} s with --exit-timeout-secs 1.5"
        code, _, body = over_http.result(10)
        assert code == 503 and "shutting down" in json.loads(body)["error"]
        with pytest.raises(InferenceServerException) as failure:
            over_grpc.result(10)
        assert failure.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        backend.gate.set()


def test_an_open_stream_is_served_then_ends_with_unavailable_when_the_worker_stops(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    worker = start_worker(models.triton_repository(tmp_path), exit_timeout_secs=5)
    client = grpcclient.InferenceServerClient(worker.grpc)
    answers: list[tuple[object, object]] = []
    arrived = threading.Event()

    def collect(result: object, error: object) -> None:
        answers.append((result, error))
        arrived.set()

    client.start_stream(callback=collect)
    a = np.ones((1, 16), np.int32)
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    client.async_stream_infer("simple", inputs, request_id="before")
    assert arrived.wait(10)
    worker.call(worker.worker.stop(), timeout=30)
    client.stop_stream()
    assert answers[0][1] is None and answers[0][0].get_response().id == "before"  # type: ignore[attr-defined]
    errors = [error for _, error in answers[1:]]
    assert errors and all("UNAVAILABLE" in str(e.status()) for e in errors)  # type: ignore[attr-defined]


# -- SIGTERM under load, with the worker as a process ----------------------------------------


@dataclass
class Tally:
    """What the clients saw; ``unanswered`` is every request sent that got no answer."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] += 1


def http_client_loop(port: int, tally: Tally, stop: threading.Event) -> None:
    """A keep-alive client in a request loop, as a connection pool behind a Service is.

    It reconnects after a ``Connection: close`` answer; a refused connection means the worker
    is gone (the request was never sent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        try:
            conn.connect() if conn.sock is None else None
        except ConnectionRefusedError:
            tally.add("http refused")
            return
        try:
            conn.request(
                "POST",
                "/v2/models/simple/infer",
                body=_simple_body(),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.add(f"http unanswered: {type(exc).__name__}")
            conn.close()
            return
        tally.add(f"http {response.status}")
        if response.will_close:
            conn.close()


def _simple_body() -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                for n in ("INPUT0", "INPUT1")
            ]
        }
    ).encode()


def grpc_client_loop(port: int, tally: Tally, stop: threading.Event) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(np.ones((1, 16), np.int32))
    unavailable = 0
    while not stop.is_set() and unavailable < 3:
        try:
            client.infer("simple", inputs, client_timeout=30)
            tally.add("grpc OK")
        except InferenceServerException as exc:
            code = str(exc.status()).removeprefix("StatusCode.")
            tally.add(f"grpc {code}")
            unavailable += code == "UNAVAILABLE"
    client.close()


def sigterm_under_load(repo: Path, exit_timeout: float = 5.0) -> tuple[Tally, float]:
    """Start the worker, load it from HTTP and gRPC clients, SIGTERM it; returns what the
    clients saw and how long the exit took."""
    proc, http_port, grpc_port = start_process(repo, exit_timeout)
    tally, stop = Tally(), threading.Event()
    clients = [
        threading.Thread(target=http_client_loop, args=(http_port, tally, stop), daemon=True)
        for _ in range(6)
    ] + [
        threading.Thread(target=grpc_client_loop, args=(grpc_port, tally, stop), daemon=True)
        for _ in range(3)
    ]
    try:
        for client in clients:
            client.start()
        wait_for(lambda: tally.counts["http 200"] > 50 and tally.counts["grpc OK"] > 20, "load")
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        out, _ = proc.communicate(timeout=exit_timeout + 10)
        took = time.monotonic() - signalled
        assert proc.returncode == 0, out.decode()
        stop.set()
        for client in clients:
            client.join(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return tally, took


def unanswered(tally: Tally) -> dict[str, int]:
    """Requests that got no answer: an HTTP request sent and then cut off, or a gRPC call
    that ended in anything but an answer or UNAVAILABLE (which says: go elsewhere)."""
    return {
        outcome: count
        for outcome, count in tally.counts.items()
        if outcome.startswith("http unanswered")
        or outcome.startswith("grpc CANCELLED")
        or (outcome.startswith("grpc ") and outcome not in ("grpc OK", "grpc UNAVAILABLE"))
    }


def test_sigterm_under_load_leaves_no_request_without_an_answer(tmp_path: Path) -> None:
    repo = models.triton_repository(tmp_path / "repo")
    tally, took = sigterm_under_load(repo)
    assert unanswered(tally) == {}, dict(tally.counts)
    assert took < 5.0 + 1.5, f"exit took {took:.1f} s"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_twenty_sigterms_under_load_leave_no_request_without_an_answer(tmp_path: Path) -> None:
    repo = models.triton_repository(tmp_path / "repo")
    total = Tally()
    slowest = 0.0
    for _ in range(20):
        tally, took = sigterm_under_load(repo)
        total.counts.update(tally.counts)
        slowest = max(slowest, took)
    print(f"20 SIGTERMs under load: {dict(total.counts)}; slowest exit {slowest:.2f} s")
    assert unanswered(total) == {}, dict(total.counts)
    assert slowest < 5.0 + 1.5

"""A bounded soak: ten minutes of mixed traffic against one worker process.

HTTP (JSON and binary) and gRPC inference, streams, a model loaded and unloaded over and
over, shared memory regions created, registered, used and dropped, and malformed requests,
all at once. The worker's resident memory and open file descriptors are sampled throughout;
after a warm-up their slopes must be flat, and no client may see an error other than the
ones its own requests ask for. ``SOAK_SECONDS`` shortens it for a local look.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.worker import models
from tests.worker.test_lifecycle import free_port, status

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
WARM_UP = 0.25  # the first quarter is left out of the slopes: arenas and caches fill there
SAMPLE_EVERY = 5.0
PACE = 0.005  # between a client's requests: load, without taking both cores from others


class Errors:
    def __init__(self) -> None:
        self.expected: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self.requests = 0
        self.lock = threading.Lock()

    def ok(self) -> None:
        with self.lock:
            self.requests += 1

    def expect(self, kind: str) -> None:
        with self.lock:
            self.requests += 1
            self.expected[kind] += 1

    def fail(self, what: str) -> None:
        with self.lock:
            self.unexpected.append(what)


def loop(stop: threading.Event, errors: Errors, name: str, step: Callable[[], None]) -> None:
    while not stop.is_set():
        try:
            step()
        except Exception as exc:  # recorded: the assertion lists them
            errors.fail(f"{name}: {type(exc).__name__}: {exc}"[:300])
        stop.wait(PACE)


A = np.arange(32, dtype=np.int32).reshape(2, 16)


def http_inputs(binary: bool) -> list[httpclient.InferInput]:
    inputs = [httpclient.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(A, binary_data=binary)
    return inputs


def grpc_inputs() -> list[grpcclient.InferInput]:
    inputs = [grpcclient.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(A)
    return inputs


def status_of(address: str, method: str, path: str, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection(address, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def sample(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and open file descriptors of a process."""
    with open(f"/proc/{pid}/status") as status_file:
        rss_kib = next(int(line.split()[1]) for line in status_file if line.startswith("VmRSS:"))
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS) + 300)
def test_ten_minutes_of_mixed_traffic_keep_memory_and_descriptors_flat(tmp_path: Path) -> None:
    repo = models.triton_repository(tmp_path / "repo")
    models.scale_versions(repo, {1: 1.0, 2: 2.0})
    http_port, grpc_port = free_port(), free_port()
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polyserve_worker.main",
            f"--model-repository={repo}",
            "--host=127.0.0.1",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={free_port()}",
            "--model-control-mode=explicit",
            "--load-model=simple",
            "--allow-client-shm=true",
        ],
        env={**os.environ, "HOME": str(tmp_path / "home")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    errors = Errors()
    http_url, grpc_url = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if status(f"http://{http_url}/v2/health/ready") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "worker never ready"
            time.sleep(0.05)

        # tritonclient's HTTP client runs on gevent and stays in the thread that made it.
        local = threading.local()

        def http_client() -> httpclient.InferenceServerClient:
            if not hasattr(local, "client"):
                local.client = httpclient.InferenceServerClient(http_url)
            made: httpclient.InferenceServerClient = local.client
            return made

        grpc = grpcclient.InferenceServerClient(grpc_url)
        stream_answers: collections.deque[object] = collections.deque()

        def http_infer(binary: bool) -> Callable[[], None]:
            def step() -> None:
                http_client().infer("simple", http_inputs(binary))
                errors.ok()

            return step

        def grpc_infer() -> None:
            grpc.infer("simple", grpc_inputs())
            errors.ok()

        def stream_burst() -> None:
            streaming = grpcclient.InferenceServerClient(grpc_url)
            done = threading.Event()
            got: list[object] = []

            def collect(result: object, error: object) -> None:
                got.append(error)
                if len(got) == 20:
                    done.set()

            streaming.start_stream(callback=collect)
            for i in range(20):
                streaming.async_stream_infer("simple", grpc_inputs(), request_id=str(i))
            assert done.wait(30), "a stream left requests unanswered"
            streaming.stop_stream()
            streaming.close()
            assert all(e is None for e in got), got
            stream_answers.append(len(got))
            errors.ok()

        def load_unload() -> None:
            http_client().load_model("scale")
            inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(np.ones((1, 4), np.float32))
            assert float(http_client().infer("scale", [inp]).as_numpy("OUTPUT0")[0, 0]) == 2.0
            http_client().unload_model("scale")
            try:
                http_client().infer("scale", [inp])
            except InferenceServerException as exc:
                assert "not ready" in str(exc) or "not loaded" in str(exc), exc
                errors.expect("scale unloaded")
            errors.ok()

        def shm_round_trip() -> None:
            tag = uuid.uuid4().hex[:8]
            region = shm.create_shared_memory_region(f"s_{tag}", f"/ps_soak_{tag}", 256)
            try:
                a = np.arange(32, dtype=np.int32).reshape(2, 16)
                shm.set_shared_memory_region(region, [a])
                http_client().register_system_shared_memory(f"s_{tag}", f"/ps_soak_{tag}", 256)
                inputs = [httpclient.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                for inp in inputs:
                    inp.set_shared_memory(f"s_{tag}", 128)
                out = httpclient.InferRequestedOutput("OUTPUT0")
                out.set_shared_memory(f"s_{tag}", 128, offset=128)
                http_client().infer("simple", inputs, outputs=[out])
                got = shm.get_contents_as_numpy(region, np.int32, [2, 16], offset=128)
                np.testing.assert_array_equal(got, a + a)
                http_client().unregister_system_shared_memory(f"s_{tag}")
            finally:
                shm.destroy_shared_memory_region(region)
            errors.ok()

        bad_bodies = [
            b"{",
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "INPUT0",
                            "shape": [1 << 26],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": 4},
                        }
                    ]
                }
            ).encode(),
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "INPUT0",
                            "shape": [1, 16],
                            "datatype": "INT32",
                            "data": [None] * 16,
                        }
                    ]
                }
            ).encode(),
        ]

        def bad_requests() -> None:
            for body in bad_bodies:
                code = status_of(http_url, "POST", "/v2/models/simple/infer", body)
                assert code == 400, code
                errors.expect("400")
            assert status_of(http_url, "GET", "/v2/models/..%2F..%2Fetc") == 400
            errors.expect("400")

        steps: dict[str, Callable[[], None]] = {
            "http-binary": http_infer(True),
            "http-json": http_infer(False),
            "grpc": grpc_infer,
            "stream": stream_burst,
            "load-unload": load_unload,
            "shm": shm_round_trip,
            "bad": bad_requests,
        }
        threads = [
            threading.Thread(target=loop, args=(stop, errors, name, step), daemon=True)
            for name, step in steps.items()
        ]
        for thread in threads:
            thread.start()
        samples: list[tuple[float, float, int]] = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < SECONDS:
            rss, fds = sample(proc.pid)
            samples.append((elapsed, rss, fds))
            assert proc.poll() is None, "the worker died"
            stop.wait(SAMPLE_EVERY)
        stop.set()
        for thread in threads:
            thread.join(60)
        grpc.close()
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            log.close()
    steady = [s for s in samples if s[0] >= SECONDS * WARM_UP]
    minutes = np.array([s[0] for s in steady]) / 60
    rss_slope = float(np.polyfit(minutes, [s[1] for s in steady], 1)[0])
    fd_slope = float(np.polyfit(minutes, [s[2] for s in steady], 1)[0])
    report = (
        f"soak {SECONDS:.0f} s, {errors.requests} requests, expected errors "
        f"{dict(errors.expected)}; RSS {samples[0][1]:.0f} -> {samples[-1][1]:.0f} MiB, "
        f"slope {rss_slope:+.2f} MiB/min; fds {samples[0][2]} -> {samples[-1][2]}, "
        f"slope {fd_slope:+.2f}/min"
    )
    print(report)
    assert not errors.unexpected, errors.unexpected[:10]
    assert proc.returncode == 0
    assert abs(fd_slope) < 0.5, report
    assert rss_slope < 1.0, report

"""Floods and slow clients against one worker: what hostile traffic costs everyone else.

    .venv/bin/python bench/hardening.py [--duration 10] [--out bench/RESULTS.md]

Two figures, each with a health-check prober measuring what an ordinary client waits
meanwhile (issue 13):

1. Flood: clients send the small hostile requests of issue 13 back to back, a 118-byte
   HTTP request claiming 2^28 BYTES elements with 4 payload bytes and its 34-byte gRPC
   twin. Reported: hostile requests answered per second (all 400), the prober's p50/p99/max
   latency, and the worker's peak RSS.
2. Slow clients: connections that send half a header, or a header and a trickle of body,
   and then stall. Reported: how long until the worker closes them (its idle and body
   timeouts), and the prober's latency meanwhile.

The worker runs as its own process; clients and prober run here, on the same cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.worker import models  # noqa: E402

STRINGS_CONFIG = """
max_batch_size: 0
input: [{name: INPUT0, data_type: TYPE_STRING, dims: [-1]}]
output: [{name: OUTPUT0, data_type: TYPE_STRING, dims: [-1]}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    def __init__(self, repo: Path, *flags: str) -> None:
        self.http, self.grpc = free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "polyserve_worker.main",
                f"--model-repository={repo}",
                "--host=127.0.0.1",
                f"--http-port={self.http}",
                f"--grpc-port={self.grpc}",
                f"--metrics-port={free_port()}",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.http, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("worker never became ready")

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class Prober:
    """GET /v2/health/live back to back on one keep-alive connection; latencies in ms."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self._stop.is_set():
            started = time.monotonic()
            conn.request("GET", "/v2/health/live")
            conn.getresponse().read()
            self.latencies.append((time.monotonic() - started) * 1000)
            self._stop.wait(0.01)
        conn.close()

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def summary(self) -> str:
        ordered = sorted(self.latencies) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms"
        )


def flood(worker: Worker, seconds: float, clients: int) -> tuple[int, int, dict[int, int]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1 << 28],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        },
        separators=(",", ":"),
    ).encode()
    body = header + struct.pack("<I", 0)
    request = pb.ModelInferRequest(model_name="strings")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1 << 28])
    request.raw_input_contents.append(struct.pack("<I", 0))
    counts = {"http": 0, "grpc": 0}
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def http_flood() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", worker.http, timeout=60)
        headers = {"Inference-Header-Content-Length": str(len(header))}
        while time.monotonic() < until:
            conn.request("POST", "/v2/models/strings/infer", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            with lock:
                counts["http"] += 1
                statuses[response.status] = statuses.get(response.status, 0) + 1

    def grpc_flood() -> None:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{worker.grpc}"))
        while time.monotonic() < until:
            try:
                stub.ModelInfer(request, timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            with lock:
                counts["grpc"] += 1

    threads = [threading.Thread(target=http_flood) for _ in range(clients)]
    threads += [threading.Thread(target=grpc_flood) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"flood: {len(body)}-byte HTTP and {request.ByteSize()}-byte gRPC requests")
    return counts["http"], counts["grpc"], statuses


def slow_clients(worker: Worker, count: int) -> tuple[float, float]:
    """Seconds until the worker closed the last header-stalled and body-stalled connection."""

    def stall(first: bytes) -> float:
        sock = socket.create_connection(("127.0.0.1", worker.http))
        sock.settimeout(120)
        sock.sendall(first)
        started = time.monotonic()
        while sock.recv(65536):
            pass
        sock.close()
        return time.monotonic() - started

    results: dict[str, list[float]] = {"header": [], "body": []}

    def run(kind: str, first: bytes) -> None:
        results[kind].append(stall(first))

    threads = [
        threading.Thread(target=run, args=("header", b"POST /v2/models/x/infer HTTP/1.1\r\nHo"))
        for _ in range(count)
    ] + [
        threading.Thread(
            target=run,
            args=(
                "body",
                b"POST /v2/models/strings/infer HTTP/1.1\r\nHost: x\r\n"
                b'Content-Length: 100000\r\n\r\n{"inputs"',
            ),
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return max(results["header"]), max(results["body"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--slow", type=int, default=50, help="slow connections of each kind")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="polyserve-hardening-"))
    lines: list[str] = []
    try:
        models.identity(scratch / "strings" / "1" / "model.onnx", "BYTES", batch_dim=False)
        (scratch / "strings" / "config.yaml").write_text(STRINGS_CONFIG)
        worker = Worker(scratch, "--http-idle-timeout-secs=5", "--http-body-timeout-secs=5")
        try:
            with Prober(worker.http) as idle:
                time.sleep(2)
            with Prober(worker.http) as during:
                http_n, grpc_n, statuses = flood(worker, args.duration, args.clients)
            lines += [
                f"- Flood ({args.clients} HTTP + {args.clients} gRPC clients, "
                f"{args.duration:g} s): {http_n / args.duration:.0f} HTTP and "
                f"{grpc_n / args.duration:.0f} gRPC hostile requests/s answered "
                f"(HTTP statuses {statuses}); health checks {during.summary()} "
                f"(idle: {idle.summary()}); worker peak RSS {worker.peak_rss_mib():.0f} MiB.",
            ]
            with Prober(worker.http) as during:
                header_s, body_s = slow_clients(worker, args.slow)
            lines.append(
                f"- Slow clients ({args.slow} stalled in their header, {args.slow} in their "
                f"body; idle and body timeouts 5 s): closed after {header_s:.1f} s and "
                f"{body_s:.1f} s; health checks meanwhile {during.summary()}."
            )
        finally:
            worker.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(lines))
    if args.out is not None:
        sys.path.insert(0, str(ROOT / "bench"))
        import run as bench_run

        bench_run.write_section(args.out, "hardening", ["## Floods and slow clients", "", *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())

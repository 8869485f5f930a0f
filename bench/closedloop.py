"""Closed-loop load over binary HTTP, unary gRPC and ModelStreamInfer, for the peers bench.

``bench/peers.py`` drives our worker and Triton with it in one session. It adds to
``bench/loadgen.py`` what comparing transports needs: a ``grpc-stream`` mode (one
ModelStreamInfer stream per client process carrying ``--concurrency`` outstanding
requests, as perf_analyzer ``--streaming`` sends them) and the CPU time of a whole set of
server processes (``--watch-pid`` repeated: a worker started with ``--workers N`` is N+1
processes). Only requests that start and end inside the measured window count.

    python bench/closedloop.py --url 127.0.0.1:8001 --mode grpc-stream --model mlp \\
        --shape 1,256 --concurrency 32 --json

It knows only the protocol, the model name and the input shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("http-binary", "grpc", "grpc-stream")


@dataclass(frozen=True)
class Spec:
    url: str
    mode: str
    model: str
    shape: tuple[int, ...]
    concurrency: int
    warmup_s: float
    duration_s: float
    input_name: str = "INPUT0"
    output_name: str = "OUTPUT0"
    watch: tuple[int, ...] = ()  # server processes whose CPU time is measured


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a worker with --workers N: the supervisor and its N)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            todo += [int(child) for child in children.read_text().split()]
    return out


def cpu_seconds(pids: tuple[int, ...]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class _Stream:
    """One ModelStreamInfer stream shared by a process's concurrent senders."""

    def __init__(self, client: Any, request: dict[str, Any]) -> None:
        self.client = client
        self.request = request
        self.outgoing: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.sent = 0
        self.reader: asyncio.Task[None] | None = None

    async def _requests(self) -> Any:
        while (item := await self.outgoing.get()) is not None:
            yield item

    async def _read(self) -> None:
        async for result, error in self.client.stream_infer(self._requests()):
            if error is None:
                future = self.pending.pop(result.get_response().id, None)
            elif self.pending:  # an error in the stream names no request: fail the oldest
                future = self.pending.pop(next(iter(self.pending)))
            else:
                continue
            if future is not None and not future.done():
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)

    def call(self) -> Awaitable[Any]:
        if self.reader is None:
            self.reader = asyncio.create_task(self._read())
        self.sent += 1
        request_id = str(self.sent)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.outgoing.put_nowait({**self.request, "request_id": request_id})
        return future

    async def close(self) -> None:
        self.outgoing.put_nowait(None)
        if self.reader is not None:
            try:
                await asyncio.wait_for(self.reader, 10)
            except Exception:
                self.reader.cancel()
        await self.client.close()


async def _client(spec: Spec) -> tuple[Any, Callable[[], Awaitable[Any]]]:
    data = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    if spec.mode.startswith("grpc"):
        import tritonclient.grpc.aio as grpcclient

        tensor = grpcclient.InferInput(spec.input_name, list(spec.shape), "FP32")
        tensor.set_data_from_numpy(data)
        outputs = [grpcclient.InferRequestedOutput(spec.output_name)]
        client = grpcclient.InferenceServerClient(spec.url)
        if spec.mode == "grpc-stream":
            stream = _Stream(
                client, {"model_name": spec.model, "inputs": [tensor], "outputs": outputs}
            )
            return stream, stream.call
        return client, lambda: client.infer(spec.model, [tensor], outputs=outputs)
    import tritonclient.http.aio as httpclient

    http = httpclient.InferenceServerClient(spec.url, conn_limit=spec.concurrency)
    http_input = httpclient.InferInput(spec.input_name, list(spec.shape), "FP32")
    http_input.set_data_from_numpy(data, binary_data=True)
    http_outputs = [httpclient.InferRequestedOutput(spec.output_name, binary_data=True)]
    return http, lambda: http.infer(spec.model, [http_input], outputs=http_outputs)


async def _run(spec: Spec, start_at: float) -> dict[str, Any]:
    client, call = await _client(spec)
    measure_from = start_at + spec.warmup_s
    measure_to = measure_from + spec.duration_s
    latencies: list[float] = []
    errors = 0
    cpu: dict[str, float] = {}

    async def sender() -> None:
        nonlocal errors
        while (began := time.monotonic()) < measure_to:
            try:
                result = await call()
                result.as_numpy(spec.output_name)
            except Exception:  # a benchmark counts failures, it does not stop
                errors += 1
                await asyncio.sleep(0.001)
                continue
            ended = time.monotonic()
            if began >= measure_from and ended <= measure_to:
                latencies.append(ended - began)

    async def sample() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        own, server = time.process_time(), cpu_seconds(spec.watch)
        await asyncio.sleep(max(0.0, measure_to - time.monotonic()))
        cpu["client"] = time.process_time() - own
        cpu["server"] = cpu_seconds(spec.watch) - server

    try:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(sender() for _ in range(spec.concurrency)))
        await sampler
    finally:
        await client.close()
    return {"latencies": latencies, "errors": errors, **cpu}


def _process(spec: Spec, start_at: float) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_run(spec, start_at))
    except ImportError:
        return asyncio.run(_run(spec, start_at))


def run(spec: Spec, processes: int = 1) -> dict[str, Any]:
    """Drive the server; with ``processes`` > 1 the concurrency is split over them (each
    its own connection, or its own stream)."""
    processes = max(1, min(processes, spec.concurrency))
    start_at = time.monotonic() + (0.0 if processes == 1 else 2.0)
    if processes == 1:
        parts = [_process(spec, start_at)]
    else:
        shares = [
            spec.concurrency // processes + (i < spec.concurrency % processes)
            for i in range(processes)
        ]
        specs = [
            replace(s := spec, concurrency=share, watch=s.watch if i == 0 else ())
            for i, share in enumerate(shares)
        ]
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            parts = pool.starmap(_process, [(s, start_at) for s in specs])
    ms = np.asarray([x for p in parts for x in p["latencies"]], dtype=np.float64) * 1000.0
    pct = np.percentile(ms, [50, 95, 99]) if ms.size else np.full(3, float("nan"))
    return {
        "mode": spec.mode,
        "model": spec.model,
        "concurrency": spec.concurrency,
        "processes": processes,
        "requests": int(ms.size),
        "errors": sum(p["errors"] for p in parts),
        "infer_per_s": ms.size / spec.duration_s,
        "p50_ms": float(pct[0]),
        "p95_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "server_cpu": sum(p.get("server", 0.0) for p in parts) / spec.duration_s,
        "client_cpu": sum(p.get("client", 0.0) for p in parts) / spec.duration_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--shape", required=True, help="e.g. 1,256")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--watch-pid", type=int, action="append", default=[], help="server pid (and children)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    watch = tuple(pid for root in args.watch_pid for pid in process_tree(root))
    spec = Spec(
        url=args.url,
        mode=args.mode,
        model=args.model,
        shape=tuple(int(d) for d in args.shape.split(",")),
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        duration_s=args.duration,
        watch=watch,
    )
    result = run(spec, args.processes)
    print(json.dumps(result) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

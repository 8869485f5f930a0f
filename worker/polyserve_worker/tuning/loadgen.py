"""Closed-loop load generator for an OIP server, on tritonclient's asyncio clients.

It exists because Triton's ``perf_analyzer`` does not run on Debian 12 (glibc 2.38 needed), and
the benchmark must drive the worker through the same clients users have: N concurrent workers
each send the next request as soon as the previous one answers, for a fixed duration after a
warm-up; only requests that start and finish inside the measured window count. The benchmarks
(``bench/loadgen.py`` runs this module) and ``polyserve tune`` both measure with it, so a
tuned capacity and a benchmark table are the same kind of number.

    python bench/loadgen.py --url 127.0.0.1:8001 --mode grpc --model mlp --concurrency 32

Modes: ``http-json`` (tensors as JSON lists both ways), ``http-binary`` (Triton's binary
tensor extension both ways) and ``grpc`` (``raw_input_contents``). One asyncio process can be
the bottleneck at thousands of requests per second, so ``--processes K`` splits the
concurrency over K processes that share one measured window and merge their latencies.

It knows nothing about the worker's internals: only the protocol, the model name and its
inputs (one FP32 tensor by default; ``LoadSpec.inputs`` lists several, of any numeric type).
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("http-json", "http-binary", "grpc")

#: Numpy dtypes of the protocol's datatypes a random input can be made of.
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@dataclass(frozen=True)
class Tensor:
    """One input of a request: its name, protocol datatype (FP32) and shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def random_data(tensor: Tensor, rng: np.random.Generator) -> Any:
    """Seeded random contents for one input (small integers, normal floats)."""
    dtype = DTYPES[tensor.datatype]
    if dtype is np.bool_:
        return rng.integers(0, 2, tensor.shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 8, tensor.shape).astype(dtype)
    return rng.standard_normal(tensor.shape).astype(dtype)


@dataclass(frozen=True)
class LoadSpec:
    """One closed-loop run: where, what, how hard and for how long (seconds)."""

    url: str
    mode: str
    model: str
    input_name: str
    output_name: str
    shape: tuple[int, ...]
    concurrency: int
    warmup_s: float
    duration_s: float
    watch_pid: int = 0  # a process (the server) whose CPU time to measure over the window
    inputs: tuple[Tensor, ...] = ()  # every input; empty: one FP32 ``input_name`` of ``shape``

    def tensors(self) -> tuple[Tensor, ...]:
        return self.inputs or (Tensor(self.input_name, "FP32", self.shape),)


@dataclass(frozen=True)
class LoadResult:
    """Throughput and latency percentiles (milliseconds) over the measured window."""

    mode: str
    model: str
    concurrency: int
    processes: int
    duration_s: float
    requests: int
    errors: int
    infer_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    server_cpu: float  # watched process CPU seconds per second of the window (1.0 = one core)
    client_cpu: float  # the same for the load generator processes together


async def _client_and_call(spec: LoadSpec) -> tuple[Any, Callable[[], Awaitable[Any]]]:
    rng = np.random.default_rng(0)
    data = [(t, random_data(t, rng)) for t in spec.tensors()]
    if spec.mode == "grpc":
        import tritonclient.grpc.aio as grpcclient

        grpc_client = grpcclient.InferenceServerClient(spec.url)
        grpc_inputs = []
        for tensor, array in data:
            grpc_input = grpcclient.InferInput(tensor.name, list(tensor.shape), tensor.datatype)
            grpc_input.set_data_from_numpy(array)
            grpc_inputs.append(grpc_input)
        grpc_outputs = [grpcclient.InferRequestedOutput(spec.output_name)]

        def grpc_call() -> Awaitable[Any]:
            call: Awaitable[Any] = grpc_client.infer(spec.model, grpc_inputs, outputs=grpc_outputs)
            return call

        return grpc_client, grpc_call
    import tritonclient.http.aio as httpclient

    binary = spec.mode == "http-binary"
    # One connection per concurrent worker, so no request waits for a pooled connection.
    http_client = httpclient.InferenceServerClient(spec.url, conn_limit=spec.concurrency)
    http_inputs = []
    for tensor, array in data:
        http_input = httpclient.InferInput(tensor.name, list(tensor.shape), tensor.datatype)
        http_input.set_data_from_numpy(array, binary_data=binary)
        http_inputs.append(http_input)
    http_outputs = [httpclient.InferRequestedOutput(spec.output_name, binary_data=binary)]

    def http_call() -> Awaitable[Any]:
        call: Awaitable[Any] = http_client.infer(spec.model, http_inputs, outputs=http_outputs)
        return call

    return http_client, http_call


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class _Part:
    """What one load generator process measured."""

    latencies: list[float]
    errors: int
    client_cpu_s: float
    server_cpu_s: float


async def _sample_cpu(spec: LoadSpec, measure_from: float, measure_to: float) -> tuple[float, ...]:
    """CPU seconds used by this process and by ``spec.watch_pid`` inside the window."""
    await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
    own, server = time.process_time(), cpu_seconds(spec.watch_pid) if spec.watch_pid else 0.0
    await asyncio.sleep(max(0.0, measure_to - time.monotonic()))
    own_end = time.process_time()
    server_end = cpu_seconds(spec.watch_pid) if spec.watch_pid else 0.0
    return own_end - own, server_end - server


async def _run(spec: LoadSpec, start_at: float) -> _Part:
    """Run until ``start_at + warmup + duration`` (monotonic clock, shared across processes)."""
    client, call = await _client_and_call(spec)
    measure_from = start_at + spec.warmup_s
    measure_to = measure_from + spec.duration_s
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while True:
            began = time.monotonic()
            if began >= measure_to:
                return
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

    try:
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sampler = asyncio.create_task(_sample_cpu(spec, measure_from, measure_to))
        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
        client_cpu_s, server_cpu_s = await sampler
    finally:
        await client.close()
    return _Part(latencies, errors, client_cpu_s, server_cpu_s)


def _process_main(spec: LoadSpec, start_at: float) -> _Part:
    return asyncio.run(_run(spec, start_at))


def run_load(spec: LoadSpec, processes: int = 1) -> LoadResult:
    """Drive the server with ``spec``; with ``processes`` > 1, split the concurrency over them."""
    processes = max(1, min(processes, spec.concurrency))
    # Give every process time to import tritonclient and connect before the shared start.
    start_at = time.monotonic() + (0.0 if processes == 1 else 2.0)
    if processes == 1:
        parts = [_process_main(spec, start_at)]
    else:
        shares = [spec.concurrency // processes] * processes
        for i in range(spec.concurrency % processes):
            shares[i] += 1
        # Only the first process watches the server, so its CPU is counted once.
        specs = [
            replace(spec, concurrency=share, watch_pid=spec.watch_pid if i == 0 else 0)
            for i, share in enumerate(shares)
        ]
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            parts = pool.starmap(_process_main, [(s, start_at) for s in specs])
    return summarize(spec, processes, parts)


def summarize(spec: LoadSpec, processes: int, parts: list[_Part]) -> LoadResult:
    latencies = [latency for part in parts for latency in part.latencies]
    ms = np.asarray(latencies, dtype=np.float64) * 1000.0
    pct = np.percentile(ms, [50, 95, 99]) if ms.size else np.full(3, float("nan"))
    return LoadResult(
        mode=spec.mode,
        model=spec.model,
        concurrency=spec.concurrency,
        processes=processes,
        duration_s=spec.duration_s,
        requests=int(ms.size),
        errors=sum(part.errors for part in parts),
        infer_per_s=ms.size / spec.duration_s,
        p50_ms=float(pct[0]),
        p95_ms=float(pct[1]),
        p99_ms=float(pct[2]),
        mean_ms=float(ms.mean()) if ms.size else float("nan"),
        server_cpu=sum(part.server_cpu_s for part in parts) / spec.duration_s,
        client_cpu=sum(part.client_cpu_s for part in parts) / spec.duration_s,
    )


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="host:port of the HTTP or gRPC endpoint")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", default="INPUT0", help="input tensor name")
    parser.add_argument("--output", default="OUTPUT0", help="output tensor name")
    parser.add_argument("--shape", type=_shape, required=True, help="e.g. 1,256")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not measured")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--watch-pid", type=int, default=0, help="server pid to measure CPU of")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        url=args.url,
        mode=args.mode,
        model=args.model,
        input_name=args.input,
        output_name=args.output,
        shape=args.shape,
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        duration_s=args.duration,
        watch_pid=args.watch_pid,
    )
    result = run_load(spec, args.processes)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"{result.model} {result.mode} c={result.concurrency} procs={result.processes}: "
            f"{result.infer_per_s:.0f} infer/s, p50 {result.p50_ms:.2f} ms, "
            f"p95 {result.p95_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors {result.errors}, "
            f"CPU server {100 * result.server_cpu:.0f}% client {100 * result.client_cpu:.0f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

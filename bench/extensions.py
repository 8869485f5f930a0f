"""Benchmarks for ensembles and shared memory (issue 4), written into bench/RESULTS.md.

    .venv/bin/python bench/extensions.py [--duration 8] [--out bench/RESULTS.md]

Two questions, each answered with a closed loop at concurrency 8 against one worker that
runs with ``--allow-client-shm``:

1. ``cnn`` (a 600 KB FP32 input): does system shared memory beat binary HTTP? Each client
   coroutine owns one input and one output region, registered once and reused, and writes
   its tensor into the region before each request (as a real producer would).
2. An ensemble ``pipeline`` = ``normalize`` (ONNX, [3,224,224] -> same) then ``cnn``,
   served in one request, against the same two calls chained by the client over gRPC.

The load generator runs in this process on the same two cores as the worker; the numbers
are comparisons between modes on one machine, not absolute capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))

import build_models  # noqa: E402
import run as bench_run  # noqa: E402

SHAPE = (1, 3, 224, 224)

_clients: list[Any] = []  # every asyncio client made, closed when measuring ends


def normalize_model() -> Any:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mean = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "mean")
    scale = numpy_helper.from_array(np.full((1, 3, 1, 1), 4.0, np.float32), "scale")
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["INPUT0", "mean"], ["centered"]),
            helper.make_node("Mul", ["centered", "scale"], ["OUTPUT0"]),
        ],
        "normalize",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["b", 3, 224, 224])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["b", 3, 224, 224])],
        [mean, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


PIPELINE = """\
platform: ensemble
max_batch_size: 16
input: [{name: IMAGE, data_type: FP32, dims: [3, 224, 224]}]
output: [{name: SCORES, data_type: FP32, dims: [1000]}]
ensemble_scheduling:
  step:
    - {model_name: normalize, input_map: {INPUT0: IMAGE}, output_map: {OUTPUT0: pixels}}
    - {model_name: cnn, input_map: {INPUT0: pixels}, output_map: {OUTPUT0: SCORES}}
"""


def build(root: Path) -> None:
    import onnx

    build_models.build(root)
    shutil.rmtree(root / "mlp")
    (root / "normalize" / "1").mkdir(parents=True)
    onnx.save(normalize_model(), str(root / "normalize" / "1" / "model.onnx"))
    (root / "normalize" / "config.yaml").write_text(
        "max_batch_size: 16\ndynamic_batching: {}\nparameters: {intra_op_thread_count: '1'}\n"
    )
    (root / "pipeline").mkdir()
    (root / "pipeline" / "config.yaml").write_text(PIPELINE)


async def closed_loop(
    make_call: Callable[[int], Awaitable[Callable[[], Awaitable[None]]]],
    concurrency: int,
    warmup: float,
    duration: float,
) -> tuple[float, float, float]:
    """(infer/s, p50 ms, p95 ms) over the measured window."""
    calls = [await make_call(i) for i in range(concurrency)]
    start = time.monotonic() + warmup
    stop = start + duration
    latencies: list[float] = []

    async def loop(call: Callable[[], Awaitable[None]]) -> None:
        while True:
            began = time.monotonic()
            if began >= stop:
                return
            await call()
            ended = time.monotonic()
            if began >= start and ended <= stop:
                latencies.append(ended - began)

    await asyncio.gather(*(loop(c) for c in calls))
    latencies.sort()
    if not latencies:
        return 0.0, 0.0, 0.0
    return (
        len(latencies) / duration,
        latencies[len(latencies) // 2] * 1e3,
        latencies[int(len(latencies) * 0.95)] * 1e3,
    )


async def binary_http(url: str) -> Callable[[int], Awaitable[Callable[[], Awaitable[None]]]]:
    import tritonclient.http.aio as httpclient

    client = httpclient.InferenceServerClient(url, conn_limit=64)
    _clients.append(client)
    data = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)

    async def make(_: int) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            inp = httpclient.InferInput("INPUT0", list(SHAPE), "FP32")
            inp.set_data_from_numpy(data, binary_data=True)
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
            await client.infer("cnn", [inp], outputs=[out])

        return call

    return make


async def shared_memory(
    url: str, regions: list[Any]
) -> Callable[[int], Awaitable[Callable[[], Awaitable[None]]]]:
    import tritonclient.http.aio as httpclient
    import tritonclient.utils.shared_memory as shm

    client = httpclient.InferenceServerClient(url, conn_limit=64)
    _clients.append(client)
    data = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    tag = uuid.uuid4().hex[:6]

    async def make(i: int) -> Callable[[], Awaitable[None]]:
        in_name, out_name = f"in{i}_{tag}", f"out{i}_{tag}"
        region_in = shm.create_shared_memory_region(in_name, f"/{in_name}", data.nbytes)
        region_out = shm.create_shared_memory_region(out_name, f"/{out_name}", 4000)
        regions.extend([region_in, region_out])
        await client.register_system_shared_memory(in_name, f"/{in_name}", data.nbytes)
        await client.register_system_shared_memory(out_name, f"/{out_name}", 4000)

        async def call() -> None:
            shm.set_shared_memory_region(region_in, [data])
            inp = httpclient.InferInput("INPUT0", list(SHAPE), "FP32")
            inp.set_shared_memory(in_name, data.nbytes)
            out = httpclient.InferRequestedOutput("OUTPUT0")
            out.set_shared_memory(out_name, 4000)
            await client.infer("cnn", [inp], outputs=[out])
            shm.get_contents_as_numpy(region_out, np.float32, [1, 1000])

        return call

    return make


async def grpc_calls(
    url: str, chained: bool
) -> Callable[[int], Awaitable[Callable[[], Awaitable[None]]]]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    _clients.append(client)
    data = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)

    async def infer(model: str, name: str, tensor: np.ndarray, output: str) -> np.ndarray:
        inp = grpcclient.InferInput(name, list(tensor.shape), "FP32")
        inp.set_data_from_numpy(tensor)
        result = await client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(output)])
        out: np.ndarray = result.as_numpy(output)
        return out

    async def make(_: int) -> Callable[[], Awaitable[None]]:
        async def ensemble() -> None:
            await infer("pipeline", "IMAGE", data, "SCORES")

        async def chain() -> None:
            pixels = await infer("normalize", "INPUT0", data, "OUTPUT0")
            await infer("cnn", "INPUT0", pixels, "OUTPUT0")

        return chain if chained else ensemble

    return make


async def measure(worker: bench_run.Worker, warmup: float, duration: float) -> list[str]:
    import tritonclient.utils.shared_memory as shm

    rows: list[tuple[str, float, float, float]] = []
    regions: list[Any] = []
    try:
        for label, factory in (
            ("cnn, binary HTTP", binary_http(worker.http)),
            ("cnn, system shared memory (HTTP)", shared_memory(worker.http, regions)),
            ("pipeline as one ensemble request (gRPC)", grpc_calls(worker.grpc, False)),
            ("normalize then cnn, chained by the client (gRPC)", grpc_calls(worker.grpc, True)),
        ):
            print(f"  measuring {label} ...", flush=True)
            rate, p50, p95 = await closed_loop(await factory, 8, warmup, duration)
            rows.append((label, rate, p50, p95))
            print(f"    {rate:.0f} infer/s, p50 {p50:.2f} ms, p95 {p95:.2f} ms", flush=True)
    finally:
        for client in _clients:
            await client.close()
        for region in regions:
            shm.destroy_shared_memory_region(region)
    by = {r[0]: r[1] for r in rows}
    shm_gain = by["cnn, system shared memory (HTTP)"] / max(by["cnn, binary HTTP"], 1e-9) - 1
    ens = by["pipeline as one ensemble request (gRPC)"]
    chain = by["normalize then cnn, chained by the client (gRPC)"]
    lines = [
        "## Ensembles and shared memory (issue 4)",
        "",
        "Generated by `bench/extensions.py` (run by `make bench`): concurrency 8, one worker with "
        f"`--allow-client-shm`, {warmup:.0f} s warm-up then {duration:.0f} s measured, load "
        "generator on the same 2 cores.",
        "",
        "| mode | infer/s | p50 ms | p95 ms |",
        "|---|---:|---:|---:|",
        *[f"| {label} | {rate:.0f} | {p50:.2f} | {p95:.2f} |" for label, rate, p50, p95 in rows],
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| shared memory >= 15% more throughput than binary HTTP on cnn | {shm_gain * 100:+.0f}% "
        f"| {'met' if shm_gain >= 0.15 else '**missed**'} |",
        f"| ensemble faster than the client-side chain | {ens:.0f} vs {chain:.0f} infer/s "
        f"| {'met' if ens > chain else '**missed**'} |",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="polyserve-ext-") as scratch:
        root = Path(scratch) / "models"
        print("== building cnn, normalize and the pipeline ensemble", flush=True)
        build(root)
        log = Path(scratch) / "worker.log"
        worker = bench_run.Worker(root, log, extra_args=["--allow-client-shm"])
        try:
            lines = asyncio.run(measure(worker, args.warmup, args.duration))
        finally:
            worker.stop()
    bench_run.write_section(args.out, "extensions", lines)
    print(f"== wrote the ensembles and shared memory section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

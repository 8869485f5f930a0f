"""``make bench``: serve the example models, load them over every protocol, write RESULTS.md.

It exists so that the issue's benchmark is one reproducible command rather than a page of
notes: it builds ``mlp`` and ``cnn`` into a temporary repository, starts one worker per
(model, batching on/off) with the bundled config (batching off is the same config without
``dynamic_batching``), drives it with ``bench/loadgen.py`` in a separate process over HTTP
JSON, HTTP binary and gRPC at concurrency 1, 8 and 32, reads the batch sizes the server formed
from its statistics endpoint, then measures the in-process ONNX Runtime ceiling (a plain
``InferenceSession`` loop with the same thread settings, no server running) at those batch
sizes, and writes the table and the targets of issue 2 with met/missed.

Everything below ``ANALYSIS_MARKER`` in an existing results file is hand-written (profiles,
findings) and is kept when the table is regenerated, as are sections that other scripts fence
with ``<!-- name:begin -->`` / ``<!-- name:end -->``.

It must not know the worker's internals: it starts the ``polyserve-worker`` command and speaks
the protocol, like a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ANALYSIS_MARKER = "<!-- analysis: hand-written below, kept by bench/run.py -->"
MODES = ("http-json", "http-binary", "grpc")


@dataclass(frozen=True)
class Model:
    name: str
    shape: tuple[int, ...]  # one request's input, batch dimension included
    config_file: str
    batching_line: str  # the line that turns the dynamic batcher on in the bundled config
    threads: int  # intra_op_thread_count in the bundled config


MODELS = (
    Model("mlp", (1, 256), "config.pbtxt", "dynamic_batching { }", 1),
    Model("cnn", (1, 3, 224, 224), "config.yaml", "dynamic_batching: {}", 2),
)


@dataclass
class Row:
    setup: Setup
    mode: str
    concurrency: int
    processes: int
    result: dict[str, Any]
    avg_batch: float
    load_before: float

    @property
    def server_cpu(self) -> float:
        return float(self.result["server_cpu"])

    @property
    def client_cpu(self) -> float:
        return float(self.result["client_cpu"])

    @property
    def model(self) -> str:
        return self.setup.model.name

    @property
    def batching(self) -> bool:
        return self.setup.batching

    def cpu_us_per_infer(self, share: float) -> float:
        rate = float(self.result["infer_per_s"])
        return 1e6 * share / rate if rate else float("nan")


@dataclass
class Plan:
    warmup_s: float
    duration_s: float
    concurrencies: tuple[int, ...]
    client_processes: int
    skip: set[tuple[str, str, int]] = field(default_factory=set)  # (model, mode, concurrency)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _stats(http: str, model: str) -> tuple[int, int]:
    stats = _get_json(f"http://{http}/v2/models/{model}/stats")["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


class Worker:
    """One ``polyserve-worker`` process on free local ports, stopped with SIGTERM."""

    def __init__(self, repository: Path, log: Path, extra_args: Sequence[str] = ()) -> None:
        self.http = f"127.0.0.1:{_free_port()}"
        self.grpc = f"127.0.0.1:{_free_port()}"
        command = [
            str(BIN / "polyserve-worker"),
            "--model-repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--http-port",
            self.http.rsplit(":", 1)[1],
            "--grpc-port",
            self.grpc.rsplit(":", 1)[1],
            "--metrics-port",
            str(_free_port()),
            *extra_args,
        ]
        self._log = log.open("w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"worker not ready within 60 s; see {log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _repository(base: Path, target: Path, setup: Setup) -> Path:
    """A one-model repository: the bundled model and config, with or without the batcher."""
    model = setup.model
    shutil.copytree(base / model.name / "1", target / model.name / "1")
    config = (base / model.name / model.config_file).read_text()
    assert model.batching_line in config, f"{model.name}: batching line not found"
    if not setup.batching:
        config = config.replace(model.batching_line, "")
    elif setup.queue_delay_us:
        assert model.config_file == "config.pbtxt", "queue delay is written in pbtxt"
        delay = f"dynamic_batching {{ max_queue_delay_microseconds: {setup.queue_delay_us} }}"
        config = config.replace(model.batching_line, delay)
    (target / model.name / model.config_file).write_text(config)
    return target


def write_section(out: Path, name: str, lines: list[str]) -> None:
    """Replace (or append) the fenced ``<!-- name:begin -->`` section of the results file;
    ``render`` keeps such sections when it regenerates the main table."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = out.read_text() if out.exists() else "# Benchmark results\n"
    section = "\n".join([begin, *lines, end])
    if begin in text:
        pattern = re.escape(begin) + ".*?" + re.escape(end)
        text = re.sub(pattern, lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(text)


def _loadgen(
    url: str,
    mode: str,
    model: Model,
    concurrency: int,
    processes: int,
    plan: Plan,
    pid: int,
    names: tuple[str, str] = ("INPUT0", "OUTPUT0"),
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(ROOT / "bench" / "loadgen.py"),
        "--url",
        url,
        "--mode",
        mode,
        "--model",
        model.name,
        "--input",
        names[0],
        "--output",
        names[1],
        "--shape",
        ",".join(str(d) for d in model.shape),
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(plan.warmup_s),
        "--duration",
        str(plan.duration_s),
        "--processes",
        str(processes),
        "--watch-pid",
        str(pid),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@dataclass(frozen=True)
class Setup:
    """One worker configuration and the points measured against it."""

    label: str
    model: Model
    batching: bool
    points: tuple[tuple[str, int, int], ...]  # (mode, concurrency, client processes)
    queue_delay_us: int = 0  # max_queue_delay_microseconds; 0 keeps the bundled config


def setups(plan: Plan, extras: bool) -> list[Setup]:
    out = []
    for model in MODELS:
        points = tuple(
            (mode, c, 1 if c == 1 else plan.client_processes)
            for mode in MODES
            for c in plan.concurrencies
            if (model.name, mode, c) not in plan.skip
        )
        for batching in (False, True):
            label = f"{model.name}-batching-{'on' if batching else 'off'}"
            out.append(Setup(label, model, batching, points))
    if extras:
        # What moves the mlp targets: two client processes, and a batching window.
        top = max(plan.concurrencies)
        mlp = MODELS[0]
        two = (("grpc", top, 2), ("http-binary", top, 2))
        out.append(Setup("mlp-batching-off", mlp, False, (("grpc", top, 2),)))
        out.append(Setup("mlp-batching-on", mlp, True, two))
        delayed = (("grpc", top, 1), ("http-binary", top, 1), ("grpc", top, 2))
        out.append(Setup("mlp-batching-on-delay-2ms", mlp, True, delayed, queue_delay_us=2000))
    return out


def _point(worker: Worker, setup: Setup, mode: str, c: int, procs: int, plan: Plan) -> Row:
    url = worker.grpc if mode == "grpc" else worker.http
    load = os.getloadavg()[0]
    before = _stats(worker.http, setup.model.name)
    result = _loadgen(url, mode, setup.model, c, procs, plan, worker.process.pid)
    after = _stats(worker.http, setup.model.name)
    executions = after[1] - before[1]
    avg = (after[0] - before[0]) / executions if executions else float("nan")
    return Row(setup, mode, c, procs, result, avg, load)


def serve_and_load(base: Path, scratch: Path, plan: Plan, logs: Path, extras: bool) -> list[Row]:
    rows: list[Row] = []
    plan_setups = setups(plan, extras)
    total = sum(len(s.points) for s in plan_setups)
    for model, mode, c in sorted(plan.skip):
        print(f"   skipping {model} {mode} c={c}: too slow to be worth the minutes", flush=True)
    for number, setup in enumerate(plan_setups):
        repo = _repository(base, scratch / f"{number}-{setup.label}", setup)
        print(f"== starting worker for {setup.label}", flush=True)
        worker = Worker(repo, logs / f"worker-{number}-{setup.label}.log")
        try:
            for mode, c, procs in setup.points:
                rows.append(_point(worker, setup, mode, c, procs, plan))
                row, r = rows[-1], rows[-1].result
                print(
                    f"   [{len(rows)}/{total}] {setup.label} {mode:11s} c={c:<2d} procs={procs}:"
                    f" {r['infer_per_s']:6.0f} infer/s  p50 {r['p50_ms']:6.2f}"
                    f"  p95 {r['p95_ms']:6.2f}  p99 {r['p99_ms']:6.2f} ms"
                    f"  batch {row.avg_batch:4.1f}"
                    f"  server {row.cpu_us_per_infer(row.server_cpu):4.0f} us/inf"
                    f"  errors {r['errors']}  load {row.load_before:.2f}",
                    flush=True,
                )
        finally:
            worker.stop()
    return rows


def ceiling(base: Path, model: Model, batch: int, seconds: float) -> float:
    """In-process ORT infer/s at ``batch``, with the worker's session options for the model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = model.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(base / model.name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    shape = (batch, *model.shape[1:])
    feed = {"INPUT0": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(5):
        session.run(["OUTPUT0"], feed)
    runs = 0
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        session.run(["OUTPUT0"], feed)
        runs += 1
    return batch * runs / (time.monotonic() - began)


def ceilings(base: Path, rows: list[Row], seconds: float) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for model in MODELS:
        formed = {
            max(1, round(r.avg_batch))
            for r in rows
            if r.model == model.name and r.batching and r.avg_batch == r.avg_batch
        }
        for batch in sorted(formed | {1}):
            out[(model.name, batch)] = ceiling(base, model, batch, seconds)
            print(
                f"   ceiling {model.name} batch {batch:2d}: "
                f"{out[(model.name, batch)]:8.0f} infer/s",
                flush=True,
            )
    return out


def _find(rows: list[Row], model: str, batching: bool, mode: str, c: int) -> Row | None:
    for row in rows:
        if (row.model, row.batching, row.mode, row.concurrency) == (model, batching, mode, c):
            return row
    return None


def targets(rows: list[Row], ceil: dict[tuple[str, int], float]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of issue 2."""
    out: list[tuple[str, str, bool]] = []
    grpc = _find(rows, "mlp", True, "grpc", 32)
    if grpc:
        g = grpc.result
        met = g["infer_per_s"] >= 4000 and g["p95_ms"] < 10
        measured = f"{g['infer_per_s']:.0f} infer/s, p95 {g['p95_ms']:.1f} ms"
        out.append(("mlp, gRPC, c=32: >= 4000 infer/s with p95 < 10 ms", measured, met))
    cnn = [r for m in ("grpc", "http-binary") if (r := _find(rows, "cnn", True, m, 8))]
    if cnn:
        best = max(cnn, key=lambda r: r.result["infer_per_s"])
        measured = f"{best.result['infer_per_s']:.0f} infer/s ({best.mode})"
        met = best.result["infer_per_s"] >= 1200
        out.append(("cnn, gRPC or binary HTTP, c=8: >= 1200 infer/s", measured, met))
    on, off = _find(rows, "mlp", True, "grpc", 32), _find(rows, "mlp", False, "grpc", 32)
    if on and off and off.result["infer_per_s"]:
        ratio = on.result["infer_per_s"] / off.result["infer_per_s"]
        measured = (
            f"{ratio:.2f}x ({on.result['infer_per_s']:.0f} vs {off.result['infer_per_s']:.0f}"
            " infer/s, gRPC)"
        )
        out.append(("mlp, c=32: batching on >= 3x batching off", measured, ratio >= 3))
    if cnn:
        best = max(cnn, key=lambda r: r.result["infer_per_s"])
        batch = max(1, round(best.avg_batch))
        top = ceil.get(("cnn", batch))
        if top:
            share = best.result["infer_per_s"] / top
            measured = (
                f"{100 * share:.0f}% ({best.result['infer_per_s']:.0f} of {top:.0f} infer/s "
                f"at batch {batch}, {best.mode} c=8)"
            )
            out.append(("cnn: >= 80% of the in-process ORT ceiling", measured, share >= 0.8))
    return out


def _batching_label(setup: Setup) -> str:
    if not setup.batching:
        return "off"
    return f"on, delay {setup.queue_delay_us} us" if setup.queue_delay_us else "on"


def render(
    rows: list[Row],
    ceil: dict[tuple[str, int], float],
    plan: Plan,
    loads: tuple[str, str],
    elapsed: float,
) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (`bench/run.py`); the section after the table is hand-written.",
        "",
        "## Machine and method",
        "",
        f"- {os.cpu_count()} CPU cores, no GPU; {platform.platform()}, Python "
        f"{platform.python_version()}.",
        "- The load generator (`bench/loadgen.py`, tritonclient's asyncio clients, closed loop) "
        "runs in a separate process on the **same 2 cores** as the worker, so every client CPU "
        "cycle is taken from the server.",
        f"- Each point: {plan.warmup_s:g} s warm-up, then {plan.duration_s:g} s measured; only "
        "requests that start and end inside the window count. Every request carries one "
        "sample (batch dimension 1).",
        f"- Client processes: 1 at c=1, {plan.client_processes} at c>=8 (`procs` column).",
        "- Batching off = the bundled config without `dynamic_batching`; on = the bundled config "
        "(`max_queue_delay_microseconds` 0, one instance; mlp 1 intra-op thread, cnn 2). "
        "`batch` = inference_count / execution_count from `/v2/models/{m}/stats` over the run.",
        "- The ceiling is a plain `onnxruntime.InferenceSession.run` loop in the bench process "
        "with the same session options (intra-op threads, spinning off), no server running.",
        f"- Load average (1, 5, 15 min) at start: {loads[0]}; at end: {loads[1]}; `load` "
        "column = 1-min load average before each point. Other engineers' tests may share "
        "the machine; a load above ~2 before a point means it was measured on a busy machine.",
        "- `server CPU` / `client CPU`: CPU time of the worker / load generator(s) inside the "
        "measured window per second of it (from /proc and `time.process_time`); 100% = one "
        "core; the two together cannot pass 200%. "
        "`server us/inf` = server CPU / infer/s: the worker's CPU cost of one inference, "
        "which, unlike infer/s, barely moves when other processes share the cores.",
        f"- Total wall time: {elapsed / 60:.1f} min.",
    ]
    if plan.skip:
        skipped = ", ".join(f"{m} {mode} c={c}" for m, mode, c in sorted(plan.skip))
        lines.append(
            f"- Trimmed: {skipped} (JSON of a 150528-float tensor: under 10 infer/s at c=8 "
            "with ~0.8 s latency; c=32 only multiplies latency)."
        )
    lines += ["", "## Targets (issue 2)", "", "| target | measured | |", "|---|---|---|"]
    for name, measured, met in targets(rows, ceil):
        lines.append(f"| {name} | {measured} | {'met' if met else '**missed**'} |")
    lines += [
        "",
        "## Served",
        "",
        "| model | batching | protocol | c | procs | infer/s | p50 ms | p95 ms | p99 ms "
        "| batch | server CPU | client CPU | server us/inf | errors | load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"| {row.model} | {_batching_label(row.setup)} | {row.mode} | "
            f"{row.concurrency} | {row.processes} | {r['infer_per_s']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{row.avg_batch:.1f} | {100 * row.server_cpu:.0f}% | {100 * row.client_cpu:.0f}% | "
            f"{row.cpu_us_per_infer(row.server_cpu):.0f} | {r['errors']} | "
            f"{row.load_before:.2f} |"
        )
    lines += [
        "",
        "## In-process ONNX Runtime ceiling",
        "",
        "| model | batch | infer/s |",
        "|---|---:|---:|",
    ]
    for (model, batch), value in ceil.items():
        lines.append(f"| {model} | {batch} | {value:.0f} |")
    return "\n".join(lines) + "\n"


def merge(previous: str, table: str) -> str:
    """The new table, plus what other hands wrote into the previous file.

    Kept: sections other scripts own, fenced as ``<!-- name:begin -->`` ...
    ``<!-- name:end -->`` (bench/extensions.py writes one), and everything after
    ``ANALYSIS_MARKER``.
    """
    head, marker, tail = previous.partition(ANALYSIS_MARKER)
    for block in re.findall(r"<!-- [\w-]+:begin -->.*?<!-- [\w-]+:end -->", head, flags=re.S):
        table += "\n" + block + "\n"
    if marker:
        table += "\n" + marker + tail
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="short points, c=1 and 32 only")
    parser.add_argument("--duration", type=float, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point")
    parser.add_argument(
        "--client-processes", type=int, default=1, help="load generator processes at c>=8"
    )
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="skip the extra mlp points (2 client processes, 2 ms batching window)",
    )
    args = parser.parse_args(argv)
    plan = Plan(
        warmup_s=args.warmup or (1.0 if args.quick else 2.0),
        duration_s=args.duration or (3.0 if args.quick else 8.0),
        concurrencies=(1, 32) if args.quick else (1, 8, 32),
        client_processes=args.client_processes,
        skip={("cnn", "http-json", 32)},
    )
    began = time.monotonic()
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="polyserve-bench-") as tmp:
        scratch = Path(tmp)
        base = scratch / "base"
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "build_models.py"), str(base)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        logs = scratch / "logs"
        logs.mkdir()
        rows = serve_and_load(base, scratch, plan, logs, extras=not args.no_extras)
        print("== in-process ONNX Runtime ceiling", flush=True)
        ceil = ceilings(base, rows, 2.0 if args.quick else 4.0)
    load_end = " ".join(f"{v:.2f}" for v in os.getloadavg())
    text = render(rows, ceil, plan, (load_start, load_end), time.monotonic() - began)
    if args.out.exists():
        text = merge(args.out.read_text(), text)
    args.out.write_text(text)
    print(f"== wrote {args.out}", flush=True)
    for name, measured, met in targets(rows, ceil):
        print(f"   {'met   ' if met else 'MISSED'} {name}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

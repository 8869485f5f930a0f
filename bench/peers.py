"""``make bench-peers``: our worker and Triton side by side, same models, same load, one session.

Triton is the C++ ``tritonserver`` that ships inside PyPI's ``nvidia-pytriton`` wheel, with
its python backend; Triton's native ONNX Runtime backend would be faster than its python
backend, and it is not available as a wheel, so Triton here serves the ONNX models through
a ``model.py`` that runs ONNX Runtime with the worker's thread count (one intra-op thread,
no spinning) under the same dynamic batcher settings (max batch 32, 500 us window, one
instance). The wheel is fetched with pip into a cache folder (``--cache``), never installed:
its tritonserver binary runs from there, and the stub's ONNX Runtime and numpy (<2, which
the stub was built for) are pip-installed into a folder of their own.

Each round starts every server in turn and drives it with ``bench/closedloop.py``; rounds
interleave the servers, so a busy minute on the shared machine hits all of them. The
session waits until the 1-minute load average is below ``--quiet`` first. Worker CPU is
the server's whole process tree (a worker with ``--workers 2`` is three processes); batch
sizes come from each process's ``nv_inference_count`` / ``nv_inference_exec_count``.

It knows the worker only by its command line and the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "bench"))

import run as bench_run  # noqa: E402

PYTRITON = "nvidia-pytriton==0.7.0"

CONFIG = """\
name: "{name}"
backend: "{backend}"
max_batch_size: 32
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {out} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
{extra}"""

MODEL_PY = """\
import sys
sys.path.insert(0, {site!r})  # the stub embeds Python in isolated mode: no PYTHONPATH

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        out = self.session.run(["OUTPUT0"], {{"INPUT0": np.concatenate(arrays)}})[0]
        responses, start = [], 0
        for array in arrays:
            part = np.ascontiguousarray(out[start : start + len(array)])
            start += len(array)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", part)]))
        return responses
"""


@dataclass(frozen=True)
class Model:
    name: str
    shape: tuple[int, ...]
    out: int


MLP = Model("mlp", (1, 256), 10)
CNN = Model("cnn", (1, 3, 224, 224), 1000)
#: (model, mode, concurrency): the issue's rows.
POINTS = (
    (MLP, "http-binary", 32),
    (MLP, "grpc", 32),
    (MLP, "grpc-stream", 32),
    (CNN, "http-binary", 8),
    (CNN, "grpc", 8),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prepare_triton(cache: Path) -> Path:
    """tritonserver, its python backend with the 3.11 stub, and the stub's packages."""
    server = cache / "tritonserver"
    if (server / "bin" / "tritonserver").exists() and (cache / "site").exists():
        return server
    cache.mkdir(parents=True, exist_ok=True)
    wheels = cache / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "download", "--quiet", "--no-deps", PYTRITON, "-d", str(wheels)], check=True
    )
    wheel = next(wheels.glob("nvidia_pytriton-*.whl"))
    unpacked = cache / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    shutil.rmtree(server, ignore_errors=True)
    shutil.copytree(unpacked / "pytriton" / "tritonserver", server)
    for path in (server / "bin" / "tritonserver", *server.rglob("*stub")):
        path.chmod(0o755)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy(stub, server / "backends" / "python" / "triton_python_backend_stub")
    shutil.copytree(unpacked / "nvidia_pytriton.libs", cache / "libs", dirs_exist_ok=True)
    import onnxruntime

    subprocess.run(
        [
            *pip,
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(cache / "site"),
            "numpy<2",
            f"onnxruntime=={onnxruntime.__version__}",
        ],
        check=True,
    )
    return server


def repositories(scratch: Path, site: Path) -> tuple[Path, Path]:
    """The same ONNX files as an onnxruntime repository (ours) and a python-backend one."""
    base = scratch / "base"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "build_models.py"), str(base)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ours, theirs = scratch / "ours", scratch / "triton"
    for model in (MLP, CNN):
        dims = ", ".join(str(d) for d in model.shape[1:])
        for repo, backend, extra in (
            (
                ours,
                "onnxruntime",
                'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n',
            ),
            (theirs, "python", ""),
        ):
            version = repo / model.name / "1"
            version.mkdir(parents=True)
            shutil.copy(base / model.name / "1" / "model.onnx", version / "model.onnx")
            text = CONFIG.format(
                name=model.name, backend=backend, dims=dims, out=model.out, extra=extra
            )
            (repo / model.name / "config.pbtxt").write_text(text)
            if backend == "python":
                (version / "model.py").write_text(MODEL_PY.format(site=str(site)))
    return ours, theirs


class Server:
    """One server process on free ports; ``metrics`` lists every process's metrics port."""

    def __init__(self, label: str, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.label = label
        self.http, self.grpc, self.metrics_port = _free_port(), _free_port(), _free_port()
        command = [
            part.format(http=self.http, grpc=self.grpc, metrics=self.metrics_port)
            for part in command
        ]
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{label} exited; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready"):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            self.stop()
            raise RuntimeError(f"{label} not ready in 120 s; see {log}")

    def metrics(self) -> list[int]:
        """Our worker logs each process's metrics port; Triton has one."""
        found = [int(p) for p in re.findall(r"metrics on (\d+)", self.log.read_text())]
        return found or [self.metrics_port]

    def counts(self, model: str) -> tuple[float, float]:
        inferences = executions = 0.0
        for port in self.metrics():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            for name, value in re.findall(
                rf'^(nv_inference_count|nv_inference_exec_count)\{{[^}}]*model="{model}"[^}}]*\}}'
                r" ([0-9.e+]+)$",
                text,
                flags=re.M,
            ):
                if name == "nv_inference_count":
                    inferences += float(value)
                else:
                    executions += float(value)
        return inferences, executions

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def servers(
    ours: Path, theirs: Path, triton: Path | None, cache: Path
) -> list[tuple[str, list[str], dict[str, str]]]:
    worker = [
        str(BIN / "polyserve-worker"),
        "--model-repository",
        str(ours),
        "--host",
        "127.0.0.1",
        "--http-port",
        "{http}",
        "--grpc-port",
        "{grpc}",
        "--metrics-port",
        "{metrics}",
    ]
    out = [
        ("polyserve native", [*worker, "--grpc-transport", "native"], {}),
        ("polyserve aio", [*worker, "--grpc-transport", "aio"], {}),
        (
            "polyserve native, 2 processes",
            [*worker, "--grpc-transport", "native", "--workers", "2"],
            {},
        ),
    ]
    if triton is not None:
        out.append(
            (
                "triton",
                [
                    str(triton / "bin" / "tritonserver"),
                    "--model-repository",
                    str(theirs),
                    "--backend-directory",
                    str(triton / "backends"),
                    "--http-port",
                    "{http}",
                    "--grpc-port",
                    "{grpc}",
                    "--metrics-port",
                    "{metrics}",
                    "--disable-auto-complete-config",
                    "--log-info",
                    "false",
                ],
                {"LD_LIBRARY_PATH": str(cache / "libs")},
            )
        )
    return out


def drive(
    server: Server, model: Model, mode: str, c: int, warmup: float, duration: float
) -> dict[str, Any]:
    before = server.counts(model.name)
    port = server.http if mode == "http-binary" else server.grpc
    command = [
        sys.executable,
        str(ROOT / "bench" / "closedloop.py"),
        "--url",
        f"127.0.0.1:{port}",
        "--mode",
        mode,
        "--model",
        model.name,
        "--shape",
        ",".join(map(str, model.shape)),
        "--concurrency",
        str(c),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        "--watch-pid",
        str(server.process.pid),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    after = server.counts(model.name)
    executions = after[1] - before[1]
    result["batch"] = (after[0] - before[0]) / executions if executions else float("nan")
    rate = result["infer_per_s"]
    result["us_per_inf"] = 1e6 * result["server_cpu"] / rate if rate else float("nan")
    return result


def wait_quiet(limit: float, seconds: float) -> float:
    """Wait until the 1-minute load average is below ``limit``; give up after ``seconds``."""
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        print(f"   waiting for a quiet machine: load {os.getloadavg()[0]:.2f}", flush=True)
        time.sleep(15)
    return os.getloadavg()[0]


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    labels = list(dict.fromkeys(r["server"] for r in rows))
    lines = [
        "## Peers: our worker and Triton side by side (issue 12)",
        "",
        f"Generated by `bench/peers.py` (`make bench-peers`): {meta['rounds']} interleaved "
        f"rounds of {meta['warmup']:.0f} s warm-up + {meta['duration']:.0f} s measured per "
        "point, the median round shown; closed loop from one client process "
        "(`bench/closedloop.py`) on the same 2 cores. Both serve the same ONNX files with "
        "max batch 32, a 500 us batching window, one instance and one intra-op thread; Triton "
        f"{meta['triton'] or '(not available here)'} runs them through its python backend "
        "(ONNX Runtime in `model.py`): its native ONNX Runtime backend would be faster and is "
        "not available as a wheel. `us/inf` = CPU time of the server's whole process tree per "
        "inference; `batch` = inferences / executions from each process's metrics. "
        f"1-min load average at start {meta['load_start']:.2f}, at end {meta['load_end']:.2f}.",
        "",
        "| model | protocol | c | server | infer/s | p50 ms | p95 ms | batch | server CPU "
        "| us/inf | vs Triton | runs (infer/s) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model, mode, c in [(m.name, mode, c) for m, mode, c in POINTS]:
        triton = [
            r
            for r in rows
            if (r["model"], r["mode"], r["c"], r["server"]) == (model, mode, c, "triton")
        ]
        base = statistics.median(r["infer_per_s"] for r in triton) if triton else None
        for label in labels:
            runs = [
                r
                for r in rows
                if (r["model"], r["mode"], r["c"], r["server"]) == (model, mode, c, label)
            ]
            if not runs:
                continue
            runs.sort(key=lambda r: r["infer_per_s"])
            mid = runs[len(runs) // 2]
            ratio = f"{mid['infer_per_s'] / base:.2f}" if base else "-"
            lines.append(
                f"| {model} | {mode} | {c} | {label} | {mid['infer_per_s']:.0f} | "
                f"{mid['p50_ms']:.2f} | {mid['p95_ms']:.2f} | {mid['batch']:.1f} | "
                f"{100 * mid['server_cpu']:.0f}% | {mid['us_per_inf']:.0f} | {ratio} | "
                + ", ".join(f"{r['infer_per_s']:.0f}" for r in runs)
                + " |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "polyserve-peers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--quiet", type=float, default=0.5, help="1-min load to wait for")
    parser.add_argument("--quiet-wait", type=float, default=1800, help="seconds to wait at most")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--only", action="append", default=[], help="server labels to run")
    args = parser.parse_args(argv)
    triton = None
    if not args.no_triton:
        try:
            triton = prepare_triton(args.cache)
        except (subprocess.CalledProcessError, OSError, StopIteration) as exc:
            print(f"   Triton not available here ({exc}); our worker alone", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="polyserve-peers-") as tmp:
        scratch = Path(tmp)
        ours, theirs = repositories(scratch, args.cache / "site")
        plan = servers(ours, theirs, triton, args.cache)
        if args.only:
            plan = [p for p in plan if p[0] in args.only]
        load_start = wait_quiet(args.quiet, args.quiet_wait)
        for round_number in range(args.rounds):
            for label, command, env in plan:
                log = scratch / f"{label.replace(' ', '_').replace(',', '')}-{round_number}.log"
                server = Server(label, command, log, env)
                try:
                    for model, mode, c in POINTS:
                        load = os.getloadavg()[0]
                        result = drive(server, model, mode, c, args.warmup, args.duration)
                        rows.append(
                            {
                                **result,
                                "server": label,
                                "model": model.name,
                                "mode": mode,
                                "c": c,
                                "round": round_number,
                                "load": load,
                            }
                        )
                        print(
                            f"   [{round_number}] {label:30s} {model.name} {mode:11s} c={c:<2d}"
                            f" {result['infer_per_s']:6.0f} infer/s p95 {result['p95_ms']:6.2f}"
                            f" batch {result['batch']:4.1f} {result['us_per_inf']:4.0f} us/inf"
                            f" errors {result['errors']} load {load:.2f}",
                            flush=True,
                        )
                finally:
                    server.stop()
    meta = {
        "rounds": args.rounds,
        "warmup": args.warmup,
        "duration": args.duration,
        "triton": "2.51 (nvidia-pytriton 0.7.0)" if triton else None,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }
    bench_run.write_section(args.out, "peers", render(rows, meta))
    (args.out.parent / "peers.json").write_text(json.dumps(rows, indent=1))
    print(f"== wrote {args.out} (section peers) and bench/peers.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

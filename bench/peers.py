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


def prepare_perf_analyzer(cache: Path) -> list[str]:
    """perf_analyzer from its PyPI wheel (glibc 2.38) through Debian 13's loader and
    libraries in a sysroot (shared/design/testing-k8s.md); the command to start it."""
    root = cache / "perf_analyzer"
    sysroot = root / "sysroot"
    libs = sysroot / "usr" / "lib" / "x86_64-linux-gnu"
    binary = root / "wheel" / "perf_analyzer" / "bin" / "perf_analyzer"
    if not binary.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_38_x86_64",
                "perf-analyzer",
                "-d",
                str(root),
            ],
            check=True,
        )
        with zipfile.ZipFile(next(root.glob("perf_analyzer-*.whl"))) as archive:
            archive.extractall(root / "wheel")
        binary.chmod(0o755)
    if not (libs / "ld-linux-x86-64.so.2").exists():
        apt = root / "apt"
        for folder in ("sources", "lists/partial", "cache/archives/partial"):
            (apt / folder).mkdir(parents=True, exist_ok=True)
        sources = "".join(
            path.read_text() for path in Path("/etc/apt/sources.list.d").glob("*.sources")
        )
        trixie = re.sub(r"(?m)^Suites: bookworm bookworm-updates$", "Suites: trixie", sources)
        (apt / "sources" / "trixie.sources").write_text(trixie)
        options = [
            "-o",
            f"Dir::Etc::SourceParts={apt / 'sources'}",
            "-o",
            "Dir::Etc::SourceList=/dev/null",
            "-o",
            f"Dir::State::Lists={apt / 'lists'}",
            "-o",
            f"Dir::Cache={apt / 'cache'}",
        ]
        subprocess.run(["apt-get", *options, "update"], check=True, capture_output=True)
        debs = root / "debs"
        debs.mkdir(exist_ok=True)
        subprocess.run(
            [
                "apt-get",
                *options,
                "download",
                "libc6",
                "libstdc++6",
                "libgcc-s1",
                "libssl3t64",
                "zlib1g",
            ],
            check=True,
            cwd=debs,
            capture_output=True,
        )
        for deb in debs.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(sysroot)], check=True)
    library_path = f"{libs}:{binary.parent.parent / 'lib'}"
    return [str(libs / "ld-linux-x86-64.so.2"), "--library-path", library_path, str(binary)]


def perf_analyzer(
    command: list[str], server: Server, model: Model, c: int, streaming: bool, scratch: Path
) -> dict[str, Any]:
    """One perf_analyzer point (its own windows until stable): infer/s and p95 ms."""
    out = scratch / "pa.csv"
    args = [
        *command,
        "-m",
        model.name,
        "-u",
        f"127.0.0.1:{server.grpc}",
        "-i",
        "grpc",
        "--concurrency-range",
        str(c),
        "--measurement-interval",
        "3000",
        "--stability-percentage",
        "25",
        "--max-trials",
        "6",
        "-f",
        str(out),
    ]
    if streaming:
        args.append("--streaming")
    subprocess.run(args, check=True, capture_output=True, timeout=180)
    header, row = out.read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(","), strict=True))
    return {
        "infer_per_s": float(values["Inferences/Second"]),
        "p95_ms": float(values["p95 latency"]) / 1000.0,
    }


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
    ours: Path,
    theirs: Path,
    triton: Path | None,
    cache: Path,
    refs: tuple[tuple[str, Path], ...] = (),
) -> list[tuple[str, list[str], dict[str, str]]]:
    """(label, command, environment) of every server to compare; ``refs``: the worker
    package as of other commits (label suffix ``@REF``)."""
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
        # the fronts before the fast ones: grpc.aio (the gRPC default) and aiohttp
        (
            "polyserve aio, aiohttp",
            [*worker, "--grpc-transport", "aio", "--http-transport", "aiohttp"],
            {},
        ),
        (
            "polyserve native, 2 processes",
            [*worker, "--grpc-transport", "native", "--workers", "2"],
            {},
        ),
    ]
    for ref, tree in refs:
        command = [sys.executable, "-m", "polyserve_worker.main", *worker[1:]]
        out.append((f"polyserve native @{ref}", command, {"PYTHONPATH": str(tree)}))
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


def _median(
    rows: list[dict[str, Any]], server: str, model: str, mode: str
) -> dict[str, Any] | None:
    """The median run (by infer/s) of one server at one point."""
    runs = sorted(
        (r for r in rows if (r["server"], r["model"], r["mode"]) == (server, model, mode)),
        key=lambda r: r["infer_per_s"],
    )
    return runs[len(runs) // 2] if runs else None


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for issue 12; met is None where a row is missing."""
    out: list[tuple[str, str, bool | None]] = []

    def get(server: str, model: str, mode: str) -> dict[str, Any] | None:
        return _median(rows, server, model, mode)

    native, triton, two = "polyserve native", "triton", "polyserve native, 2 processes"
    grpc, http = get(native, "mlp", "grpc"), get(native, "mlp", "http-binary")
    if grpc and http:
        ratio = grpc["us_per_inf"] / http["us_per_inf"]
        out.append(
            (
                "mlp: gRPC worker CPU per inference within 1.3x of binary HTTP's",
                f"{ratio:.2f}x ({grpc['us_per_inf']:.0f} vs {http['us_per_inf']:.0f} us/inf)",
                ratio <= 1.3,
            )
        )
    for model, mode, floor, name in (
        ("mlp", "grpc", 0.9, "mlp gRPC c=32 >= 0.9x Triton, p95 no worse"),
        ("cnn", "grpc", 1.0, "cnn gRPC c=8 >= 1.0x Triton"),
        ("mlp", "http-binary", 1.0, "mlp binary HTTP c=32 >= 1.0x Triton"),
        ("cnn", "http-binary", 1.0, "cnn binary HTTP c=8 >= 1.0x Triton"),
    ):
        ours, theirs = get(native, model, mode), get(triton, model, mode)
        if ours and theirs:
            ratio = ours["infer_per_s"] / theirs["infer_per_s"]
            met = ratio >= floor
            measured = f"{ratio:.2f}x ({ours['infer_per_s']:.0f} vs {theirs['infer_per_s']:.0f})"
            if "p95" in name:
                met = met and ours["p95_ms"] <= theirs["p95_ms"]
                measured += f", p95 {ours['p95_ms']:.1f} vs {theirs['p95_ms']:.1f} ms"
            out.append((name, measured, met))
    stream = get(native, "mlp", "grpc-stream")
    if stream and grpc:
        ratio = stream["infer_per_s"] / grpc["infer_per_s"]
        out.append(
            (
                "ModelStreamInfer at least as fast as unary (mlp, c=32)",
                f"{ratio:.2f}x ({stream['infer_per_s']:.0f} vs {grpc['infer_per_s']:.0f} infer/s)",
                ratio >= 1.0,
            )
        )
    scaled = get(two, "mlp", "grpc")
    if scaled and grpc:
        ratio = scaled["us_per_inf"] / grpc["us_per_inf"]
        out.append(
            (
                "2 processes: worker CPU per inference does not grow, batches form (mlp gRPC)",
                f"{scaled['us_per_inf']:.0f} vs {grpc['us_per_inf']:.0f} us/inf ({ratio:.2f}x), "
                f"batch {scaled['batch']:.1f} vs {grpc['batch']:.1f}",
                ratio <= 1.05 and scaled["batch"] > 1.5,
            )
        )
    return out


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
        "`polyserve native`: `--grpc-transport native` and the default HTTP front "
        "(httptools); `polyserve aio, aiohttp`: grpc.aio (the gRPC default) and the aiohttp "
        "HTTP front. "
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
    analyzed = [r for r in rows if r["mode"].startswith("pa-")]
    if analyzed:
        lines += [
            "",
            "perf_analyzer 2.60 (its own windows until stable), mlp at concurrency 32, the "
            "same servers in the same rounds: a cross-check of the load generator.",
            "",
            "| server | perf_analyzer mode | infer/s | p95 ms | vs Triton |",
            "|---|---|---:|---:|---:|",
        ]
        for mode, label in (("pa-grpc", "gRPC"), ("pa-grpc-stream", "gRPC --streaming")):
            base = _median(rows, "triton", "mlp", mode)
            for server in labels:
                mid = _median(rows, server, "mlp", mode)
                if mid is None:
                    continue
                ratio = f"{mid['infer_per_s'] / base['infer_per_s']:.2f}" if base else "-"
                lines.append(
                    f"| {server} | {label} | {mid['infer_per_s']:.0f} | {mid['p95_ms']:.2f} "
                    f"| {ratio} |"
                )
    lines += ["", "| target (issue 12) | measured | |", "|---|---|---|"]
    for name, measured, met in targets(rows):
        verdict = "-" if met is None else ("met" if met else "**missed**")
        lines.append(f"| {name} | {measured} | {verdict} |")
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
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument("--only", action="append", default=[], help="server labels to run")
    parser.add_argument(
        "--ref", action="append", default=[], help="also run the worker as of this git commit"
    )
    args = parser.parse_args(argv)
    triton = None
    if not args.no_triton:
        try:
            triton = prepare_triton(args.cache)
        except (subprocess.CalledProcessError, OSError, StopIteration) as exc:
            print(f"   Triton not available here ({exc}); our worker alone", flush=True)
    analyzer = None
    if not args.no_perf_analyzer:
        try:
            analyzer = prepare_perf_analyzer(args.cache)
        except (subprocess.CalledProcessError, OSError, StopIteration) as exc:
            print(f"   perf_analyzer not available here ({exc})", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="polyserve-peers-") as tmp:
        scratch = Path(tmp)
        ours, theirs = repositories(scratch, args.cache / "site")
        refs = []
        for ref in args.ref:
            # The worker package as it was at a commit, next to today's: an A/B of a change.
            tree = scratch / "refs" / ref
            tree.mkdir(parents=True)
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", ref, "worker"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            refs.append((ref, tree / "worker"))
        plan = servers(ours, theirs, triton, args.cache, tuple(refs))
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
                    for streaming in (False, True) if analyzer else ():
                        assert analyzer is not None
                        mode = "pa-grpc-stream" if streaming else "pa-grpc"
                        try:
                            result = perf_analyzer(analyzer, server, MLP, 32, streaming, scratch)
                        except (subprocess.SubprocessError, OSError, ValueError) as exc:
                            print(f"   perf_analyzer failed against {label}: {exc}", flush=True)
                            continue
                        rows.append(
                            {
                                **result,
                                "server": label,
                                "model": "mlp",
                                "mode": mode,
                                "c": 32,
                                "round": round_number,
                                "load": os.getloadavg()[0],
                            }
                        )
                        print(
                            f"   [{round_number}] {label:30s} mlp {mode:14s} c=32 "
                            f"{result['infer_per_s']:6.0f} infer/s p95 {result['p95_ms']:6.2f}",
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

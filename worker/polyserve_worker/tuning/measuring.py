"""Measuring one candidate: a real worker process, its config loaded through the repository
API, and a closed-loop concurrency ramp driven by the benchmarks' load generator.

One ``polyserve-worker`` serves the whole search, started in ``explicit`` model control mode
on the user's repository (read-only: nothing is written there), and each candidate is loaded
as a config override (Triton's ``load`` with a ``config`` parameter), so a trial costs a model
load, not a process start. The worker is a separate process, as in production, so the load
generator's client work and the server's do not share one interpreter.

A trial's measurement is a ramp: concurrency 1, 2, 4, ... each for one short window (after a
warm-up), until the p95 latency passes the SLO, throughput stops growing (``patience`` + 1
windows in a row without a 5% gain: on a shared machine one short window below the best is
as likely noise as saturation, and ending there read configs far below their capacity: the
bundled mlp's at 737 infer/s at c=2 in one run, 1482 in the next), or the deadline comes. Its
capacity is the best throughput among the windows whose p95 met the SLO without errors:
closed-loop points, so a conservative reading of what one replica sustains. After each
window the caller is told (the search reports it to Optuna, which may prune the trial).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyserve_worker import config as model_config
from polyserve_worker import settings as worker_settings
from polyserve_worker.tuning import loadgen

logger = logging.getLogger(__name__)

#: Concurrencies a ramp walks through, in order.
CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64, 128)
#: A window whose throughput is not this much above the best before it ends the ramp.
SATURATED_GAIN = 1.05


class MeasureError(Exception):
    """The worker could not start or could not load a candidate; the message says why."""


@dataclass(frozen=True)
class Point:
    """One window of a ramp: throughput and latency at one concurrency."""

    concurrency: int
    infer_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int

    def meets(self, slo_ms: float) -> bool:
        return self.errors == 0 and self.p95_ms == self.p95_ms and self.p95_ms <= slo_ms


@dataclass
class Curve:
    """A trial's throughput-latency curve, one point per concurrency."""

    points: list[Point] = field(default_factory=list)
    cut: bool = False
    """The deadline ended the ramp before it had found its end."""

    def best(self, slo_ms: float) -> Point | None:
        """The highest-throughput point whose p95 met the SLO (the capacity), if any."""
        meeting = [p for p in self.points if p.meets(slo_ms)]
        return max(meeting, key=lambda p: p.infer_per_s) if meeting else None

    def capacity(self, slo_ms: float) -> float:
        best = self.best(slo_ms)
        return best.infer_per_s if best is not None else 0.0

    def latency_at(self, rate: float) -> float | None:
        """The p95 at ``rate`` requests/s, interpolated along the curve; None when the curve
        never reached that rate."""
        ordered = sorted(self.points, key=lambda p: p.infer_per_s)
        previous: Point | None = None
        for point in ordered:
            if point.infer_per_s >= rate:
                if previous is None or point.infer_per_s == previous.infer_per_s:
                    return point.p95_ms
                share = (rate - previous.infer_per_s) / (point.infer_per_s - previous.infer_per_s)
                return previous.p95_ms + share * (point.p95_ms - previous.p95_ms)
            previous = point
        return None


@dataclass(frozen=True)
class RampPlan:
    """How long each window lasts and where the ramp may go."""

    warmup_s: float = 0.3
    window_s: float = 1.0
    concurrencies: tuple[int, ...] = CONCURRENCIES
    patience: int = 1
    """Windows without a gain tolerated before the ramp ends as saturated."""

    def step_seconds(self) -> float:
        return self.warmup_s + self.window_s + 0.1


#: Told of each window: (step index, the curve so far); returns False to stop the ramp.
OnStep = Callable[[int, Curve], bool]


def ramp(
    spec: loadgen.LoadSpec,
    slo_ms: float,
    plan: RampPlan,
    deadline: float,
    on_step: OnStep,
    clock: Callable[[], float] = time.monotonic,
) -> Curve:
    """Walk the concurrencies of ``plan`` against ``spec`` (its concurrency is replaced);
    see the module docstring for when it stops."""
    curve = Curve()
    for step, concurrency in enumerate(plan.concurrencies):
        if clock() + plan.step_seconds() > deadline:
            curve.cut = True
            break
        one = loadgen.LoadSpec(
            url=spec.url,
            mode=spec.mode,
            model=spec.model,
            input_name=spec.input_name,
            output_name=spec.output_name,
            shape=spec.shape,
            concurrency=concurrency,
            warmup_s=plan.warmup_s,
            duration_s=plan.window_s,
            watch_pid=spec.watch_pid,
            inputs=spec.inputs,
        )
        result = loadgen.run_load(one)
        point = Point(
            concurrency=concurrency,
            infer_per_s=result.infer_per_s,
            p50_ms=result.p50_ms,
            p95_ms=result.p95_ms,
            p99_ms=result.p99_ms,
            errors=result.errors,
        )
        curve.points.append(point)
        if not on_step(step, curve):
            break
        if ends(curve.points, slo_ms, plan.patience):
            break
    return curve


def ends(points: Sequence[Point], slo_ms: float, patience: int) -> bool:
    """Whether a ramp ends after its last window: that window missed the SLO (more clients
    only queue longer), or it and the ``patience`` windows before it each gained less than
    ``SATURATED_GAIN`` over the best before them (saturated: more clients only add latency)."""
    if not points[-1].meets(slo_ms):
        return True
    flat, best = 0, 0.0
    for point in points:
        flat = flat + 1 if best and point.infer_per_s < best * SATURATED_GAIN else 0
        best = max(best, point.infer_per_s)
    return flat > patience


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Worker:
    """One ``polyserve-worker`` process on local ports, in explicit model control mode."""

    def __init__(self, repository: Path, log: Path) -> None:
        self.repository = repository
        self.http = f"127.0.0.1:{free_port()}"
        self.grpc = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self._log_path = log
        self.process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def start(self, timeout: float = 120.0) -> None:
        flags = worker_settings.to_args(
            {
                "model_repository": str(self.repository),
                "host": "127.0.0.1",
                "http_port": int(self.http.rsplit(":", 1)[1]),
                "grpc_port": int(self.grpc.rsplit(":", 1)[1]),
                "metrics_port": int(self.metrics.rsplit(":", 1)[1]),
                "model_control_mode": "explicit",
                "exit_timeout_secs": 5.0,
                "exit_idle_secs": 0.05,
            }
        )
        command = [sys.executable, "-m", "polyserve_worker.main", *flags]
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MeasureError(
                    f"the worker exited with {self.process.returncode} at start: "
                    f"{self._last_words()} (all of it in {self._log_path})"
                )
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise MeasureError(f"the worker was not ready within {timeout:.0f} s")
        import tritonclient.grpc as grpcclient

        self._client = grpcclient.InferenceServerClient(self.grpc)

    def _last_words(self) -> str:
        try:
            lines = self._log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "no log"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def load(self, name: str, config: Any | None) -> float:
        """Load (or reload) model ``name`` with ``config`` (a ModelConfig; None: the one in
        its folder); seconds taken."""
        from tritonclient.utils import InferenceServerException

        began = time.monotonic()
        text = json.dumps(model_config.to_dict(config)) if config is not None else None
        try:
            self._client.load_model(name, config=text)
        except InferenceServerException as exc:
            raise MeasureError(f"the worker could not load it: {exc.message()}") from exc
        return time.monotonic() - began

    def config(self, name: str) -> dict[str, Any]:
        """The model's config as the worker completed it (Triton's JSON form)."""
        found: dict[str, Any] = self._client.get_model_config(name, as_json=True)["config"]
        return found

    def metadata(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._client.get_model_metadata(name, as_json=True)
        return found

    def infer(self, name: str, inputs: Sequence[tuple[loadgen.Tensor, Any]]) -> dict[str, Any]:
        """One request; every output as a numpy array."""
        import tritonclient.grpc as grpcclient

        wire = []
        for tensor, array in inputs:
            item = grpcclient.InferInput(tensor.name, list(tensor.shape), tensor.datatype)
            item.set_data_from_numpy(array)
            wire.append(item)
        result = self._client.infer(name, wire)
        response = result.get_response(as_json=True)
        return {o["name"]: np.array(result.as_numpy(o["name"])) for o in response["outputs"]}

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def request_inputs(metadata: dict[str, Any], batched: bool) -> tuple[loadgen.Tensor, ...]:
    """The inputs of one request (batch 1, variable dimensions 1) from the model's metadata;
    a string input is refused: the load generator makes numeric tensors only."""
    found = []
    for tensor in metadata.get("inputs") or []:
        datatype = tensor["datatype"]
        if datatype not in loadgen.DTYPES:
            raise MeasureError(
                f"input {tensor['name']!r} is {datatype}: the tuner's load is numeric tensors only"
            )
        dims = [int(d) for d in tensor["shape"]]
        if batched and dims:
            dims = dims[1:]
        shape = ([1] if batched else []) + [d if d > 0 else 1 for d in dims]
        found.append(loadgen.Tensor(tensor["name"], datatype, tuple(shape)))
    if not found:
        raise MeasureError("the model's metadata lists no inputs")
    return tuple(found)

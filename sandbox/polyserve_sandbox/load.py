"""``polyserve sandbox load``: steady traffic at a chosen rate, to watch the operator react.

An open-loop generator: requests leave on a fixed schedule (``rate`` per second) whatever
the answers' latency, as real users do, so a saturated model shows rising latency and not a
falling send rate. At most ``concurrency`` requests are in flight; a request whose turn
comes when all are busy is counted as ``skipped`` (the client, not the server, ran out),
never silently delayed. Inputs are random tensors shaped from the model's own metadata
(``/v2/models/NAME``), batch 1, so any model with fixed-size numeric inputs can be loaded.
Every ``every`` seconds it prints one line of progress; at the end, the totals. It exits 1
when a request failed, so a script can tell.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Numpy dtypes of the protocol's numeric datatypes a random input can be made of.
_DTYPES = {
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


class LoadError(Exception):
    """The load cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: list[int]


def inputs_of(metadata: dict[str, Any], batched: bool) -> list[InputSpec]:
    """The inputs one request sends: each metadata input at batch 1, variable dimensions 1."""
    specs = []
    for tensor in metadata.get("inputs") or []:
        datatype = tensor["datatype"]
        if datatype not in _DTYPES:
            raise LoadError(
                f"input {tensor['name']!r} is {datatype}: the load generator makes numeric "
                "tensors only; use perf_analyzer with --input-data for this model"
            )
        dims = [int(d) for d in tensor["shape"]]
        if batched and dims and dims[0] == -1:
            dims = dims[1:]
        shape = ([1] if batched else []) + [d if d > 0 else 1 for d in dims]
        specs.append(InputSpec(tensor["name"], datatype, shape))
    if not specs:
        raise LoadError("the model's metadata lists no inputs")
    return specs


def random_tensor(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    dtype = _DTYPES[spec.datatype]
    if dtype is np.bool_:
        return rng.integers(0, 2, spec.shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 8, spec.shape).astype(dtype)
    return rng.random(spec.shape, dtype=np.float32).astype(dtype)


@dataclass
class Tally:
    """Outcomes so far; thread-safe."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, latency_ms: float | None, error: str | None) -> None:
        with self._lock:
            if error is None and latency_ms is not None:
                self.ok += 1
                self.latencies_ms.append(latency_ms)
            else:
                self.failed += 1
                key = (error or "unknown")[:160]
                self.errors[key] = self.errors.get(key, 0) + 1

    def skip(self) -> None:
        with self._lock:
            self.skipped += 1

    def take(self) -> Tally:
        """What was counted since the last take (and start over)."""
        with self._lock:
            out = Tally(self.ok, self.failed, self.skipped, self.latencies_ms, self.errors)
            self.ok, self.failed, self.skipped, self.latencies_ms, self.errors = 0, 0, 0, [], {}
            return out

    def add(self, other: Tally) -> None:
        with self._lock:
            self.ok += other.ok
            self.failed += other.failed
            self.skipped += other.skipped
            self.latencies_ms.extend(other.latencies_ms)
            for error, count in other.errors.items():
                self.errors[error] = self.errors.get(error, 0) + count


def p95(latencies_ms: list[float]) -> float | None:
    return float(np.percentile(latencies_ms, 95)) if latencies_ms else None


def run(
    address: str,
    model: str,
    *,
    rate: float,
    seconds: float,
    concurrency: int = 16,
    protocol: str = "http",
    every: float = 5.0,
    log: Callable[[str], None] = print,
) -> int:
    """Send ``rate`` requests per second to ``model`` at ``address`` for ``seconds``; print
    progress every ``every`` seconds. Returns 0, or 1 when a request failed."""
    if rate <= 0 or seconds <= 0 or concurrency < 1:
        raise LoadError("--rate and --for must be above 0, --concurrency at least 1")
    module = _client_module(protocol)
    probe = module.InferenceServerClient(address)
    try:
        if not probe.is_model_ready(model):
            raise LoadError(
                f"model {model!r} is not ready at {address}: wait for `kubectl get im` to say "
                "Ready, or name the model with --model"
            )
        # HTTP answers JSON already; gRPC's protobuf answers become the same JSON.
        extra = {"as_json": True} if protocol == "grpc" else {}
        metadata = probe.get_model_metadata(model, **extra)
        config = probe.get_model_config(model, **extra)
    except LoadError:
        raise
    except Exception as exc:  # tritonclient raises its own error types per protocol
        raise LoadError(f"cannot read model {model!r} at {address}: {exc}") from exc
    finally:
        probe.close()
    config = config.get("config", config)
    batched = int(config.get("max_batch_size", config.get("maxBatchSize")) or 0) > 0
    specs = inputs_of(metadata, batched)

    local = threading.local()
    tally = Tally()
    rng = np.random.default_rng(0)
    tensors = [random_tensor(s, rng) for s in specs]
    in_flight = threading.BoundedSemaphore(concurrency)

    def call() -> None:
        try:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = module.InferenceServerClient(address)
            request = []
            for spec, data in zip(specs, tensors, strict=True):
                tensor = module.InferInput(spec.name, spec.shape, spec.datatype)
                tensor.set_data_from_numpy(data)
                request.append(tensor)
            began = time.perf_counter()
            try:
                client.infer(model, request)
            except Exception as exc:  # every failure is counted with its words
                tally.record(None, f"{type(exc).__name__}: {exc}")
            else:
                tally.record((time.perf_counter() - began) * 1000, None)
        finally:
            in_flight.release()

    log(
        f"loading {model} at {address} over {protocol}: {rate:g} requests/s for {seconds:g} s "
        f"(at most {concurrency} in flight)"
    )
    totals = Tally()
    started = time.monotonic()
    next_report = started + every
    last = started
    sent = 0
    with ThreadPoolExecutor(concurrency, thread_name_prefix="load") as pool:
        while True:
            now = time.monotonic()
            if now - started >= seconds:
                break
            due = started + sent / rate
            if due > now:
                time.sleep(min(due - now, max(next_report - now, 0.0)))
            elif in_flight.acquire(blocking=False):
                sent += 1
                pool.submit(call)
            else:
                sent += 1
                tally.skip()
            if time.monotonic() >= next_report:
                last = _report(tally, totals, started, last, log)
                next_report += every
    _report(tally, totals, started, last, log)
    line = f"done: {totals.ok} ok, {totals.failed} failed, {totals.skipped} skipped"
    tail = p95(totals.latencies_ms)
    if tail is not None:
        line += f", p95 {tail:.1f} ms"
    log(line)
    for error, count in sorted(totals.errors.items(), key=lambda kv: -kv[1])[:5]:
        log(f"  {count} x {error}")
    return 1 if totals.failed else 0


def _report(
    tally: Tally, totals: Tally, started: float, last: float, log: Callable[[str], None]
) -> float:
    """One line for what was counted since ``last``; returns the time of this report."""
    now = time.monotonic()
    part = tally.take()
    totals.add(part)
    tail = p95(part.latencies_ms)
    log(
        f"{now - started:6.0f}s  {part.ok / max(now - last, 1e-3):7.1f} ok/s  "
        f"failed {part.failed}  skipped {part.skipped}"
        + (f"  p95 {tail:.1f} ms" if tail is not None else "")
    )
    return now


def _client_module(protocol: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module

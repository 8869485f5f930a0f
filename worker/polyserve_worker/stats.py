"""Cumulative per-model-version statistics: one source for the statistics extension and metrics.

Counters are Triton's (counts plus cumulative nanoseconds); histograms are ours, kept as
fixed cumulative buckets so the Prometheus exposition can be built at scrape time and the
hot path stays a few integer additions. Nothing here knows about Prometheus or transports.
"""

from __future__ import annotations

import bisect
import copy
import time
from dataclasses import dataclass, field
from typing import Any

#: Latency buckets in seconds: 100 us .. 10 s, dense where serving latencies live.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.observations += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs ending with +Inf."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Everything Triton's statistics extension reports for one model version."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    pending: int = 0
    request_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    compute_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))

    def record_request(self, ok: bool, duration_ns: int) -> None:
        if ok:
            self.success.add(duration_ns)
        else:
            self.fail.add(duration_ns)
        self.request_seconds.observe(duration_ns / 1e9)
        # Statistics report wall-clock time of the last inference, as Triton does.
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_execution(
        self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.execution_count += 1
        self.inference_count += batch_size
        self.compute_input.add(input_ns, requests)
        self.compute_infer.add(infer_ns, requests)
        self.compute_output.add(output_ns, requests)
        batch = self.batches.setdefault(batch_size, BatchStats())
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)
        self.compute_seconds.observe((input_ns + infer_ns + output_ns) / 1e9)
        self.batch_size.observe(batch_size)

    def record_queue(self, ns: int) -> None:
        self.queue.add(ns)
        self.queue_seconds.observe(ns / 1e9)

    def to_dict(self) -> dict[str, object]:
        """The statistics extension's JSON shape for this version."""

        def d(x: Duration) -> dict[str, int]:
            return {"count": x.count, "ns": x.ns}

        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": d(self.success),
                "fail": d(self.fail),
                "queue": d(self.queue),
                "compute_input": d(self.compute_input),
                "compute_infer": d(self.compute_infer),
                "compute_output": d(self.compute_output),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": d(b.compute_input),
                    "compute_infer": d(b.compute_infer),
                    "compute_output": d(b.compute_output),
                }
                for size, b in sorted(self.batches.items())
            ],
        }


def merged(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The statistics extension's answers of several processes of one worker (``--workers
    N``) as one: each model version's counts and durations added up, batch statistics by
    batch size, the last inference the latest of them. Versions in the first part's order,
    then any only others have."""
    order: list[tuple[str, str]] = []
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for part in parts:
        for entry in part:
            key = (str(entry["name"]), str(entry["version"]))
            if key not in found:
                order.append(key)
                found[key] = copy.deepcopy(entry)
                continue
            into = found[key]
            into["last_inference"] = max(into["last_inference"], entry["last_inference"])
            for field_ in ("inference_count", "execution_count"):
                into[field_] += entry[field_]
            for name, duration in entry["inference_stats"].items():
                _add(into["inference_stats"].setdefault(name, {"count": 0, "ns": 0}), duration)
            batches = {b["batch_size"]: b for b in into["batch_stats"]}
            for batch in entry["batch_stats"]:
                if batch["batch_size"] not in batches:
                    batches[batch["batch_size"]] = copy.deepcopy(batch)
                    continue
                for name in ("compute_input", "compute_infer", "compute_output"):
                    _add(batches[batch["batch_size"]][name], batch[name])
            into["batch_stats"] = [batches[size] for size in sorted(batches)]
    return [found[key] for key in order]


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    into["count"] += int(more["count"])
    into["ns"] += int(more["ns"])

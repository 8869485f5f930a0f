"""Prometheus metrics with Triton's names and labels, plus the histograms Triton lacks.

Built at scrape time from ``stats`` (the same numbers the statistics extension reports), so
serving pays nothing per scrape-able series. Triton's counters keep their exact names
(``nv_inference_*``, no ``_total`` suffix) and ``model``/``version`` labels so existing
dashboards and alerts work; our histograms use the ``polyserve_`` prefix and aggregate
across pods, so p95/p99 can be computed fleet-wide.

The counters are written here, not by prometheus_client: its text writer names a counter's
HELP and TYPE lines ``<name>_total`` whatever the samples are called, so Triton's names
(samples without ``_total``) would come out untyped to every parser. Written by hand, each
HELP/TYPE line names exactly its samples, as Triton's exposition does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from polyserve_worker import stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name, help, value getter
_COUNTERS: tuple[tuple[str, str, Callable[[stats.ModelStats], float]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        lambda s: s.fail.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (batch elements)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (batches)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
)

_HISTOGRAMS: tuple[tuple[str, str, Callable[[stats.ModelStats], stats.Histogram]], ...] = (
    (
        "polyserve_request_duration_seconds",
        "End-to-end inference request duration",
        lambda s: s.request_seconds,
    ),
    (
        "polyserve_queue_duration_seconds",
        "Time requests wait in the batcher's queue",
        lambda s: s.queue_seconds,
    ),
    (
        "polyserve_compute_duration_seconds",
        "Backend execution time per batch",
        lambda s: s.compute_seconds,
    ),
    ("polyserve_batch_size", "Batch size of each model execution", lambda s: s.batch_size),
)


class StatsCollector:
    """A prometheus_client collector of the gauge and histograms of every loaded version."""

    def __init__(self, source: Callable[[], Iterable[stats.ModelStats]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        versions = list(self._source())
        labels = ["model", "version"]
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels=labels,
        )
        for s in versions:
            pending.add_metric([s.name, s.version], s.pending)
        yield pending
        for hist_name, hist_help, hist_of in _HISTOGRAMS:
            family = HistogramMetricFamily(hist_name, hist_help, labels=labels)
            for s in versions:
                hist = hist_of(s)
                buckets = [(_bound(b), float(c)) for b, c in hist.cumulative()]
                family.add_metric([s.name, s.version], buckets, hist.total)
            yield family


def _bound(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


@dataclass(frozen=True)
class Registry:
    """Where the exposition reads the statistics of every loaded version."""

    source: Callable[[], Iterable[stats.ModelStats]]
    collectors: CollectorRegistry


def registry_for(source: Callable[[], Iterable[stats.ModelStats]]) -> Registry:
    """A registry of our own, so several workers in one process never collide."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(StatsCollector(source))
    return Registry(source, collectors)


def exposition(registry: Registry) -> bytes:
    """The text exposition (format 0.0.4): Triton's counters, then gauge and histograms."""
    versions = list(registry.source())
    lines: list[str] = []
    for name, help_text, getter in _COUNTERS:
        lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} counter")
        for s in versions:
            labels = f'model="{_escape_label(s.name)}",version="{_escape_label(s.version)}"'
            lines.append(f"{name}{{{labels}}} {float(getter(s))!r}")
    counters = ("\n".join(lines) + "\n").encode()
    rest: bytes = generate_latest(registry.collectors)
    return counters + rest


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

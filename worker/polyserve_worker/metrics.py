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

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from polyserve_worker import mirroring, stats

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
                family.add_metric([s.name, s.version], _buckets(hist), hist.total)
            yield family


class MirrorCollector:
    """Request mirroring (``mirroring``): how often a canary's answers agree with ours.

    Written by prometheus_client: its counter names end in ``_total``, as it writes them."""

    def __init__(self, source: Callable[[], Iterable[mirroring.Tally]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        tallies = list(self._source())
        if not tallies:
            return
        labels = ["model", "revision"]
        active = GaugeMetricFamily(
            "polyserve_mirror_active",
            "1 while requests are copied to this revision (the mirror file names it), else 0",
            labels=labels,
        )
        requests = CounterMetricFamily(
            "polyserve_mirror_requests",
            "Copied requests by result: agree, disagree, error (the canary failed or timed "
            "out), dropped (queue full, over the rate, or stopped)",
            labels=[*labels, "result"],
        )
        outputs = CounterMetricFamily(
            "polyserve_mirror_outputs",
            "Compared outputs of copied requests by result: agree, disagree",
            labels=[*labels, "output", "result"],
        )
        diffs = HistogramMetricFamily(
            "polyserve_mirror_max_abs_diff",
            "Largest absolute difference between the canary's and our output, per copy",
            labels=[*labels, "output"],
        )
        latency = HistogramMetricFamily(
            "polyserve_mirror_latency_seconds",
            "Time the canary took to answer a copied request",
            labels=labels,
        )
        # Scrapes run on a thread while the event loop counts: dict(...) copies in one step
        # (a dict that grows while iterated would raise).
        for t in tallies:
            active.add_metric([t.model, t.revision], 1.0 if t.active else 0.0)
            for result, count in dict(t.requests).items():
                requests.add_metric([t.model, t.revision, result], count)
            for (output, result), count in sorted(dict(t.outputs).items()):
                outputs.add_metric([t.model, t.revision, output, result], count)
            for output, hist in sorted(dict(t.max_abs_diff).items()):
                diffs.add_metric([t.model, t.revision, output], _buckets(hist), hist.total)
            latency.add_metric([t.model, t.revision], _buckets(t.latency), t.latency.total)
        yield from (active, requests, outputs, diffs, latency)


def _buckets(hist: stats.Histogram) -> list[tuple[str, float]]:
    return [(_bound(b), float(c)) for b, c in hist.cumulative()]


def _bound(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


@dataclass(frozen=True)
class Registry:
    """Where the exposition reads the statistics of every loaded version."""

    source: Callable[[], Iterable[stats.ModelStats]]
    collectors: CollectorRegistry


def registry_for(
    source: Callable[[], Iterable[stats.ModelStats]],
    mirrored: Callable[[], Iterable[mirroring.Tally]] | None = None,
) -> Registry:
    """A registry of our own, so several workers in one process never collide;
    ``mirrored`` gives the request mirroring tallies, if any."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(StatsCollector(source))
    if mirrored is not None:
        collectors.register(MirrorCollector(mirrored))
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


#: The label that tells the processes of one ``--workers N`` worker apart.
WORKER_LABEL = "worker"


def merged(expositions: Sequence[tuple[str, bytes]]) -> bytes:
    """Several processes' expositions (``--workers N``) as one: (process name, its text).

    Every sample gets a ``worker`` label with its process's name, so no two samples collide
    and a gauge keeps its meaning; ``sum by (model)`` (and the operator's readers, which add
    every sample of a model) count the whole pod. The samples of one metric stay together
    under its HELP and TYPE lines, taken from the first process that has them, as the text
    format requires."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for name, text in expositions:
        family = ""
        label = f'{WORKER_LABEL}="{_escape_label(name)}"'
        for line in text.decode().splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    kept = headers.setdefault(family, [])
                    samples.setdefault(family, [])
                    if not any(h.split(None, 2)[1] == parts[1] for h in kept):
                        kept.append(line)
                continue
            samples.setdefault(family, []).append(_labelled(line, label))
            headers.setdefault(family, [])
    lines: list[str] = []
    for family, rows in samples.items():
        lines += headers.get(family, [])
        lines += rows
    return ("\n".join(lines) + "\n").encode()


def _labelled(line: str, label: str) -> str:
    """A sample line with ``label`` added first to its labels."""
    brace, space = line.find("{"), line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = line[brace + 1 :]
        return f"{line[: brace + 1]}{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{line[:space]}{{{label}}}{line[space:]}"

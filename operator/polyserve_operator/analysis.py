"""Canary analysis: metric samples of the canary and of stable -> a verdict. Pure functions.

A ``Sample`` holds one revision's cumulative counters and histograms, summed over its pods
(Triton's ``nv_inference_request_success`` / ``_failure``, the worker's
``polyserve_request_duration_seconds`` and ``polyserve_queue_duration_seconds`` histograms,
and the mirror's ``polyserve_mirror_requests_total``, which the stable pods count as they
compare the canary's answers with their own). ``Baseline.window`` turns two rounds of
per-pod samples into the traffic of the interval between them (a pod that restarted counts
from zero; a new pod counts whole; a pod that went counts no more). ``measure`` judges one
interval: each metric is computed for the canary (and for stable when a bound is relative),
Inconclusive when the canary saw fewer requests than ``minSamples`` (never a pass, never a
fail), Failed when a bound is broken, Successful otherwise. Quantiles are computed from
histogram buckets exactly as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
REQUEST_DURATION = "polyserve_request_duration_seconds"
QUEUE_DURATION = "polyserve_queue_duration_seconds"
MIRROR = "polyserve_mirror_requests_total"
MIRROR_RESULTS = ("agree", "disagree", "error", "dropped")


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts by upper bound (``le``), as Prometheus exposes them."""

    buckets: tuple[tuple[float, float], ...] = ()

    def plus(self, other: Histogram) -> Histogram:
        counts: dict[float, float] = dict(self.buckets)
        for bound, count in other.buckets:
            counts[bound] = counts.get(bound, 0.0) + count
        return Histogram(tuple(sorted(counts.items())))

    def minus(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram(tuple((b, max(c - before.get(b, 0.0), 0.0)) for b, c in self.buckets))

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds
        rank q x count; the lowest bucket starts at 0; a rank in +Inf answers the highest
        finite bound. None without observations."""
        if not self.buckets or self.count <= 0:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    count - lower_count
                )
            lower_bound, lower_count = bound, count
        return lower_bound


@dataclass(frozen=True)
class Sample:
    """One revision's (or one pod's) counters at one moment, or their change over a window."""

    success: float = 0.0
    failure: float = 0.0
    request_duration: Histogram = field(default_factory=Histogram)
    queue_duration: Histogram = field(default_factory=Histogram)
    mirror: Mapping[str, float] = field(default_factory=dict)

    def plus(self, other: Sample) -> Sample:
        return Sample(
            self.success + other.success,
            self.failure + other.failure,
            self.request_duration.plus(other.request_duration),
            self.queue_duration.plus(other.queue_duration),
            {k: self.mirror.get(k, 0.0) + other.mirror.get(k, 0.0) for k in MIRROR_RESULTS},
        )

    def minus(self, earlier: Sample) -> Sample:
        """The change since ``earlier``; a counter that went down restarted from zero."""
        if self.success < earlier.success or self.failure < earlier.failure:
            return self
        return Sample(
            self.success - earlier.success,
            self.failure - earlier.failure,
            self.request_duration.minus(earlier.request_duration),
            self.queue_duration.minus(earlier.queue_duration),
            {
                k: max(self.mirror.get(k, 0.0) - earlier.mirror.get(k, 0.0), 0.0)
                for k in MIRROR_RESULTS
            },
        )

    @property
    def requests(self) -> float:
        return self.success + self.failure


def total(samples: Iterable[Sample]) -> Sample:
    result = Sample()
    for sample in samples:
        result = result.plus(sample)
    return result


def from_families(
    families: Iterable[Any], model: str, mirror_revision: str | None = None
) -> Sample:
    """A pod's sample for ``model`` from parsed Prometheus metric families
    (``prometheus_client.parser.text_string_to_metric_families``). The mirror's counts are
    those of copies sent to ``mirror_revision`` only (none without it): a stable pod keeps
    counting for an earlier canary until it reads its new mirror config, and those answers
    are not this canary's."""
    success = failure = 0.0
    request: dict[float, float] = {}
    queue: dict[float, float] = {}
    mirror: dict[str, float] = {}
    for family in families:
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            name = s.name
            if name in (SUCCESS, SUCCESS + "_total"):
                success += s.value
            elif name in (FAILURE, FAILURE + "_total"):
                failure += s.value
            elif name == REQUEST_DURATION + "_bucket":
                bound = float(s.labels["le"])
                request[bound] = request.get(bound, 0.0) + s.value
            elif name == QUEUE_DURATION + "_bucket":
                bound = float(s.labels["le"])
                queue[bound] = queue.get(bound, 0.0) + s.value
            elif name in (MIRROR, MIRROR.removesuffix("_total")) and (
                mirror_revision is not None and s.labels.get("revision") == mirror_revision
            ):
                result = s.labels.get("result", "")
                mirror[result] = mirror.get(result, 0.0) + s.value
    return Sample(
        success,
        failure,
        Histogram(tuple(sorted(request.items()))),
        Histogram(tuple(sorted(queue.items()))),
        mirror,
    )


@dataclass(frozen=True)
class Window:
    """The traffic of one interval: the canary's and stable's changes, and its length."""

    canary: Sample
    stable: Sample
    seconds: float


def window(before: Mapping[str, Sample], after: Mapping[str, Sample]) -> Sample:
    """The change of a revision's traffic between two rounds of per-pod samples (pod name ->
    sample): pods present in both contribute their change (a restart counts from zero), new
    pods contribute all they served; pods that went contribute nothing more."""
    return total(
        sample.minus(before[pod]) if pod in before else sample for pod, sample in after.items()
    )


def _value(name: str, sample: Sample) -> tuple[float | None, float]:
    """A metric's value over a window's sample, and how many samples it rests on."""
    if name == "successRate":
        n = sample.requests
        return (sample.success / n if n else None), n
    if name in ("latencyP95", "latencyP99"):
        q = 0.95 if name == "latencyP95" else 0.99
        seconds = sample.request_duration.quantile(q)
        return (seconds * 1000 if seconds is not None else None), sample.request_duration.count
    if name == "queueP95":
        seconds = sample.queue_duration.quantile(0.95)
        return (seconds * 1000 if seconds is not None else None), sample.queue_duration.count
    if name == "mirrorAgreement":
        agree = sample.mirror.get("agree", 0.0)
        compared = agree + sample.mirror.get("disagree", 0.0)
        return (agree / compared if compared else None), compared
    raise ValueError(f"unknown metric {name!r}")


HIGHER_IS_BETTER = {"successRate", "mirrorAgreement"}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def measure(
    metrics: Iterable[Mapping[str, Any]], min_samples: int, traffic: Window, time: str
) -> Obj:
    """One measurement (``api.Measurement`` as a dict) of the canary over ``traffic``.

    ``metrics`` are MetricCheck dicts (camelCase). Inconclusive when the canary saw fewer
    than ``min_samples`` of what a metric counts; Failed when any bound is broken."""
    values: dict[str, float | None] = {}
    failures: list[str] = []
    unknown: list[str] = []
    for check in metrics:
        name = str(check["name"])
        # The mirror's counters live on the stable pods (they copy and compare).
        measured = traffic.stable if name == "mirrorAgreement" else traffic.canary
        canary, samples = _value(name, measured)
        values[name] = _round(canary)
        if samples < min_samples or canary is None:
            unknown.append(f"{name}: {samples:.0f} of {min_samples} samples")
            continue
        higher = name in HIGHER_IS_BETTER
        unit = "" if higher else " ms"
        if check.get("min") is not None and canary < float(check["min"]):
            failures.append(f"{name} {canary:.4g}{unit} < min {check['min']}{unit}")
        if check.get("max") is not None and canary > float(check["max"]):
            failures.append(f"{name} {canary:.4g}{unit} > max {check['max']}{unit}")
        factor = check.get("relativeToStable")
        if factor is not None:
            stable, stable_samples = _value(name, traffic.stable)
            values[f"stable.{name}"] = _round(stable)
            if stable is None or stable_samples < min_samples:
                unknown.append(f"stable {name}: {stable_samples:.0f} of {min_samples} samples")
                continue
            bound = float(factor) * stable
            if higher and canary < bound:
                failures.append(
                    f"{name} {canary:.4g} < {factor} x stable's {stable:.4g} = {bound:.4g}"
                )
            if not higher and canary > bound:
                failures.append(
                    f"{name} {canary:.4g} ms > {factor} x stable's {stable:.4g} ms = {bound:.4g} ms"
                )
    if failures:
        verdict, message = "Failed", "; ".join(failures)
    elif unknown:
        verdict, message = "Inconclusive", "too little traffic: " + "; ".join(unknown)
    else:
        verdict, message = "Successful", f"all {len(values)} metric value(s) within bounds"
    # A value not measured is left out (the message says why): the schema's numbers are not
    # nullable, and a null inside a list would reach the API server as null.
    known = {k: v for k, v in values.items() if v is not None}
    return {"time": time, "verdict": verdict, "values": known, "message": message}

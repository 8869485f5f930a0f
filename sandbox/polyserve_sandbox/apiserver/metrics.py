"""The API server's own ``/metrics``: every request counted, as the real server counts them.

``apiserver_request_total{verb, group, version, resource, subresource, scope, code}`` with
the real server's label values (verbs ``GET LIST WATCH POST PUT PATCH APPLY DELETE
DELETECOLLECTION``; scope ``resource``, ``namespace`` or ``cluster``), so what a client
costs the control plane can be read here as on a cluster (``sum by (resource, verb)
(rate(apiserver_request_total[1m]))``). Requests outside resources (discovery, OpenAPI,
``/version``) are counted with an empty resource. A watch is counted when it ends, with
the status it began with. Faults the sandbox injected (``faults``) are counted apart, in
``polyserve_sandbox_injected_faults_total{verb, resource, fault}``. How long each request
took to answer is ``apiserver_request_duration_seconds`` (a histogram with the real
server's buckets and labels but ``code``; watches are not timed, as on the real server),
measured from the handler's start, so time a request waited for the busy event loop
before it is not in it.

Counting is a dictionary increment per request; exposition is Prometheus' text format.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Mapping
from dataclasses import dataclass

LABELS = ("verb", "group", "version", "resource", "subresource", "scope", "code")
#: ``apiserver_request_duration_seconds``' buckets on the real server (seconds).
BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    """What one request asked for, in the metric's words."""

    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    scope: str = ""


@dataclass(slots=True)
class Durations:
    """One histogram series: how many took at most each bucket's seconds, and the sum."""

    buckets: list[int]
    total: float = 0.0
    count: int = 0


class Requests:
    """Request counts and durations since the server started."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[Request, int]] = collections.Counter()
        self.durations: dict[Request, Durations] = {}

    def count(self, request: Request, code: int) -> None:
        self.counts[(request, code)] += 1

    def observe(self, request: Request, seconds: float) -> None:
        found = self.durations.get(request)
        if found is None:
            found = self.durations[request] = Durations([0] * len(BUCKETS))
        index = bisect.bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):
            found.buckets[index] += 1  # cumulated at exposition
        found.total += seconds
        found.count += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def verb(method: str, *, named: bool, watch: bool, apply: bool) -> str:
    """The metric verb of a request (the real server's ``CleanVerb``)."""
    if method == "GET":
        return "GET" if named else ("WATCH" if watch else "LIST")
    if method == "PATCH" and apply:
        return "APPLY"
    if method == "DELETE" and not named:
        return "DELETECOLLECTION"
    return method


def scope(*, named: bool, namespace: str | None) -> str:
    if named:
        return "resource"
    return "namespace" if namespace else "cluster"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value}"


def exposition(requests: Requests, injected: Mapping[tuple[str, str, str], int]) -> str:
    """Prometheus' text format of the counts."""
    lines = [
        "# HELP apiserver_request_total Counter of apiserver requests broken out for each "
        "verb, group, version, resource, scope, subresource and HTTP response code.",
        "# TYPE apiserver_request_total counter",
    ]
    for (request, code), value in sorted(
        requests.counts.items(), key=lambda item: (*_ordered(item[0][0]), item[0][1])
    ):
        labels = dict(zip(LABELS, (*_ordered(request), str(code)), strict=True))
        lines.append(_sample("apiserver_request_total", labels, value))
    lines += [
        "# HELP apiserver_request_duration_seconds Response latency distribution in seconds "
        "for each verb, group, version, resource, subresource and scope.",
        "# TYPE apiserver_request_duration_seconds histogram",
    ]
    name = "apiserver_request_duration_seconds"
    for request, durations in sorted(requests.durations.items(), key=lambda i: _ordered(i[0])):
        labels = dict(zip(LABELS, _ordered(request), strict=False))
        cumulated = 0
        for bound, count in zip(BUCKETS, durations.buckets, strict=True):
            cumulated += count
            lines.append(_sample(f"{name}_bucket", {**labels, "le": f"{bound:g}"}, cumulated))
        lines.append(_sample(f"{name}_bucket", {**labels, "le": "+Inf"}, durations.count))
        lines.append(_sample(f"{name}_sum", labels, durations.total))
        lines.append(_sample(f"{name}_count", labels, durations.count))
    lines += [
        "# HELP polyserve_sandbox_injected_faults_total Faults the sandbox's fault plan "
        "injected, by verb, resource and fault (409, 429, 500, lost, 410, closed).",
        "# TYPE polyserve_sandbox_injected_faults_total counter",
    ]
    for (verb_, resource, fault), value in sorted(injected.items()):
        labels = {"verb": verb_, "resource": resource, "fault": fault}
        lines.append(_sample("polyserve_sandbox_injected_faults_total", labels, value))
    return "\n".join(lines) + "\n"


def _ordered(request: Request) -> tuple[str, str, str, str, str, str]:
    return (
        request.verb,
        request.group,
        request.version,
        request.resource,
        request.subresource,
        request.scope,
    )

"""The API server's own ``/metrics``: every request counted, as the real server counts them.

``apiserver_request_total{verb, group, version, resource, subresource, scope, code}`` with
the real server's label values (verbs ``GET LIST WATCH POST PUT PATCH APPLY DELETE
DELETECOLLECTION``; scope ``resource``, ``namespace`` or ``cluster``), so what a client
costs the control plane can be read here as on a cluster (``sum by (resource, verb)
(rate(apiserver_request_total[1m]))``). Requests outside resources (discovery, OpenAPI,
``/version``) are counted with an empty resource. A watch is counted when it ends, with
the status it began with. Faults the sandbox injected (``faults``) are counted apart, in
``polyserve_sandbox_injected_faults_total{verb, resource, fault}``.

Counting is a dictionary increment per request; exposition is Prometheus' text format.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass

LABELS = ("verb", "group", "version", "resource", "subresource", "scope", "code")


@dataclass(frozen=True, slots=True)
class Request:
    """What one request asked for, in the metric's words."""

    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    scope: str = ""


class Requests:
    """Request counts since the server started."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[Request, int]] = collections.Counter()

    def count(self, request: Request, code: int) -> None:
        self.counts[(request, code)] += 1

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


def _sample(name: str, labels: Mapping[str, str], value: int) -> str:
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

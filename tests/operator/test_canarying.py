"""A canary reconcile's Services: one per canary revision, so a new canary's Service (and
the mirror and route that use it) never has an earlier canary's pods behind it."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from polyserve_operator import api, canarying, observe, render, settings
from polyserve_operator.render import canaries, workloads
from polyserve_worker import mirror_config
from tests import prometheus_support

ROOT = Path(__file__).resolve().parents[2]
CFG = settings.Settings()
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _workload(name: str = "classifier", **routing: Any) -> workloads.Workload:
    path = ROOT / "manifests" / "examples" / "canary-xeon.yaml"
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    doc["metadata"]["name"] = name
    if routing:
        doc["spec"]["rollout"]["canary"]["trafficRouting"] = {"gatewayAPI": routing}
    return render.model_workload(api.InferenceModel.model_validate(doc))


def _service(name: str, ip: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"clusterIP": ip},
    }


def _rolling_out(w: workloads.Workload, children: observe.Children) -> canarying.Step:
    """A reconcile while ``w``'s revision is the canary next to stable revision ``old``."""
    rev = workloads.revision(w, CFG)
    body = {
        "metadata": {"name": w.name},
        "status": {
            "rollout": {
                "phase": "Progressing",
                "stableRevision": "0ld0ld0ld0",
                "canaryRevision": rev,
                "stepIndex": 0,
                "stepStartedAt": "2026-01-01T00:00:00Z",
                "weight": 10,
            }
        },
    }
    return canarying.Canaries(CFG).step(w, body, children, NOW)


def _services(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}


def _mirror(step: canarying.Step) -> mirror_config.MirrorConfig:
    (config,) = [o for o in step.desired if o["metadata"]["name"].endswith("-mirror")]
    return mirror_config.parse(config["data"][workloads.MIRROR_KEY])


def test_each_canary_revision_gets_a_service_that_selects_only_its_pods() -> None:
    w = _workload()
    rev = workloads.revision(w, CFG)
    step = _rolling_out(w, observe.Children(name=w.name))
    service = _services(step.desired)[f"classifier-canary-{rev}"]
    assert service["spec"]["selector"]["polyserve.io/revision"] == rev
    assert service["metadata"]["labels"][canaries.CANARY_SERVICE_LABEL] == rev
    assert "classifier-canary" not in _services(step.desired)


def test_the_mirror_targets_the_canary_revisions_own_service_once_it_has_an_address() -> None:
    w = _workload()
    rev = workloads.revision(w, CFG)
    before = _rolling_out(w, observe.Children(name=w.name))
    assert _mirror(before).models == {}, "no address yet: nothing to mirror to"
    children = observe.Children(
        name=w.name,
        services=[
            # An earlier canary's Service, whose pods may still serve (abort scale-down delay).
            _service(
                "classifier-canary-5abf1ed6dc",
                "10.96.0.7",
                {canaries.CANARY_SERVICE_LABEL: "5abf1ed6dc"},
            ),
            _service(f"classifier-canary-{rev}", "10.96.0.9"),
        ],
    )
    (spec,) = _mirror(_rolling_out(w, children)).models.values()
    assert spec.target == "10.96.0.9:8001"
    assert spec.revision == rev


def test_earlier_canaries_services_are_deleted_and_the_current_one_kept() -> None:
    w = _workload()
    rev = workloads.revision(w, CFG)
    mine = {canaries.CANARY_SERVICE_LABEL: rev}
    children = observe.Children(
        name=w.name,
        services=[
            _service("classifier", "10.96.0.2"),
            _service("classifier-stable", "10.96.0.3"),
            _service("classifier-canary", "10.96.0.4"),  # an earlier operator's, shared
            _service(
                "classifier-canary-5abf1ed6dc",
                "10.96.0.5",
                {canaries.CANARY_SERVICE_LABEL: "5abf1ed6dc"},
            ),
            _service(f"classifier-canary-{rev}", "10.96.0.6", mine),
        ],
    )
    step = _rolling_out(w, children)
    doomed = sorted(o["metadata"]["name"] for o in step.doomed if o["kind"] == "Service")
    assert doomed == ["classifier-canary", "classifier-canary-5abf1ed6dc"]


def test_with_no_canary_every_canary_service_goes_and_the_route_names_only_stable() -> None:
    w = _workload(parentRefs=[{"name": "edge"}])
    rev = workloads.revision(w, CFG)
    children = observe.Children(
        name=w.name,
        services=[
            _service(
                "classifier-canary-5abf1ed6dc",
                "10.96.0.5",
                {canaries.CANARY_SERVICE_LABEL: "5abf1ed6dc"},
            )
        ],
    )
    body = {"metadata": {"name": w.name}, "status": {"rollout": {"stableRevision": rev}}}
    step = canarying.Canaries(CFG).step(w, body, children, NOW)
    assert step.plan.canary_revision is None
    assert [o["metadata"]["name"] for o in step.doomed] == ["classifier-canary-5abf1ed6dc"]
    (route,) = [o for o in step.desired if o["kind"] == "HTTPRoute"]
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("classifier-stable", 100)]


def test_a_long_workload_name_still_gives_each_revision_a_distinct_dns_label() -> None:
    long = _workload("c" * 60)
    first = canaries.canary_service_name(long, "5abf1ed6dc")
    second = canaries.canary_service_name(long, "0123456789")
    assert first != second
    assert len(first) <= workloads.DNS_LABEL_MAX and len(second) <= workloads.DNS_LABEL_MAX


class _Mirroring:
    """A stable pod's /metrics while its mirror moves from one canary to the next: each
    scrape, 10 more copies to ``good`` agree, and 10 more to ``bad`` (a canary rolled back,
    still counted until the pod reads its new mirror config) disagree."""

    def __init__(self) -> None:
        self.scrapes = 0
        self._lock = threading.Lock()

    def text(self) -> str:
        with self._lock:
            self.scrapes += 1
            n = 10 * self.scrapes
        return (
            "# TYPE nv_inference_request_success counter\n"
            f'nv_inference_request_success{{model="m"}} {n}\n'
            "# HELP polyserve_mirror_requests copies of requests sent to a canary\n"
            "# TYPE polyserve_mirror_requests counter\n"
            + "".join(
                f'polyserve_mirror_requests_total{{model="{model}",revision="{revision}",'
                f'result="{result}"}} {n}\n'
                for model, revision, result in (
                    ("m", "good", "agree"),
                    ("m", "bad", "disagree"),
                    ("other", "good", "disagree"),
                )
            )
        )


@contextlib.contextmanager
def _metrics_at(address: tuple[str, int], text: Callable[[], str]) -> Iterator[int]:
    """An HTTP server answering every GET with ``text()`` (a worker's /metrics); its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(address, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirroring() -> Iterator[tuple[_Mirroring, int]]:
    metrics = _Mirroring()
    with _metrics_at(("127.0.0.1", 0), metrics.text) as port:
        yield metrics, port


def test_a_pods_mirror_counts_are_those_of_the_canary_being_measured_only(
    mirroring: tuple[_Mirroring, int],
) -> None:
    _, port = mirroring
    pod = {
        "metadata": {"name": "scorer-0ld-abc12"},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    (first,) = observe.scrape([pod], "m", port, mirror_revision="good").values()
    (later,) = observe.scrape([pod], "m", port, mirror_revision="good").values()
    window = later.minus(first)
    assert window.mirror == {"agree": 10.0, "disagree": 0.0, "error": 0.0, "dropped": 0.0}
    (unnamed,) = observe.scrape([pod], "m", port).values()
    assert unnamed.mirror == {}, "no canary named: no mirror counts at all"


def test_prometheus_gives_the_same_mirror_counts_of_the_canary_being_measured(
    mirroring: tuple[_Mirroring, int], tmp_path: Path
) -> None:
    _, port = mirroring
    # Two pods of two revisions' Deployments (a tier move's, say), scraped from one server.
    pods = ["scorer-0ld0ld0ld0-7d9f8c6b5-x2x4z", "scorer-n3wn3wn3wn-5c4b3a2d1-q8w7e"]
    targets = [
        prometheus_support.Target(f"127.0.0.1:{port}", labels={"namespace": "shop", "pod": pod})
        for pod in pods
    ]
    prom = prometheus_support.start(tmp_path, targets)
    try:
        prom.wait_for(  # three scrapes of each pod: increase() has points to work with
            'count_over_time(polyserve_mirror_requests_total{model="m",revision="good"}[1m]) >= 3',
            until=lambda rows: len(rows) == 2,
        )
        promql = observe.PromQL(settings.Prometheus(url=prom.url))
        sample = promql.sample("shop", "scorer-0ld0ld0ld0", "m", 30, mirror_revision="good")
        nothing = promql.sample("shop", "scorer-0ld0ld0ld0", "m", 30)
        both = promql.sample("shop", ["scorer-0ld0ld0ld0", "scorer-n3wn3wn3wn"], "m", 30)
    finally:
        prom.stop()
    assert sample.mirror.get("agree", 0.0) > 0
    assert set(sample.mirror) == {"agree"}, sample.mirror
    assert nothing.mirror == {}
    assert 0 < sample.success < both.success, "the pods of both Deployments count"


class _Pods:
    """Worker pods' /metrics at their own loopback addresses (outside the sandbox's range),
    port 8002 as in a cluster: the counts each one has served so far."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}
        self.servers = contextlib.ExitStack()

    def serve(self, ip: str) -> None:
        def text() -> str:
            success, failure = self.counts.get(ip, (0, 0))
            return (
                "# TYPE nv_inference_request_success counter\n"
                f'nv_inference_request_success{{model="classifier",version="1"}} {success}\n'
                "# TYPE nv_inference_request_failure counter\n"
                f'nv_inference_request_failure{{model="classifier",version="1"}} {failure}\n'
            )

        self.servers.enter_context(_metrics_at((ip, workloads.METRICS_PORT), text))


def _pod(name: str, revision: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"polyserve.io/revision": revision}},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_a_canary_pod_that_leaves_mid_interval_still_counts_what_it_served() -> None:
    path = ROOT / "manifests" / "examples" / "canary-xeon.yaml"
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    canary = doc["spec"]["rollout"]["canary"]
    canary.pop("mirror")
    canary["steps"] = [{"analysis": {}}]
    canary["analysis"] = {
        "interval": "10s",
        "count": 1,
        "minSamples": 5,
        "metrics": [{"name": "successRate", "min": 0.99}],
    }
    w = render.model_workload(api.InferenceModel.model_validate(doc))
    rev, old = workloads.revision(w, CFG), "0ld0ld0ld0"
    ips = {"stable": "127.251.0.1", "kept": "127.251.0.2", "leaving": "127.251.0.3"}
    pods = _Pods()
    with pods.servers:
        for ip in ips.values():
            pods.serve(ip)
        everyone = [
            _pod("classifier-0ld-s1", old, ips["stable"]),
            _pod("classifier-new-c1", rev, ips["kept"]),
            _pod("classifier-new-c2", rev, ips["leaving"]),
        ]
        canaries_ = canarying.Canaries(CFG)
        status: dict[str, Any] = {"phase": "Healthy", "stableRevision": old}

        def reconcile(after: float, pods_now: list[dict[str, Any]]) -> canarying.Step:
            body = {"metadata": {"name": w.name}, "status": {"rollout": status}}
            children = observe.Children(name=w.name, pods=pods_now)
            step = canaries_.step(w, body, children, NOW + datetime.timedelta(seconds=after))
            status.clear()
            status.update(step.plan.status)
            return step

        reconcile(0, everyone)  # the canary starts: its counters read as the window's start
        pods.counts = {ips["kept"]: (10, 0), ips["leaving"]: (5, 5), ips["stable"]: (20, 0)}
        reconcile(5, everyone)  # mid-interval: read, not judged
        step = reconcile(11, everyone[:2])  # the failing pod has gone (replaced, scaled down)
    assert step.plan.status["phase"] == "RolledBack", step.plan.status.get("message")
    measured = step.plan.status["measurements"][-1]
    assert measured["values"]["successRate"] == pytest.approx(15 / 20)


def test_an_ensembles_canary_measures_and_mirrors_the_ensemble_its_clients_call() -> None:
    docs = list(yaml.safe_load_all((ROOT / "manifests/examples/ensemble.yaml").read_text()))
    members = {
        d["metadata"]["name"]: api.InferenceModel.model_validate(d)
        for d in docs
        if d["kind"] == "InferenceModel"
    }
    docs[-1]["spec"]["rollout"] = {
        "strategy": "Canary",
        "canary": {"steps": [{"analysis": {}}], "mirror": {"percent": 10}},
    }
    ie = api.InferenceEnsemble.model_validate(docs[-1])
    w = render.ensemble_workload(ie, members)
    assert w.entry == "sentiment-pipeline"
    steady = render.objects(w, CFG)
    (deployment,) = [o for o in steady if o["kind"] == "Deployment"]
    assert deployment["metadata"]["name"] == f"sentiment-pipeline-{workloads.revision(w, CFG)}"
    rev = workloads.revision(w, CFG)
    children = observe.Children(
        name=w.name, services=[_service(f"sentiment-pipeline-canary-{rev}", "10.96.0.9")]
    )
    body = {"metadata": {"name": w.name}, "status": {"rollout": {"stableRevision": "0ld0ld0ld0"}}}
    step = canarying.Canaries(CFG).step(w, body, children, NOW)
    mirrored = _mirror(step).models
    assert mirrored["sentiment-pipeline"].target == "10.96.0.9:8001"

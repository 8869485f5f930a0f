"""A tiered model's load, read from its pods' /metrics: a pod that does not answer never reads
as the load falling (nor, when it answers again, as a spike)."""

from __future__ import annotations

import datetime
import http.server
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from polyserve_operator import api, observe, settings, tiering
from polyserve_operator.render import workloads

T0 = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)


class FakeWorker:
    """A pod's /metrics on its own loopback address and the worker's metrics port, serving
    Triton's success counter for model ``m``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.success = 0.0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (
                    "# TYPE nv_inference_request_success counter\n"
                    f'nv_inference_request_success{{model="m",version="1"}} {owner.success}\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, workloads.METRICS_PORT), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.up = True

    def stop(self) -> None:
        if self.up:
            self.server.shutdown()
            self.server.server_close()
            self.up = False


@pytest.fixture
def pods() -> Iterator[list[FakeWorker]]:
    base = f"127.{random.randint(80, 250)}.{random.randint(1, 250)}"
    workers = [FakeWorker(f"{base}.{i}") for i in (11, 12)]
    yield workers
    for w in workers:
        w.stop()


def _pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _model() -> api.InferenceModel:
    xeon = {"name": "xeon", "hardware": {"pool": "xeon", "backend": "onnxruntime"}, "capacity": 9}
    bf16 = {
        "name": "bf16",
        "hardware": {"pool": "xeon", "backend": "openvino", "precision": "bf16"},
        "capacity": 90,
    }
    return api.InferenceModel.model_validate(
        {
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {
                "modelFormat": {"name": "onnx"},
                "artifact": {"uri": "s3://b/m.onnx"},
                "tiers": [xeon, bf16],
            },
        }
    )


def test_a_pod_that_does_not_answer_keeps_the_last_rate_and_counts_right_when_back(
    pods: list[FakeWorker],
) -> None:
    reader = tiering.Tiers(settings.Settings())
    im = _model()
    children = observe.Children(
        name="m", pods=[_pod(f"m-{i}", w.address) for i, w in enumerate(pods)]
    )

    def at(seconds: float) -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=seconds)

    assert reader._load(im, children, at(0)).rate is None  # the first reading is a baseline
    for w in pods:
        w.success += 100  # 20 req/s in all over 10 s
    assert reader._load(im, children, at(10)).rate == pytest.approx(20.0)
    pods[1].stop()
    pods[0].success += 10
    assert reader._load(im, children, at(20)).rate == pytest.approx(20.0), "kept, not halved"
    # Back (a new server on the same address): 20 s of both pods' traffic since the reading
    # at 10 s, no spike from the counter it missed once.
    pods[1] = FakeWorker(pods[1].address)
    pods[1].success = 100 + 300
    pods[0].success += 90
    assert reader._load(im, children, at(30)).rate == pytest.approx((100 + 300) / 20)


def test_a_pod_that_goes_starts_a_new_window_instead_of_a_dip_and_a_returning_one_no_spike(
    pods: list[FakeWorker],
) -> None:
    reader = tiering.Tiers(settings.Settings())
    im = _model()
    both = [_pod(f"m-{i}", w.address) for i, w in enumerate(pods)]
    unready = {**both[1], "status": {**both[1]["status"], "conditions": []}}

    def load(seconds: float, listed: list[dict[str, Any]]) -> float | None:
        at = T0 + datetime.timedelta(seconds=seconds)
        return reader._load(im, observe.Children(name="m", pods=listed), at).rate

    load(0, both)
    for w in pods:
        w.success += 100
    assert load(10, both) == pytest.approx(20.0)
    # m-1 served 100 more, then went unready (as the old tier's pods do after a move): the
    # window it leaves is not measured (read without it, it would dip to 10 req/s).
    pods[0].success += 100
    pods[1].success += 100
    assert load(20, [both[0], unready]) == pytest.approx(20.0)
    pods[0].success += 200
    assert load(30, [both[0], unready]) == pytest.approx(20.0)
    # Ready again: only what it serves from now on is new, not the 100 it served unseen.
    pods[0].success += 100
    pods[1].success += 100
    assert load(40, both) == pytest.approx(20.0), "no spike from its old counter"
    # Deleted for good: the window it leaves is skipped once, then only m-0 counts.
    pods[0].success += 50
    assert load(50, [both[0]]) == pytest.approx(20.0)
    pods[0].success += 50
    assert load(60, [both[0]]) == pytest.approx(5.0)


def test_while_a_move_is_under_way_status_shows_the_tier_that_serves_and_then_the_new_one() -> None:
    reader = tiering.Tiers(settings.Settings())
    im = _model()
    under_way = {"current": "xeon", "target": "bf16", "since": "2026-12-01T11:00:00Z"}
    body = {"status": {"tier": {**under_way, "moveStartedAt": "2026-12-01T11:59:00Z"}}}
    move = reader.plan(im, body, observe.Children(name="m"), T0)
    assert move.decision.target == 1, "the move goes on"
    assert (move.workload.hardware.pool, move.workload.backend) == ("xeon", "openvino")
    assert move.serving.backend == "onnxruntime", "the pods that answer are still xeon's"
    settled = {"status": {"tier": {"current": "bf16", "since": "2026-12-01T11:00:00Z"}}}
    move = reader.plan(im, settled, observe.Children(name="m"), T0)
    assert move.serving is move.workload and move.serving.backend == "openvino"

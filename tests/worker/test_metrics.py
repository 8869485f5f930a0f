"""Prometheus metrics: Triton's names and labels, plus our histograms."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.worker import models
from tests.worker.conftest import StartWorker


def test_metrics_use_triton_names_and_add_histograms(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    worker = start_worker(models.triton_repository(tmp_path))
    client = httpclient.InferenceServerClient(worker.http)
    inputs = [httpclient.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(np.zeros((2, 16), np.int32))
    for _ in range(3):
        client.infer("simple", inputs)
    with urllib.request.urlopen(worker.metrics, timeout=5) as response:
        text = response.read().decode()
    samples = {
        (s.name, s.labels.get("model"), s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("nv_inference_request_success", "simple", None)] == 3
    assert samples[("nv_inference_count", "simple", None)] == 6
    assert samples[("nv_inference_exec_count", "simple", None)] >= 1
    assert samples[("nv_inference_request_failure", "simple", None)] == 0
    assert samples[("nv_inference_pending_request_count", "simple", None)] == 0
    assert samples[("nv_inference_request_duration_us", "simple", None)] > 0
    for name in (
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    ):
        assert (name, "simple", None) in samples
    assert "nv_inference_request_success{" in text, "Triton's counters keep their exact names"
    assert samples[("polyserve_request_duration_seconds_count", "simple", None)] == 3
    assert samples[("polyserve_request_duration_seconds_bucket", "simple", "+Inf")] == 3
    assert samples[("polyserve_batch_size_bucket", "simple", "2.0")] >= 1
    assert ("polyserve_queue_duration_seconds_sum", "simple", None) in samples

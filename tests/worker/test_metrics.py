"""Prometheus metrics: Triton's names and labels, plus our histograms."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from polyserve_worker import metrics, stats
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker
from tests.worker.test_http import error_of


def scrape(worker: RunningWorker) -> str:
    with urllib.request.urlopen(worker.metrics, timeout=5) as response:
        text: str = response.read().decode()
    return text


def samples_of(text: str) -> dict[tuple[str, Any, Any], float]:
    """(family or histogram sample name, model, le) -> value, as Prometheus parses it."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = family.name if family.type == "counter" else s.name
            found[(name, s.labels.get("model"), s.labels.get("le"))] = s.value
    return found


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
    text = scrape(worker)
    samples = samples_of(text)
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


def test_triton_counters_parse_as_counters_under_their_own_names(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    worker = start_worker(models.triton_repository(tmp_path))
    text = scrape(worker)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
    ):
        assert families[name].type == "counter", f"{name} parses as {families[name].type}"
        assert f"# TYPE {name} counter\n" in text, "HELP/TYPE name the samples exactly"
        assert f'{name}{{model="simple",version="1"}}' in text, "Triton's names, no _total"
    assert families["nv_inference_pending_request_count"].type == "gauge"
    assert families["polyserve_request_duration_seconds"].type == "histogram"


def test_requests_the_model_refuses_count_as_failures(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    worker = start_worker(models.triton_repository(tmp_path))

    def infer(**overrides: Any) -> None:
        inputs = [
            {"name": n, "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}
            for n in ("INPUT0", "INPUT1")
        ]
        inputs[0].update(overrides)
        body = json.dumps({"inputs": inputs}).encode()
        status, _ = error_of(worker, "POST", "/v2/models/simple/infer", body)
        assert status == 400

    infer(shape=[1, 15], data=[0] * 15)  # shape
    infer(datatype="FP32", data=[0.0] * 16)  # datatype
    infer(shape=[9, 16], data=[0] * 144)  # batch size
    infer(data=[None] * 16)  # not numbers
    samples = samples_of(scrape(worker))
    assert samples[("nv_inference_request_failure", "simple", None)] == 4
    assert samples[("nv_inference_request_success", "simple", None)] == 0
    stats = httpclient.InferenceServerClient(worker.http).get_inference_statistics("simple")
    assert stats["model_stats"][0]["inference_stats"]["fail"]["count"] == 4


def test_two_processes_expositions_merge_into_one_that_parses_with_every_type_kept(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    """--workers 2: the first process serves both processes' samples, each labelled with its
    process; a model's counts add up across them and no family loses its type."""
    first = start_worker(models.triton_repository(tmp_path / "a"))
    second = start_worker(models.triton_repository(tmp_path / "b"))
    for worker, calls in ((first, 3), (second, 2)):
        client = httpclient.InferenceServerClient(worker.http)
        inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for inp in inputs:
            inp.set_data_from_numpy(np.zeros((1, 16), np.int32))
        for _ in range(calls):
            client.infer("simple", inputs)
    own = [scrape(first).encode(), scrape(second).encode()]
    text = metrics.merged([("0", own[0]), ("1", own[1])]).decode()
    alone = {f.name: f.type for f in text_string_to_metric_families(own[0].decode())}
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: f.type for name, f in families.items()} == alone, "every type kept"
    success = families["nv_inference_request_success"].samples
    assert {s.labels["worker"] for s in success} == {"0", "1"}
    assert sum(s.value for s in success if s.labels["model"] == "simple") == 5
    count = [
        s
        for s in families["polyserve_request_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert sum(s.value for s in count) == 5
    for name in families:  # each family's samples together, under one TYPE line
        assert text.count(f"# TYPE {name} ") <= 1


def test_a_merged_exposition_passes_promtool(tmp_path: Path, start_worker: StartWorker) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    worker = start_worker(models.triton_repository(tmp_path))
    own = scrape(worker).encode()
    text = metrics.merged([("0", own), ("1", own)])
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    problems = checked.stdout.decode() + checked.stderr.decode()
    assert "error" not in problems.lower(), problems


def test_a_sample_without_labels_gets_the_process_label() -> None:
    text = metrics.merged([("0", b"# TYPE up gauge\nup 1\n"), ("1", b"# TYPE up gauge\nup 0\n")])
    assert text.decode() == '# TYPE up gauge\nup{worker="0"} 1\nup{worker="1"} 0\n'


def test_statistics_of_several_processes_add_up_per_version_and_batch_size() -> None:
    first, second = stats.ModelStats("m", "1"), stats.ModelStats("m", "1")
    other = stats.ModelStats("n", "2")
    first.record_request(True, 1_000)
    first.record_execution(4, 4, 10, 20, 30)
    first.last_inference_ms = 5
    second.record_request(True, 3_000)
    second.record_request(False, 500)
    second.record_execution(4, 4, 1, 2, 3)
    second.record_execution(1, 1, 1, 1, 1)
    second.last_inference_ms = 9
    other.record_request(True, 7)
    (m, n) = stats.merged([[first.to_dict()], [second.to_dict(), other.to_dict()]])
    assert (m["name"], n["name"]) == ("m", "n")
    assert m["inference_stats"]["success"] == {"count": 2, "ns": 4_000}
    assert m["inference_stats"]["fail"] == {"count": 1, "ns": 500}
    assert (m["inference_count"], m["execution_count"], m["last_inference"]) == (9, 3, 9)
    batches = {b["batch_size"]: b["compute_infer"] for b in m["batch_stats"]}
    assert batches == {1: {"count": 1, "ns": 1}, 4: {"count": 2, "ns": 22}}
    assert n == other.to_dict()
    assert first.to_dict()["inference_count"] == 4, "the parts are left as they were"

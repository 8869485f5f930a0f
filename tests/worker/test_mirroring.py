"""Request mirroring: stable workers copy live requests to a canary, compare, count.

Two real workers on 127.0.0.1: "stable" serves a model and mirrors it to "canary"; clients
talk to stable only, and must always get stable's answers.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pydantic
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from prometheus_client.parser import text_string_to_metric_families

from polyserve_worker import clock as clocks
from polyserve_worker import comparing, mirror_config, mirroring, settings
from tests import certificates
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker
from tests.worker.test_lifecycle import GatedBackend, free_port, start_process

X = np.array([[1.0, -2.0, 3.5, 0.25]], dtype=np.float32)

# The gated fake doubles INPUT0 like scale x2, but only once its gate opens.
GATED_SCALE = """
backend: gated
max_batch_size: 4
input: [{name: INPUT0, data_type: TYPE_FP32, dims: [4]}]
output: [{name: OUTPUT0, data_type: TYPE_FP32, dims: [4]}]
"""

# double then triple: the same numbers as a plain x6 model, through an ensemble.
TIMES_SIX = """
platform: ensemble
max_batch_size: 4
input: [{name: INPUT0, data_type: FP32, dims: [4]}]
output: [{name: OUTPUT0, data_type: FP32, dims: [4]}]
ensemble_scheduling:
  step:
    - {model_name: double, input_map: {INPUT0: INPUT0}, output_map: {OUTPUT0: mid}}
    - {model_name: triple, input_map: {INPUT0: mid}, output_map: {OUTPUT0: OUTPUT0}}
"""


# -- helpers -------------------------------------------------------------------------------


def scale_repo(root: Path, factor: float, name: str = "scale") -> Path:
    models.scale(root / name / "1" / "model.onnx", factor)
    (root / name / "config.yaml").write_text("max_batch_size: 4\n")
    return root


def gated_repo(root: Path) -> Path:
    (root / "scale" / "1").mkdir(parents=True)
    (root / "scale" / "1" / "model.txt").write_text("fake")
    (root / "scale" / "config.yaml").write_text(GATED_SCALE)
    return root


def write_mirror(path: Path, target: str, revision: str, **extra: Any) -> None:
    fields = {"target": target, "revision": revision, **extra}
    body = "\n".join(f"    {key}: {value}" for key, value in fields.items())
    replace(path, f"models:\n  scale:\n{body}\n")


def replace(path: Path, text: str) -> None:
    """Change the file in one step, as Kubernetes does: write a new file, then rename a
    symlink to it over the old name (a reader never sees a half-written file)."""
    data = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}")
    data.write_text(text)
    link = path.with_name(f"{path.name}.link")
    link.symlink_to(data)
    os.replace(link, path)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def families(worker: RunningWorker) -> dict[str, Any]:
    """Every metric family as Prometheus parses the exposition, by family name."""
    return {f.name: f for f in text_string_to_metric_families(scrape(worker.metrics))}


def metric(worker: RunningWorker, sample: str, **labels: str) -> float:
    """One sample's value (0 when it is absent), matching every label given."""
    total = 0.0
    for family in text_string_to_metric_families(scrape(worker.metrics)):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def copies(worker: RunningWorker, result: str, revision: str = "") -> float:
    labels = {"model": "scale", "result": result}
    if revision:
        labels["revision"] = revision
    return metric(worker, "polyserve_mirror_requests_total", **labels)


def active(worker: RunningWorker, revision: str) -> bool:
    return metric(worker, "polyserve_mirror_active", model="scale", revision=revision) == 1


def grpc_infer(
    client: grpcclient.InferenceServerClient, x: np.ndarray, model: str = "scale"
) -> Any:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


def http_infer(client: httpclient.InferenceServerClient, x: np.ndarray, binary: bool) -> Any:
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    return client.infer("scale", [inp], outputs=[out]).as_numpy("OUTPUT0")


def stream_infer(client: grpcclient.InferenceServerClient, xs: list[np.ndarray]) -> list[Any]:
    answers: list[Any] = []
    client.start_stream(callback=lambda result, error: answers.append(error or result))
    for x in xs:
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer("scale", [inp])
    wait_for(lambda: len(answers) == len(xs), "the stream's answers")
    client.stop_stream()
    return [a.as_numpy("OUTPUT0") for a in answers]


def latencies(client: grpcclient.InferenceServerClient, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        np.testing.assert_array_equal(grpc_infer(client, X), X * 2)
        out.append(time.perf_counter() - start)
    return out


def mirrored_pair(
    tmp_path: Path, start_worker: StartWorker, canary_factor: float, **mirror: Any
) -> tuple[RunningWorker, RunningWorker]:
    """A canary serving scale x``canary_factor``, and a stable x2 mirroring to it."""
    canary = start_worker(scale_repo(tmp_path / "canary", canary_factor))
    config = tmp_path / "mirror.yaml"
    write_mirror(config, canary.grpc, "rev2", **mirror)
    stable = start_worker(scale_repo(tmp_path / "stable", 2.0), mirror_config=config)
    wait_for(lambda: active(stable, "rev2"), "mirroring to start")
    return stable, canary


# -- comparison ----------------------------------------------------------------------------


def test_floats_agree_when_every_element_is_within_either_bound() -> None:
    stable = np.array([[1.0, 100.0, 0.0]], np.float32)
    near = stable + np.array([[1e-4, 0.05, 1e-4]], np.float32)
    rule = comparing.Rule(max_abs_diff=2e-4, max_rel_diff=1e-3)
    verdict = comparing.compare(stable, near, rule)
    assert verdict.agree  # 1e-4 within abs; 0.05 of 100 within rel
    assert verdict.max_abs_diff == pytest.approx(0.05, rel=1e-3)
    far = stable + np.array([[0.0, 0.0, 1e-3]], np.float32)
    assert not comparing.compare(stable, far, rule).agree, "0 has no relative room"
    assert comparing.compare(stable, near, comparing.Rule(max_rel_diff=1e-3)).agree is False
    assert comparing.compare(stable, near, comparing.Rule(max_abs_diff=0.06)).agree


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_fp16_bf16_and_fp64_compare_with_their_own_bounds(dtype: Any) -> None:
    stable = np.array([[0.5, 2.0, -8.0]], dtype=dtype)
    canary = (stable.astype(np.float32) * np.float32(1.01)).astype(dtype)
    assert comparing.compare(stable, canary, comparing.Rule(max_rel_diff=0.02)).agree
    assert not comparing.compare(stable, canary, comparing.Rule(max_rel_diff=0.001)).agree
    assert comparing.compare(stable, stable.copy()).max_abs_diff == 0.0


def test_a_float_output_without_a_rule_catches_a_lower_precision_canary() -> None:
    rng = np.random.default_rng(0)
    stable = rng.standard_normal((2, 64)).astype(np.float32)
    ulps = np.nextafter(stable, np.float32(np.inf))
    assert comparing.compare(stable, ulps).agree, "a few ULPs are the same model"
    in_bf16 = stable.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert not comparing.compare(stable, in_bf16).agree, "BF16 rounding is a wrong precision"


def test_top1_compares_the_argmax_of_every_row() -> None:
    stable = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], np.float32)
    shifted = np.array([[0.0, 0.9, 0.1], [0.6, 0.1, 0.3]], np.float32)
    swapped = np.array([[0.1, 0.7, 0.2], [0.2, 0.3, 0.5]], np.float32)
    top1 = comparing.Rule(top1=True)
    verdict = comparing.compare(stable, shifted, top1)
    assert verdict.agree and verdict.max_abs_diff == pytest.approx(0.2)
    assert not comparing.compare(stable, swapped, top1).agree
    both = comparing.Rule(top1=True, max_abs_diff=0.1)
    assert not comparing.compare(stable, shifted, both).agree, "every check named must hold"


def test_integers_bool_and_bytes_compare_exactly_by_default() -> None:
    big = np.array([2**53, 7], np.int64)
    assert comparing.compare(big, big.copy()).agree
    assert not comparing.compare(big, big + np.array([1, 0], np.int64)).agree
    tolerant = comparing.Rule(max_abs_diff=1)
    assert comparing.compare(np.array([3], np.uint8), np.array([4], np.uint8), tolerant).agree
    assert not comparing.compare(np.array([True]), np.array([False]), tolerant).agree
    words = np.array([b"cat", b"dog"], dtype=object)
    assert comparing.compare(words, np.array(["cat", "dog"], dtype=object)).agree
    verdict = comparing.compare(words, np.array([b"cat", b"cow"], dtype=object), tolerant)
    assert not verdict.agree and verdict.max_abs_diff is None


def test_nan_agrees_only_with_nan_and_infinity_only_with_itself() -> None:
    stable = np.array([np.nan, np.inf, 1.0], np.float32)
    assert comparing.compare(stable, stable.copy()).agree
    loose = comparing.Rule(max_abs_diff=1e9)
    nan_for_one = np.array([np.nan, np.inf, np.nan], np.float32)
    verdict = comparing.compare(stable, nan_for_one, loose)
    assert not verdict.agree and verdict.max_abs_diff == 0.0, "NaN is no finite difference"
    assert not comparing.compare(stable, np.array([1.0, np.inf, 1.0], np.float32), loose).agree
    assert not comparing.compare(stable, np.array([np.nan, -np.inf, 1.0], np.float32), loose).agree


def test_a_datatype_or_shape_mismatch_disagrees_whatever_the_rule() -> None:
    stable = np.zeros((2, 3), np.float32)
    loose = comparing.Rule(max_abs_diff=1e9)
    wider = comparing.compare(stable, np.zeros((2, 3), np.float64), loose)
    assert not wider.agree and "datatype FP64" in wider.reason
    reshaped = comparing.compare(stable, np.zeros((3, 2), np.float32), loose)
    assert not reshaped.agree and "shape [3, 2]" in reshaped.reason


def test_the_file_is_validated_with_camel_case_names_and_typos_are_errors() -> None:
    config = mirror_config.parse(
        """
        models:
          mlp:
            target: 10.1.2.3:8001
            revision: 5abf1ed6dc
            percent: 10
            rate: 50
            timeoutMs: 2000
            compare:
              "*": {maxAbsDiff: 1.0e-4, maxRelDiff: 1.0e-3}
              PROBABILITIES: {top1: true}
        """
    )
    mlp = config.models["mlp"]
    assert (mlp.timeout_ms, mlp.queue, mlp.model, mlp.percent) == (2000, 64, None, 10)
    assert mlp.rule_for("LOGITS") == comparing.Rule(max_abs_diff=1e-4, max_rel_diff=1e-3)
    assert mlp.rule_for("PROBABILITIES") == comparing.Rule(top1=True)
    assert mirror_config.parse("") == mirror_config.MirrorConfig()
    assert mirror_config.parse('{"models": {}}') == mirror_config.MirrorConfig(), "JSON is YAML"
    for wrong in (
        "models: {mlp: {target: a:1, percnt: 10}}",
        "models: {mlp: {target: 10.1.2.3}}",
        "models: {mlp: {target: a:1, percent: 101}}",
        "models: {mlp: {target: a:1, compare: {'*': {maxAbsDif: 1}}}}",
        "models: {mlp: {target: a:1, compare: {'*': {exact: true, top1: true}}}}",
        "models: [mlp",
    ):
        with pytest.raises(ValueError):
            mirror_config.parse(wrong)
    assert issubclass(pydantic.ValidationError, ValueError)


def test_the_operator_renders_the_file_that_the_worker_parses() -> None:
    config = mirror_config.MirrorConfig(
        models={
            "mlp": mirror_config.ModelMirror(
                target="mlp-canary.default.svc:8001",
                revision="5abf1ed6dc",
                percent=10,
                timeout_ms=500,
                compare={"PROBABILITIES": comparing.Rule(top1=True)},
            )
        }
    )
    text = mirror_config.render(config)
    assert "timeoutMs: 500" in text and "top1: true" in text
    assert "queue" not in text, "defaults are left to the worker"
    assert mirror_config.parse(text) == config


def test_the_flag_is_generated_from_the_setting_and_renders_back() -> None:
    parsed = settings.parse(["--model-repository=/models", "--mirror-config=/etc/mirror.yaml"])
    assert parsed.mirror_config == Path("/etc/mirror.yaml")
    assert settings.to_args({"mirror_config": "/etc/mirror.yaml"}) == [
        "--mirror-config=/etc/mirror.yaml"
    ]
    assert settings.parse(["--model-repository=/models"]).mirror_config is None


# -- sampling ------------------------------------------------------------------------------


def test_percent_copies_that_share_of_requests_from_a_seeded_random_source() -> None:
    clock = clocks.FakeClock()
    sampler = mirroring.Sampler(10, None, clock, random.Random(7))
    taken = sum(sampler.sampled() for _ in range(20_000))
    assert 1800 <= taken <= 2200
    assert all(mirroring.Sampler(100, None, clock, random.Random(1)).sampled() for _ in range(99))
    assert not any(mirroring.Sampler(0, None, clock, random.Random(1)).sampled() for _ in range(99))


def test_rate_admits_one_second_of_burst_then_exactly_the_rate_on_a_fake_clock() -> None:
    clock = clocks.FakeClock()
    sampler = mirroring.Sampler(100, 50, clock, random.Random(0))
    assert sum(sampler.take() for _ in range(200)) == 50, "the bucket holds one second's worth"
    admitted = 0
    for _ in range(1000):  # 10 s of offers at 100 per second
        clock.advance(0.01)
        admitted += sampler.take()
    assert 499 <= admitted <= 501
    slow = mirroring.Sampler(100, 0.5, clock, random.Random(0))
    assert slow.take() and not slow.take(), "a rate under 1/s still admits one copy"
    clock.advance(2)
    assert slow.take()


# -- two workers ---------------------------------------------------------------------------


def test_copies_of_http_and_grpc_traffic_agree_with_an_equal_canary(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    stable, canary = mirrored_pair(tmp_path, start_worker, 2.0)
    http = httpclient.InferenceServerClient(stable.http)
    grpc = grpcclient.InferenceServerClient(stable.grpc)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(12)]
    answers = [http_infer(http, x, binary=False) for x in xs[:3]]
    answers += [http_infer(http, x, binary=True) for x in xs[3:6]]
    answers += [grpc_infer(grpc, x) for x in xs[6:9]]
    answers += stream_infer(grpc, xs[9:])
    for x, answer in zip(xs, answers, strict=True):
        np.testing.assert_array_equal(answer, x * 2)
    wait_for(lambda: copies(stable, "agree") == 12, "12 agreeing copies")
    assert [copies(stable, r) for r in ("disagree", "error", "dropped")] == [0, 0, 0]
    labels = {"model": "scale", "revision": "rev2"}
    assert metric(stable, "polyserve_mirror_outputs_total", output="OUTPUT0", result="agree") == 12
    assert metric(stable, "polyserve_mirror_max_abs_diff_bucket", le="0.0", **labels) == 12
    assert metric(stable, "polyserve_mirror_latency_seconds_count", **labels) == 12
    assert successes(canary, "scale") == 12, "the canary got every copy"
    found = families(stable)
    assert found["polyserve_mirror_requests"].type == "counter"
    assert found["polyserve_mirror_outputs"].type == "counter"
    assert found["polyserve_mirror_max_abs_diff"].type == "histogram"
    assert found["polyserve_mirror_latency_seconds"].type == "histogram"
    assert found["polyserve_mirror_active"].type == "gauge"
    assert "polyserve_mirror_requests_total{" in scrape(stable.metrics)


@pytest.mark.parametrize(
    ("server_name", "verified"), [("scale.shop.svc", True), ("someone-else.shop.svc", False)]
)
def test_a_canary_serving_tls_is_mirrored_over_tls_and_verified_by_name(
    tmp_path: Path, start_worker: StartWorker, server_name: str, verified: bool
) -> None:
    """Both revisions serve spec.tls's certificate (its names cover the Service's): the
    stable pod checks the canary's against the Secret's ca.crt and the Service's name."""
    issued = certificates.issue(
        certificates.authority(tmp_path / "ca"), tmp_path / "secret", ["scale.shop.svc"]
    )
    serving = {"tls_cert_file": issued.cert, "tls_key_file": issued.key}
    canary = start_worker(scale_repo(tmp_path / "canary", 2.0), **serving)
    config = tmp_path / "mirror.yaml"
    write_mirror(config, canary.grpc, "rev2", tls={"serverName": server_name})
    # The CA: the ca.crt beside the stable worker's own certificate (the same Secret's).
    stable = start_worker(scale_repo(tmp_path / "stable", 2.0), mirror_config=config, **serving)
    wait_for(lambda: active(stable, "rev2"), "mirroring to start")
    grpc = grpcclient.InferenceServerClient(
        stable.grpc,
        ssl=True,
        root_certificates=str(issued.ca),
        channel_args=[("grpc.ssl_target_name_override", "scale.shop.svc")],
    )
    for x in [X, X + 1, X + 2]:
        np.testing.assert_array_equal(grpc_infer(grpc, x), x * 2)
    if verified:
        wait_for(lambda: copies(stable, "agree") == 3, "3 agreeing copies over TLS")
        assert copies(stable, "error") == 0
    else:
        wait_for(lambda: copies(stable, "error") == 3, "3 copies refused: the wrong name")
        assert copies(stable, "agree") == 0


def successes(worker: RunningWorker, model: str) -> int:
    client = httpclient.InferenceServerClient(worker.http)
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def test_a_canary_with_other_numbers_disagrees_while_clients_get_stable_answers(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    stable, _ = mirrored_pair(tmp_path, start_worker, 3.0)
    http = httpclient.InferenceServerClient(stable.http)
    grpc = grpcclient.InferenceServerClient(stable.grpc)
    for _ in range(3):
        np.testing.assert_array_equal(http_infer(http, X, binary=True), X * 2)
        np.testing.assert_array_equal(grpc_infer(grpc, X), X * 2)
    wait_for(lambda: copies(stable, "disagree") == 6, "6 disagreeing copies")
    assert copies(stable, "agree") == 0
    assert metric(stable, "polyserve_mirror_outputs_total", result="disagree") == 6
    # |3x - 2x| = |x|, largest 3.5: every copy lands in the (1, 10] bucket
    labels = {"model": "scale", "output": "OUTPUT0"}
    assert metric(stable, "polyserve_mirror_max_abs_diff_bucket", le="1.0", **labels) == 0
    assert metric(stable, "polyserve_mirror_max_abs_diff_bucket", le="10.0", **labels) == 6
    assert metric(stable, "polyserve_mirror_max_abs_diff_sum", **labels) == pytest.approx(21)


def test_an_ensemble_is_mirrored_to_the_model_named_at_the_target(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    canary = start_worker(scale_repo(tmp_path / "canary", 6.0, name="six"))
    stable_repo = scale_repo(tmp_path / "stable", 2.0, name="double")
    scale_repo(stable_repo, 3.0, name="triple")
    (stable_repo / "times6" / "1").mkdir(parents=True)
    (stable_repo / "times6" / "config.yaml").write_text(TIMES_SIX)
    config = tmp_path / "mirror.yaml"
    replace(config, f"models:\n  times6: {{target: '{canary.grpc}', model: six}}\n")
    stable = start_worker(stable_repo, mirror_config=config)
    wait_for(lambda: metric(stable, "polyserve_mirror_active", model="times6") == 1, "mirroring")
    grpc = grpcclient.InferenceServerClient(stable.grpc)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(grpc_infer(grpc, x, model="times6"), x * 6, rtol=1e-6)
    grpc_infer(grpc, x, model="double")  # not named in the file: not copied
    agreeing = {"model": "times6", "result": "agree"}
    wait_for(lambda: metric(stable, "polyserve_mirror_requests_total", **agreeing) == 1, "a copy")
    assert metric(stable, "polyserve_mirror_requests_total", model="double") == 0
    assert successes(canary, "six") == 1


def test_shared_memory_inputs_are_copied_before_the_client_reuses_them_and_outputs_are_not_mirrored(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    backend = GatedBackend()
    canary = start_worker(gated_repo(tmp_path / "canary"), extra_backends={"gated": backend})
    config = tmp_path / "mirror.yaml"
    write_mirror(config, canary.grpc, "rev2", queue=16, timeoutMs=30000)
    stable = start_worker(
        scale_repo(tmp_path / "stable", 2.0), mirror_config=config, allow_client_shm=True
    )
    wait_for(lambda: active(stable, "rev2"), "mirroring to start")
    grpc = grpcclient.InferenceServerClient(stable.grpc)
    tag = uuid.uuid4().hex[:8]
    region = shm.create_shared_memory_region(f"in_{tag}", f"/ps_mirror_{tag}", 16)
    out_region = shm.create_shared_memory_region(f"out_{tag}", f"/ps_mirror_out_{tag}", 16)
    try:
        for _ in range(mirroring.IN_FLIGHT):  # every sender waits on the closed gate
            grpc_infer(grpc, X)
        wait_for(lambda: held(canary) == mirroring.IN_FLIGHT, "the senders to be busy")
        shm.set_shared_memory_region(region, [X])
        grpc.register_system_shared_memory(f"in_{tag}", f"/ps_mirror_{tag}", 16)
        grpc.register_system_shared_memory(f"out_{tag}", f"/ps_mirror_out_{tag}", 16)
        inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_shared_memory(f"in_{tag}", 16)
        np.testing.assert_array_equal(grpc.infer("scale", [inp]).as_numpy("OUTPUT0"), X * 2)
        # The copy waits in the queue while the client reuses, then drops, its region.
        shm.set_shared_memory_region(region, [np.full((1, 4), 99.0, np.float32)])
        grpc.unregister_system_shared_memory(f"in_{tag}")
        out = grpcclient.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory(f"out_{tag}", 16)
        grpc.infer("scale", [_input(X)], outputs=[out])  # answers in shared memory: not copied
    finally:
        backend.gate.set()
        shm.destroy_shared_memory_region(region)
        shm.destroy_shared_memory_region(out_region)
    expected = mirroring.IN_FLIGHT + 1
    wait_for(lambda: copies(stable, "agree") == expected, "every copy to agree")
    assert copies(stable, "disagree") == 0 and copies(stable, "dropped") == 0


def _input(x: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def held(canary: RunningWorker) -> int:
    """Requests the gated canary holds: one runs (waiting at the gate), the rest queue."""
    pending = int(metric(canary, "nv_inference_pending_request_count", model="scale"))
    return pending + 1 if pending else 0


def test_the_mirror_follows_its_file_appearing_changing_target_and_disappearing(
    tmp_path: Path, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="polyserve_worker.mirroring")
    equal = start_worker(scale_repo(tmp_path / "equal", 2.0))
    other = start_worker(scale_repo(tmp_path / "other", 3.0))
    config = tmp_path / "mirror.yaml"
    stable = start_worker(scale_repo(tmp_path / "stable", 2.0), mirror_config=config)
    grpc = grpcclient.InferenceServerClient(stable.grpc)
    grpc_infer(grpc, X)
    assert "polyserve_mirror_active" not in families(stable), "no file, no mirroring"

    write_mirror(config, equal.grpc, "a")
    wait_for(lambda: active(stable, "a"), "the file to be taken up")
    grpc_infer(grpc, X)
    wait_for(lambda: copies(stable, "agree", "a") == 1, "a copy to the equal canary")

    write_mirror(config, other.grpc, "b")
    wait_for(lambda: active(stable, "b") and not active(stable, "a"), "the new target")
    grpc_infer(grpc, X)
    wait_for(lambda: copies(stable, "disagree", "b") == 1, "a copy to the other canary")

    replace(config, "models: {scale: {target: nowhere:1, percnt: 5}}\n")
    wait_for(lambda: "is invalid" in caplog.text, "the invalid file to be reported")
    assert "percnt" in caplog.text
    grpc_infer(grpc, X)
    wait_for(lambda: copies(stable, "disagree", "b") == 2, "the previous settings to hold")

    config.unlink()
    wait_for(lambda: not active(stable, "b"), "mirroring to stop")
    np.testing.assert_array_equal(grpc_infer(grpc, X), X * 2)
    assert copies(stable, "agree", "a") == 1 and copies(stable, "disagree", "b") == 2
    changes = [r for r in caplog.records if "mirror config" in r.getMessage()]
    assert len(changes) == 5, [r.getMessage() for r in changes]  # absent, a, b, invalid, absent


@pytest.fixture
def gated_canary(tmp_path: Path, start_worker: StartWorker) -> Iterator[RunningWorker]:
    backend = GatedBackend()
    canary = start_worker(gated_repo(tmp_path / "canary"), extra_backends={"gated": backend})
    yield canary
    backend.gate.set()


def test_a_slow_canary_fills_the_queue_and_copies_are_dropped_without_slowing_stable(
    tmp_path: Path, start_worker: StartWorker, gated_canary: RunningWorker
) -> None:
    config = tmp_path / "mirror.yaml"
    stable = start_worker(scale_repo(tmp_path / "stable", 2.0), mirror_config=config)
    grpc = grpcclient.InferenceServerClient(stable.grpc)
    latencies(grpc, 10)  # warm up
    without = latencies(grpc, 60)
    write_mirror(config, gated_canary.grpc, "slow", queue=4, timeoutMs=30000)
    wait_for(lambda: active(stable, "slow"), "mirroring to start")
    with_mirror = latencies(grpc, 60)
    held = mirroring.IN_FLIGHT + 4  # sending (held at the canary) and queued
    assert copies(stable, "dropped") >= 60 - held
    assert copies(stable, "agree") == 0, "the canary has answered nothing yet"
    assert statistics.median(with_mirror) < 3 * statistics.median(without) + 0.005, (
        statistics.median(with_mirror),
        statistics.median(without),
    )


def test_a_canary_that_is_down_counts_errors_and_recovers_when_it_comes_back(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    port = free_port()
    config = tmp_path / "mirror.yaml"
    stable = start_worker(scale_repo(tmp_path / "stable", 2.0), mirror_config=config)
    grpc = grpcclient.InferenceServerClient(stable.grpc)
    latencies(grpc, 10)
    without = latencies(grpc, 30)
    write_mirror(config, f"127.0.0.1:{port}", "down")
    wait_for(lambda: active(stable, "down"), "mirroring to start")
    with_mirror = latencies(grpc, 30)
    wait_for(lambda: copies(stable, "error") == 30, "every copy to fail")
    assert statistics.median(with_mirror) < 3 * statistics.median(without) + 0.005
    start_worker(scale_repo(tmp_path / "canary", 2.0), grpc_port=port)

    def recovered() -> bool:
        grpc_infer(grpc, X)
        return copies(stable, "agree") >= 1

    wait_for(recovered, "copies to reach the canary once it is back")


def test_sigterm_with_a_full_queue_still_exits_within_the_exit_timeout(
    tmp_path: Path, gated_canary: RunningWorker
) -> None:
    config = tmp_path / "mirror.yaml"
    write_mirror(config, gated_canary.grpc, "slow", queue=4, timeoutMs=60000)
    repo = scale_repo(tmp_path / "stable", 2.0)
    proc, _, grpc_port = start_process(
        repo, 3.0, f"--mirror-config={config}", "--exit-idle-secs=0.05"
    )
    try:
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")

        def senders_busy() -> bool:
            grpc_infer(grpc, X)
            return held(gated_canary) == mirroring.IN_FLIGHT

        wait_for(senders_busy, "the canary to hold every sender")
        for _ in range(20):  # the queue fills; the rest are dropped
            grpc_infer(grpc, X)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert took < 3.0, f"stopping took {took:.2f} s with a full mirror queue"
    assert "mirroring stopped; 4 queued copies dropped" in out.decode()
    assert "worker stopped" in out.decode()

"""``polyserve tune`` end to end: a real worker process, real load, a real Optuna search."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyserve_worker import config as model_config
from polyserve_worker.tuning import cli, flags, hardware, loadgen, measuring, searching, space
from tests.worker import models

BUNDLED_LIKE = """\
name: "tiny"
backend: "onnxruntime"
max_batch_size: 64
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 64 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    models.mlp_like(root / "tiny" / "1" / "model.onnx", width=64)
    (root / "tiny" / "config.pbtxt").write_text(BUNDLED_LIKE)
    return root


def test_budgets_read_as_durations() -> None:
    assert flags.seconds("30s") == 30
    assert flags.seconds("10m") == 600
    assert flags.seconds("1h30m") == 5400
    assert flags.seconds("45") == 45
    for bad in ("", "10 minutes", "m"):
        with pytest.raises(Exception, match="duration"):
            flags.seconds(bad)


def test_the_jobs_command_line_comes_from_the_tuners_own_function() -> None:
    rendered = flags.args(
        model_repository="/models",
        model="mlp",
        slo_p95_ms=50,
        budget="10m",
        output="/tmp/tuning",
        protocol="http",
        hardware_="pool=xeon,backend=openvino,precision=bf16",
        config_pbtxt=BUNDLED_LIKE,
        result_file="/dev/termination-log",
    )
    assert rendered[0] == "tune"
    parsed = flags.parser().parse_args(rendered[1:])
    assert (parsed.model, parsed.slo_p95_ms, parsed.budget) == ("mlp", 50, 600)
    assert parsed.config_pbtxt == BUNDLED_LIKE
    assert parsed.result_file == Path("/dev/termination-log")
    with pytest.raises(ValueError, match="refuse"):
        flags.args(
            model_repository="/models",
            model="mlp",
            slo_p95_ms=50,
            budget="10m",
            output="/tmp",
            protocol="carrier-pigeon",
        )


def test_hardware_fixes_the_pool_backend_and_precision_and_the_machine_the_rest() -> None:
    cpu_only = hardware.Machine("Xeon", 8, True, ())
    assert hardware.profile("", cpu_only) == space.Hardware(kind="KIND_CPU", cpus=8, bf16=True)
    fixed = hardware.profile("pool=xeon,backend=openvino,precision=bf16", cpu_only)
    assert (fixed.backend, fixed.precision) == ("openvino", "bf16")
    with pytest.raises(hardware.HardwareError, match="no NVIDIA GPU"):
        hardware.profile("pool=gpu", cpu_only)
    with_gpu = hardware.Machine("Xeon", 8, False, ("NVIDIA L4",))
    on_gpu = hardware.profile("backend=onnxruntime-cuda", with_gpu)
    assert (on_gpu.kind, on_gpu.backend) == ("KIND_GPU", "onnxruntime")
    for bad in ("pool=tpu", "backend=triton", "precision=fp8", "colour=blue"):
        with pytest.raises(hardware.HardwareError):
            hardware.profile(bad, with_gpu)


def test_the_cpu_model_and_native_bf16_are_read_from_cpuinfo() -> None:
    text = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu avx512f amx_bf16 amx_tile\n\nprocessor\t: 1\n"
    )
    assert hardware.cpu_info(text) == ("Intel(R) Xeon(R) Platinum 8480+", True)
    assert hardware.cpu_info("model name : AMD EPYC\nflags : avx2\n") == ("AMD EPYC", False)


def test_an_ensemble_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    from tests.worker.test_tuning_space import ENSEMBLE

    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "config.pbtxt").write_text(ENSEMBLE)
    err = io.StringIO()
    code = cli.main(
        [
            f"--model-repository={tmp_path}",
            "--model=pipeline",
            "--slo-p95-ms=50",
            "--budget=30s",
            f"--output={tmp_path / 'out'}",
        ],
        out=io.StringIO(),
        err=err,
    )
    assert code == 2
    assert "ensemble" in err.getvalue() and "classify, tokenize" in err.getvalue()


class Silent:
    def started(self, number: int, candidate: space.Candidate) -> None:
        pass

    def window(self, number: int, point: measuring.Point) -> None:
        pass

    def finished(self, trial: searching.Trial, best: searching.Trial | None) -> None:
        pass


def _tiny_load(worker: measuring.Worker) -> loadgen.LoadSpec:
    """The load of the tiny model over the worker's gRPC (the ramp sets concurrency and
    windows)."""
    return loadgen.LoadSpec(
        url=worker.grpc,
        mode="grpc",
        model="tiny",
        input_name="INPUT0",
        output_name="OUTPUT0",
        shape=(1, 64),
        concurrency=1,
        warmup_s=0,
        duration_s=0,
    )


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")
def test_a_lower_precision_is_measured_only_within_the_tolerance_of_fp32(
    repository: Path, tmp_path: Path
) -> None:
    worker = measuring.Worker(repository, tmp_path / "worker.log")
    worker.start()
    try:
        worker.load("tiny", None)
        completed = model_config.parse_json(json.dumps(worker.config("tiny")))
        hw = space.Hardware(kind="KIND_CPU", cpus=2, bf16=True)
        the_space = space.of(completed, "onnx", hw, slo_ms=50)
        fp32 = the_space.baseline()
        bf16 = space.Candidate(
            backend="openvino",
            precision="bf16",
            max_batch_size=64,
            threads=1,
            choices=(("PERFORMANCE_HINT", "LATENCY"),),
        )
        spec = _tiny_load(worker)
        verdicts = {}
        for tolerance in (1e-9, 0.05):
            plan = searching.Plan(
                slo_ms=50,
                deadline=time.monotonic() + 6,
                ramp=measuring.RampPlan(warmup_s=0.1, window_s=0.3, concurrencies=(1, 2)),
                tolerance=tolerance,
                candidates=(fp32, bf16),
            )
            trials = searching.Search("tiny", the_space, worker, spec, plan, Silent()).run()
            assert [t.candidate for t in trials] == [fp32, bf16]
            verdicts[tolerance] = trials[1]
    finally:
        worker.stop()
    strict, lenient = verdicts[1e-9], verdicts[0.05]
    assert strict.state == searching.REJECTED and strict.verdict is not None
    assert not strict.verdict.accepted and strict.verdict.max_abs_diff > 0
    assert not strict.curve.points  # never measured
    assert lenient.verdict is not None and lenient.verdict.accepted
    assert lenient.state == searching.MEASURED and lenient.curve.points


def test_tune_finds_a_config_at_least_as_good_as_the_bundled_one_within_30_seconds(
    repository: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tuned"
    began = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "polyserve_worker.main",
            "tune",
            f"--model-repository={repository}",
            "--model=tiny",
            "--slo-p95-ms=50",
            "--budget=30s",
            f"--output={out}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr[-2000:]
    assert elapsed < 30 + 10, f"took {elapsed:.1f} s for a 30 s budget"
    result = json.loads((out / "result.json").read_text())
    assert result["capacity"] >= result["baselineCapacity"] > 0
    assert result["trials"] >= 2
    assert result["p95Ms"] <= 50
    tuned = model_config.parse_pbtxt((out / "config.pbtxt").read_text())
    model_config.validate(tuned)
    assert tuned.name == "tiny"
    report = (out / "report.txt").read_text()
    assert "your config (trial 0)" in report and "winner: trial" in report
    assert "<svg" in (out / "report.html").read_text()
    assert "trial 0 measured" in done.stderr  # the progress, one line per trial off a terminal


def test_the_best_trials_are_re_measured_and_the_winner_is_one_of_them(
    repository: Path, tmp_path: Path
) -> None:
    worker = measuring.Worker(repository, tmp_path / "worker.log")
    worker.start()
    try:
        worker.load("tiny", None)
        completed = model_config.parse_json(json.dumps(worker.config("tiny")))
        the_space = space.of(completed, "onnx", space.Hardware(cpus=2), slo_ms=50)
        candidates = (the_space.baseline(), *the_space.starts())
        spec = _tiny_load(worker)
        plan = searching.Plan(
            slo_ms=50,
            deadline=time.monotonic() + 30,
            ramp=measuring.RampPlan(warmup_s=0.1, window_s=0.3, concurrencies=(1, 2)),
            candidates=candidates,
            confirm_share=0.5,
            confirm_top=2,
            confirm_rounds=1,
        )
        search = searching.Search("tiny", the_space, worker, spec, plan, Silent())
        trials = search.run()
    finally:
        worker.stop()
    assert len(candidates) == 3 and [t.candidate for t in trials] == list(candidates)
    confirmed = [t for t in trials if t.confirmed]
    assert len(confirmed) == 2
    for t in confirmed:
        assert len(t.capacities) == 2
        assert t.capacity == pytest.approx(sum(t.capacities) / 2)
        assert "re-measured" in t.note
    (single,) = [t for t in trials if not t.confirmed]
    assert single.capacities == [single.capacity]
    assert single.capacity <= min(t.capacities[0] for t in confirmed)  # the top two were
    assert search.winner() in confirmed

"""The tuner's search space, read from a model's config, the hardware and the backend registry."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from polyserve_worker import backends
from polyserve_worker import config as model_config
from polyserve_worker.tuning import space

MLP = """
name: "mlp"
backend: "onnxruntime"
max_batch_size: 64
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

UNBATCHED = """
name: "fixed"
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1, 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1, 4 ] } ]
"""

ENSEMBLE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "tokenize" model_version: -1 input_map { key: "INPUT0" value: "IN" }
    output_map { key: "OUTPUT0" value: "mid" } },
  { model_name: "classify" model_version: -1 input_map { key: "INPUT0" value: "mid" }
    output_map { key: "OUTPUT0" value: "OUT" } }
] }
"""

CPU = space.Hardware(kind="KIND_CPU", cpus=4, bf16=False)
AMX = space.Hardware(kind="KIND_CPU", cpus=4, bf16=True)
GPU = space.Hardware(kind="KIND_GPU", cpus=8)


def parse(text: str) -> Any:
    return model_config.parse_pbtxt(text)


class RandomTrial:
    """Answers Optuna's suggest_categorical with a seeded random choice."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.asked: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.asked[name] = self.rng.choice(list(choices))
        return self.asked[name]


class FixedTrial:
    """Answers with given parameters, as Optuna does for an enqueued trial."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        assert self.params[name] in choices
        return self.params[name]


def test_a_batching_model_offers_the_batcher_its_sizes_delays_instances_and_threads() -> None:
    found = space.of(parse(MLP), "onnx", CPU, slo_ms=50).knobs()
    assert found["dynamic_batching"] == (True, False)
    assert found["max_batch_size"] == (4, 16, 64)
    assert found["preferred_batch_size"] == (0, -1)
    assert found["max_queue_delay_us"] == (0, 250, 1000, 4000)
    assert found["instances"] == (1, 2, 3, 4)
    assert found["threads:onnxruntime"] == (1, 2, 3, 4)
    # ONNX on a CPU: ONNX Runtime and OpenVINO, OpenVINO with its performance hint.
    assert set(found["backend"]) == {"onnxruntime", "openvino"}
    assert found["threads:openvino"] == (1, 2, 3, 4)
    assert found["openvino:PERFORMANCE_HINT"] == ("LATENCY", "THROUGHPUT")


def test_a_model_with_max_batch_size_0_gets_no_batching_knob() -> None:
    the_space = space.of(parse(UNBATCHED), "onnx", CPU, slo_ms=50)
    knobs = the_space.knobs()
    assert not {"dynamic_batching", "max_batch_size", "preferred_batch_size"} & set(knobs)
    assert "max_queue_delay_us" not in knobs
    for seed in range(20):
        config = the_space.apply(the_space.suggest(RandomTrial(seed)))
        assert config.max_batch_size == 0
        assert not config.HasField("dynamic_batching")
        model_config.validate(config)


def test_an_ensemble_is_not_tunable_and_the_error_names_its_members() -> None:
    with pytest.raises(space.NotTunable, match="ensemble") as caught:
        space.of(parse(ENSEMBLE), "onnx", CPU, slo_ms=50)
    assert "classify" in str(caught.value) and "tokenize" in str(caught.value)


def test_gpu_only_engines_and_fp16_are_offered_only_on_a_gpu() -> None:
    on_cpu = space.of(parse(MLP), "onnx", AMX, slo_ms=50)
    assert "tensorrt" not in on_cpu.backends
    assert all("fp16" not in p for p in on_cpu.precisions.values())
    on_gpu = space.of(parse(MLP), "onnx", GPU, slo_ms=50)
    assert on_gpu.backends[0] == "tensorrt"
    assert "onnxruntime" in on_gpu.backends and "openvino" not in on_gpu.backends
    assert on_gpu.precisions["tensorrt"] == ("fp32", "fp16")
    # No intra-op thread knob on a GPU; instances are GPU instances.
    assert not on_gpu.threads
    candidate = on_gpu.suggest(RandomTrial(1))
    assert on_gpu.apply(candidate).instance_group[0].kind == (
        model_config.model_config_pb2.ModelInstanceGroup.KIND_GPU
    )


def test_bf16_is_offered_on_a_cpu_only_with_amx_or_avx512_bf16() -> None:
    assert space.of(parse(MLP), "onnx", CPU, slo_ms=50).precisions["openvino"] == ("fp32",)
    assert space.of(parse(MLP), "onnx", AMX, slo_ms=50).precisions["openvino"] == ("fp32", "bf16")
    # ONNX Runtime runs fp32 only on CPUs: no precision knob for it either way.
    assert space.of(parse(MLP), "onnx", AMX, slo_ms=50).precisions["onnxruntime"] == ("fp32",)


def test_a_fixed_backend_and_precision_are_the_only_ones_offered() -> None:
    tier = space.Hardware(kind="KIND_CPU", cpus=2, bf16=True, backend="openvino", precision="bf16")
    the_space = space.of(parse(MLP), "onnx", tier, slo_ms=50)
    assert the_space.backends == ("openvino",)
    assert the_space.precisions == {"openvino": ("bf16",)}
    config = the_space.apply(the_space.baseline())
    assert config.backend == "openvino"
    assert config.parameters["precision"].string_value == "bf16"
    # The backend it replaced leaves no parameter of its own behind.
    assert "intra_op_thread_count" not in config.parameters
    assert config.parameters["INFERENCE_NUM_THREADS"].string_value in ("1", "2")
    with pytest.raises(space.NotTunable):
        space.of(parse(MLP), "onnx", space.Hardware(backend="tensorrt"), slo_ms=50)


def test_a_tensorrt_engine_keeps_the_precision_it_was_built_in() -> None:
    the_space = space.of(parse(MLP), "tensorrt", GPU, slo_ms=50)
    assert the_space.backends == ("tensorrt",)
    assert the_space.precisions["tensorrt"] == ("fp32",)


def test_queue_delays_longer_than_a_quarter_of_the_slo_are_not_offered() -> None:
    assert space.of(parse(MLP), "onnx", CPU, slo_ms=4).queue_delays_us == (0, 250, 1000)
    assert space.of(parse(MLP), "onnx", CPU, slo_ms=0.5).queue_delays_us == (0,)


def test_the_baseline_is_the_models_own_config() -> None:
    base = parse(MLP)
    the_space = space.of(base, "onnx", CPU, slo_ms=50)
    baseline = the_space.baseline()
    assert baseline == space.Candidate(
        backend="onnxruntime",
        batching=True,
        max_batch_size=64,
        instances=1,
        threads=1,
    )
    assert the_space.apply(baseline) == base
    # Enqueued as Optuna parameters, it comes back as the same candidate.
    assert the_space.suggest(FixedTrial(the_space.params(baseline))) == baseline


def test_every_candidate_applies_to_a_config_the_worker_accepts() -> None:
    the_space = space.of(parse(MLP), "onnx", AMX, slo_ms=50)
    for seed in range(200):
        trial = RandomTrial(seed)
        candidate = the_space.suggest(trial)
        assert the_space.suggest(FixedTrial(the_space.params(candidate))) == candidate
        config = the_space.apply(candidate)
        model_config.validate(config)
        backends.check_parameters(candidate.backend, config)
        backends.check_precision(candidate.backend, candidate.precision, ["KIND_CPU"], "mlp")
        if candidate.batching:
            assert config.max_batch_size == candidate.max_batch_size
            preferred = list(config.dynamic_batching.preferred_batch_size)
            assert preferred in ([], [candidate.max_batch_size])
        else:
            assert not config.HasField("dynamic_batching")
            assert config.max_batch_size == 64  # the batcher off keeps the client bound


def test_an_oversubscribed_candidate_is_refused_before_it_is_measured() -> None:
    the_space = space.of(parse(MLP), "onnx", space.Hardware(cpus=2), slo_ms=50)
    too_many = space.Candidate(backend="onnxruntime", instances=2, threads=2)
    assert "oversubscribed" in (the_space.problem(too_many) or "")
    assert the_space.problem(space.Candidate(backend="onnxruntime", instances=2, threads=1)) is None


def test_the_grid_holds_every_candidate_once_and_no_refused_one() -> None:
    the_space = space.of(parse(MLP), "onnx", space.Hardware(cpus=2), slo_ms=50)
    grid = the_space.grid()
    assert len(grid) == len(set(grid))
    assert all(the_space.problem(c) is None for c in grid)
    assert the_space.baseline() in grid
    # ONNX Runtime: (1 instance x 1-2 threads, 2 x 1) = 3; OpenVINO: 3 x 2 hints = 6;
    # each with the batcher off or on (3 sizes x 2 preferred x 4 delays).
    assert len(grid) == (3 + 6) * (1 + 3 * 2 * 4)


def test_the_informed_starts_are_the_two_throughput_corners_of_the_space() -> None:
    two_cpus = space.Hardware(kind="KIND_CPU", cpus=2)
    the_space = space.of(parse(MLP), "onnx", two_cpus, slo_ms=50)
    big, parallel = the_space.starts()
    assert (big.instances, big.threads) == (1, 2)
    assert big.batching and big.max_batch_size == big.preferred_batch_size == 64
    assert (parallel.instances, parallel.threads) == (2, 1)
    assert parallel.batching and parallel.max_batch_size == 16
    assert parallel.preferred_batch_size == 0
    # The middle queue delay offered, the baseline's backend and precision.
    assert big.max_queue_delay_us == parallel.max_queue_delay_us == 1000
    base = the_space.baseline()
    assert {c.backend for c in (big, parallel)} == {base.backend}
    assert {c.precision for c in (big, parallel)} == {base.precision}
    # Each is something Optuna can be asked for, and nothing the space refuses.
    for candidate in (big, parallel):
        assert the_space.suggest(FixedTrial(the_space.params(candidate))) == candidate
        assert the_space.problem(candidate) is None


def test_the_informed_starts_leave_out_the_baseline_and_respect_an_unbatched_model() -> None:
    one_cpu = space.Hardware(kind="KIND_CPU", cpus=1)
    unbatched = space.of(parse(UNBATCHED), "onnx", one_cpu, slo_ms=50)
    assert unbatched.starts() == []  # one CPU, no batcher: both corners are the baseline
    four = space.of(parse(UNBATCHED), "onnx", CPU, slo_ms=50)
    assert (four.baseline().instances, four.baseline().threads) == (1, 4)
    starts = four.starts()
    assert [(c.instances, c.threads, c.batching) for c in starts] == [(4, 1, False)]
    on_gpu = space.of(parse(MLP), "onnx", GPU, slo_ms=50)
    assert [(c.instances, c.threads) for c in on_gpu.starts()] == [(1, None), (2, None)]

"""What the schema cannot say: backend/pool fit and ensemble graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from polyserve_operator import api, validating

ROOT = Path(__file__).resolve().parents[2]


def _ensemble() -> tuple[dict[str, api.InferenceModel | None], dict[str, Any]]:
    docs = list(yaml.safe_load_all((ROOT / "manifests/examples/ensemble.yaml").read_text()))
    members: dict[str, api.InferenceModel | None] = {
        d["metadata"]["name"]: api.InferenceModel.model_validate(d)
        for d in docs
        if d["kind"] == "InferenceModel"
    }
    return members, docs[-1]["spec"]


def _problems(members: dict[str, api.InferenceModel | None], spec: dict[str, Any]) -> str:
    return "; ".join(validating.ensemble(api.InferenceEnsembleSpec.model_validate(spec), members))


def test_the_example_ensemble_is_valid() -> None:
    assert _problems(*_ensemble()) == ""


def test_tensorrt_without_a_gpu_is_refused() -> None:
    hw = api.Hardware(pool="xeon", backend="tensorrt")
    assert "needs a GPU" in validating.hardware(hw)[0]


def test_a_cpu_backend_on_the_gpu_pool_is_refused_with_the_alternatives() -> None:
    hw = api.Hardware(pool="gpu", backend="openvino")
    assert "onnxruntime-cuda" in validating.hardware(hw)[0]


def test_an_unknown_member_is_named() -> None:
    members, spec = _ensemble()
    members["sentiment"] = None
    assert "InferenceModel sentiment does not exist" in _problems(members, spec)


def test_a_cycle_is_found_and_shown() -> None:
    members, spec = _ensemble()
    spec["steps"][0]["inputs"] = {"text": "classify.probabilities"}
    assert "cycle: classify -> tokenize -> classify" in _problems(members, spec)


def test_a_missing_output_and_a_dtype_mismatch_are_reported() -> None:
    members, spec = _ensemble()
    spec["steps"][1]["inputs"] = {"input_ids": "tokenize.tokens"}
    assert "has no output tokens (it has ids)" in _problems(members, spec)
    spec["steps"][1]["inputs"] = {"input_ids": "TEXT"}
    assert "TEXT is TYPE_STRING but sentiment input input_ids is TYPE_INT64" in _problems(
        members, spec
    )


def test_every_ensemble_output_needs_exactly_one_producer() -> None:
    members, spec = _ensemble()
    spec["steps"][1]["outputs"] = {}
    assert "PROBABILITIES is produced by no step" in _problems(members, spec)


def test_members_must_run_on_the_ensembles_backend() -> None:
    members, spec = _ensemble()
    spec["hardware"] = {"pool": "xeon", "backend": "openvino"}
    assert "members share one worker" in _problems(members, spec)


def test_the_workers_own_graph_rules_catch_a_batch_dimension_mismatch() -> None:
    members, spec = _ensemble()
    spec = {**spec, "maxBatchSize": 0}  # members batch (max_batch_size 8); the ensemble not
    problems = _problems(members, spec)
    assert "expects shape [-1" in problems
    assert "this ensemble" not in problems

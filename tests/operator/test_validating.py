"""What the schema cannot say: backend/pool fit and ensemble graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from polyserve_operator import api, validating

ROOT = Path(__file__).resolve().parents[2]


def _docs(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "manifests/examples" / name).read_text()))


def _ensemble() -> tuple[dict[str, api.InferenceModel | None], dict[str, Any]]:
    docs = _docs("ensemble.yaml")
    members: dict[str, api.InferenceModel | None] = {
        d["metadata"]["name"]: api.InferenceModel.model_validate(d)
        for d in docs
        if d["kind"] == "InferenceModel"
    }
    return members, docs[-1]["spec"]


def _problems(
    members: dict[str, api.InferenceModel | None], spec: dict[str, Any], name: str = "pipeline"
) -> str:
    ie = api.InferenceEnsemble.model_validate({"metadata": {"name": name}, "spec": spec})
    return "; ".join(validating.ensemble(ie, members))


def _model_problems(**changes: Any) -> str:
    (doc,) = _docs("resnet-xeon.yaml")
    doc["metadata"].update(changes.pop("metadata", {}))
    doc["spec"].update(changes)
    return "; ".join(validating.model(api.InferenceModel.model_validate(doc)))


def test_the_example_ensemble_is_valid() -> None:
    assert _problems(*_ensemble()) == ""


def test_tensorrt_without_a_gpu_is_refused() -> None:
    hw = api.Hardware(pool="xeon", backend="tensorrt")
    assert "need a GPU" in validating.hardware(hw)[0]


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
    problems = _problems(members, spec)
    assert "the ensemble: steps" in problems and "wait on each other (a cycle)" in problems


def test_a_missing_output_and_a_dtype_mismatch_are_reported_on_the_step_at_fault() -> None:
    members, spec = _ensemble()
    spec["steps"][1]["inputs"] = {"input_ids": "tokenize.tokens"}
    assert "step tokenize (tokenizer): the model has no output 'tokens' (its outputs: ids)" in (
        _problems(members, spec)
    )
    spec["steps"][1]["inputs"] = {"input_ids": "TEXT"}
    assert (
        "step classify (sentiment): input 'input_ids' is TYPE_INT64 but tensor 'TEXT' from "
        "ensemble input 'TEXT' is TYPE_STRING"
    ) in _problems(members, spec)


def test_a_source_that_names_no_step_is_a_tensor_nobody_produces() -> None:
    members, spec = _ensemble()
    spec["steps"][1]["inputs"] = {"input_ids": "tokenise.ids"}
    assert "reads tensor 'tokenise.ids', which no ensemble input or step produces" in (
        _problems(members, spec)
    )


def test_every_ensemble_output_needs_exactly_one_producer() -> None:
    members, spec = _ensemble()
    spec["steps"][1]["outputs"] = {}
    assert "output 'PROBABILITIES' is produced by no step" in _problems(members, spec)
    spec["steps"][1]["outputs"] = {"probabilities": "SCORES"}
    assert "maps a model output to SCORES, which is not in the ensemble's outputs" in (
        _problems(members, spec)
    )


def test_members_whose_tensors_come_from_the_model_file_are_checked_for_the_rest() -> None:
    members, spec = _ensemble()
    tokenizer = members["tokenizer"]
    assert tokenizer is not None
    members["tokenizer"] = tokenizer.model_copy(
        update={"spec": tokenizer.spec.model_copy(update={"config": None})}
    )
    assert _problems(members, spec) == ""
    spec["steps"][1]["inputs"] = {"input_ids": "nowhere"}
    assert "reads tensor 'nowhere'" in _problems(members, spec)


def test_names_the_rendered_objects_cannot_carry_are_refused_with_a_fix() -> None:
    assert _model_problems() == ""
    dotted = _model_problems(metadata={"name": "resnet.v2"})
    assert "must be lowercase letters, digits and '-'" in dotted and "e.g. resnet-v2" in dotted
    assert "longer than 63 characters" in _model_problems(metadata={"name": "m" * 64})
    assert "must be lowercase" in _problems(*_ensemble(), name="Pipeline")


def test_a_rollout_that_could_never_replace_a_pod_is_refused() -> None:
    problems = _model_problems(rollout={"maxSurge": 0, "maxUnavailable": "0%"})
    assert "both 0, so no pod could ever be replaced" in problems
    assert _model_problems(rollout={"maxSurge": 0, "maxUnavailable": 1}) == ""


def test_members_must_run_on_the_ensembles_pool_but_may_use_other_backends() -> None:
    members, spec = _ensemble()
    spec["hardware"] = {"pool": "xeon", "backend": "openvino"}
    assert _problems(members, spec) == ""
    spec["hardware"] = {"pool": "gpu", "backend": "onnxruntime"}
    assert "runs on pool xeon, but the ensemble's worker runs on pool gpu" in _problems(
        members, spec
    )


def test_the_workers_own_graph_rules_catch_a_batch_dimension_mismatch() -> None:
    members, spec = _ensemble()
    spec = {**spec, "maxBatchSize": 0}  # members batch (max_batch_size 8); the ensemble not
    problems = _problems(members, spec)
    assert "expects shape [-1" in problems
    assert "this ensemble" not in problems


def _tiered(tiers: list[dict[str, Any]]) -> str:
    (doc,) = _docs("tiered.yaml")
    doc["spec"]["tiers"] = tiers
    return "; ".join(validating.model(api.InferenceModel.model_validate(doc)))


def test_the_tiered_example_is_valid_and_runs_first_on_its_cheapest_tier() -> None:
    (doc,) = _docs("tiered.yaml")
    im = api.InferenceModel.model_validate(doc)
    assert validating.model(im) == []
    assert im.spec.hardware == im.spec.tiers[0].hardware  # type: ignore[index]


def test_a_tier_whose_backend_cannot_load_the_format_is_refused_with_its_name() -> None:
    problems = _tiered(
        [
            {"name": "cpu", "hardware": {"pool": "xeon", "backend": "onnxruntime"}, "capacity": 1},
            {"name": "tf", "hardware": {"pool": "xeon", "backend": "tensorflow"}, "capacity": 9},
        ]
    )
    assert "tier tf: " in problems and "cannot load on backend tensorflow" in problems


def test_two_tiers_on_the_same_hardware_are_refused_with_the_fix() -> None:
    problems = _tiered(
        [
            {"name": "small", "hardware": {"pool": "xeon", "backend": "openvino"}, "capacity": 1},
            # auto picks OpenVINO for ONNX on Xeon: the same engine under another name.
            {"name": "big", "hardware": {"pool": "xeon", "backend": "auto"}, "capacity": 9},
        ]
    )
    assert "tiers small and big run on the same hardware" in problems
    assert "spec.scaling" in problems


def test_tier_names_must_be_unique() -> None:
    xeon = {"pool": "xeon", "backend": "onnxruntime"}
    bf16 = {"pool": "xeon", "backend": "openvino", "precision": "bf16"}
    problems = _tiered(
        [
            {"name": "x", "hardware": xeon, "capacity": 1},
            {"name": "x", "hardware": bf16, "capacity": 9},
        ]
    )
    assert "tier names must be unique" in problems


def test_an_ensembles_canary_is_checked_as_a_models_is() -> None:
    members, spec = _ensemble()
    spec["rollout"] = {
        "strategy": "Canary",
        "canary": {"steps": [{"setWeight": 50}], "mirror": {"percent": 10}},
    }
    assert _problems(members, spec) == ""
    spec["tls"] = {"secretName": "pipeline-tls"}
    spec["rollout"]["canary"]["trafficRouting"] = {"gatewayAPI": {"parentRefs": [{"name": "g"}]}}
    assert "Gateway API routes reach the pods in plain text" in _problems(members, spec)

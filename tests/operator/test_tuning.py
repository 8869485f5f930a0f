"""spec.tuning in the operator: the tuning Jobs, status.tuning, the tiers' measured capacity,
and the patch ``polyserve tune --from-status`` prints."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from polyserve_operator import api, render, settings, tiers, tuning, tuning_commands, validating
from polyserve_operator.render import tuning as tuning_render
from polyserve_operator.render import workloads
from polyserve_worker.tuning import flags

CFG = settings.Settings()
NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)
Obj = dict[str, Any]


def body(tiered: bool = True, **spec: Any) -> Obj:
    doc: Obj = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "ranker", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": "s3://models/ranker/v3/model.onnx"},
            "config": {"max_batch_size": 32, "dynamic_batching": {}},
            "resources": {"requests": {"cpu": "2", "memory": "2Gi"}},
            "tuning": {"sloP95Ms": 50, "budget": "5m"},
        },
    }
    if tiered:
        doc["spec"]["tiers"] = [
            {"name": "xeon", "hardware": {"pool": "xeon", "backend": "onnxruntime"}},
            {
                "name": "bf16",
                "hardware": {"pool": "xeon", "backend": "openvino", "precision": "bf16"},
                "capacity": 900,
            },
        ]
    else:
        doc["spec"]["hardware"] = {"pool": "gpu"}
    doc["spec"].update(spec)
    return doc


def model(doc: Obj) -> api.InferenceModel:
    return api.InferenceModel.model_validate(doc)


def jobs_of(doc: Obj) -> dict[str, Obj]:
    im = model(doc)
    return {
        p.tier: tuning_render.job(im, p, tuning_render.key(im, p, CFG), CFG)
        for p in tuning_render.profiles(im)
    }


def test_a_tuning_job_per_tier_fetches_and_is_placed_as_that_tiers_worker_pods() -> None:
    doc = body()
    im = model(doc)
    made = jobs_of(doc)
    assert set(made) == {"xeon", "bf16"}
    job = made["bf16"]
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(job, version, strict=True)
    bf16 = im.spec.tiers[1] if im.spec.tiers else None
    assert bf16 is not None
    serving = workloads.deployment(
        render.model_workload(
            im.model_copy(update={"spec": im.spec.model_copy(update={"hardware": bf16.hardware})})
        ),
        CFG,
    )["spec"]["template"]["spec"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod.get("nodeSelector") == serving.get("nodeSelector")
    assert pod.get("affinity") == serving.get("affinity")  # bf16: AMX or AVX512_BF16 nodes
    fetch = [c for c in serving["initContainers"] if c["name"].startswith("fetch")]
    assert pod["initContainers"] == fetch  # no ConfigMap to copy a config from
    assert "config" not in {v["name"] for v in pod["volumes"]}
    (tune,) = pod["containers"]
    assert tune["image"] == CFG.images.worker_cpu
    assert tune["resources"] == serving["containers"][0]["resources"]
    assert tune["terminationMessagePath"] == flags.TERMINATION_LOG
    assert tune["command"] == ["polyserve-worker"] and tune["args"][0] == "tune"
    parsed = flags.parser().parse_args(tune["args"][1:])
    assert (parsed.model, parsed.slo_p95_ms, parsed.budget) == ("ranker", 50, 300)
    assert parsed.hardware == "pool=xeon,backend=openvino,precision=bf16"
    assert 'backend: "openvino"' in parsed.config_pbtxt
    assert parsed.result_file.as_posix() == flags.TERMINATION_LOG
    # Its pods are not the workload's: no Service selects them, no pod watch counts them.
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert "app.kubernetes.io/instance" not in labels and workloads.MANAGER not in labels.values()
    # The Job itself is the model's (watched, and deleted with it).
    meta = job["metadata"]
    assert meta["labels"]["app.kubernetes.io/instance"] == "ranker"
    assert meta["ownerReferences"][0]["uid"] == "u-1"
    assert job["spec"]["activeDeadlineSeconds"] == 300 + tuning_render.START_SECONDS


def test_a_model_without_tiers_is_tuned_on_its_one_hardware() -> None:
    (job,) = jobs_of(body(tiered=False)).values()
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == CFG.images.worker_gpu
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = flags.parser().parse_args(pod["containers"][0]["args"][1:])
    assert args.hardware.startswith("pool=gpu,backend=tensorrt")


def test_a_run_is_keyed_by_what_it_measures_and_not_by_the_config_it_recommends() -> None:
    def keys(doc: Obj) -> dict[str, str]:
        im = model(doc)
        return {p.tier: tuning_render.key(im, p, CFG) for p in tuning_render.profiles(im)}

    base = keys(body())
    assert keys(body(config={"max_batch_size": 8})) == base
    artifact = keys(body(artifact={"uri": "s3://models/ranker/v4/model.onnx"}))
    assert artifact["xeon"] != base["xeon"] and artifact["bf16"] != base["bf16"]
    assert keys(body(tuning={"sloP95Ms": 20})) != base
    changed = body()
    changed["spec"]["tiers"][1]["hardware"]["precision"] = "fp32"
    assert keys(changed)["xeon"] == base["xeon"] and keys(changed)["bf16"] != base["bf16"]


SUMMARY = {
    "model": "ranker",
    "sloP95Ms": 50,
    "protocol": "grpc",
    "capacity": 1234.5,
    "p95Ms": 21.5,
    "concurrency": 32,
    "baselineCapacity": 800.0,
    "trials": 14,
    "seconds": 290.1,
    "cpuModel": "Intel(R) Xeon(R) Platinum 8480+",
    "cpus": 2,
    "gpus": [],
    "backend": "onnxruntime",
    "precision": "fp32",
    "config": {
        "backend": "onnxruntime",
        "max_batch_size": 32,
        "dynamic_batching": {"max_queue_delay_microseconds": 250},
        "instance_group": [{"kind": "KIND_CPU", "count": 2}],
        "parameters": {"intra_op_thread_count": "1"},
    },
}


def finished(job: Obj, kind: str) -> Obj:
    done = copy.deepcopy(job)
    done["status"] = {"conditions": [{"type": kind, "status": "True", "reason": "R"}]}
    return done


def pod_with(message: str) -> Obj:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-12-01T12:04:00Z"},
        "spec": {"nodeName": "xeon-0"},
        "status": {
            "containerStatuses": [
                {"name": "tune", "state": {"terminated": {"exitCode": 0, "message": message}}}
            ]
        },
    }


def test_status_tuning_follows_each_job_from_start_to_result() -> None:
    doc = body()
    im = model(doc)
    first = tuning.step(im, None, [], lambda _: [], CFG, NOW)
    assert [j["metadata"]["name"] for j in first.jobs] == [e["job"] for e in first.status]
    assert {e["tier"]: e["phase"] for e in first.status} == {"xeon": "Running", "bf16": "Running"}
    assert [e[1] for e in first.events] == ["TuningStarted", "TuningStarted"]
    for entry in first.status:
        api.ProfileTuning.model_validate(entry)
    # Nothing new while they run; a Job missing from the index is applied again.
    created = {j["metadata"]["name"]: j for j in first.jobs}
    running = tuning.step(im, first.status, list(created.values()), lambda _: [], CFG, NOW)
    assert running.jobs == [] and running.status == first.status and not running.events
    xeon_job, bf16_job = first.jobs
    again = tuning.step(im, first.status, [xeon_job], lambda _: [], CFG, NOW)
    assert [j["metadata"]["name"] for j in again.jobs] == [bf16_job["metadata"]["name"]]
    # One ends with the tuner's summary as its termination message, one fails.
    pods = {
        xeon_job["metadata"]["name"]: [pod_with(json.dumps(SUMMARY))],
        bf16_job["metadata"]["name"]: [pod_with("polyserve tune: the worker could not load it")],
    }
    ended = tuning.step(
        im,
        first.status,
        [finished(xeon_job, "Complete"), finished(bf16_job, "Failed")],
        lambda name: pods[name],
        CFG,
        NOW,
    )
    by_tier = {e["tier"]: e for e in ended.status}
    xeon = by_tier["xeon"]
    assert xeon["phase"] == "Succeeded"
    assert xeon["result"]["capacity"] == 1234.5 and xeon["result"]["node"] == "xeon-0"
    assert xeon["result"]["nodeType"] == "Intel(R) Xeon(R) Platinum 8480+ (2 CPUs)"
    assert xeon["result"]["config"]["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
    assert by_tier["bf16"]["phase"] == "Failed"
    assert "could not load it" in by_tier["bf16"]["message"]
    assert {e[1] for e in ended.events} == {"Tuned", "TuningFailed"}
    status = api.WorkloadStatus.model_validate({"tuning": ended.status})
    assert status.tuning is not None
    # Done is done: no new Job until what it measures changes.
    settled = tuning.step(im, ended.status, [], lambda _: [], CFG, NOW)
    assert settled.jobs == [] and settled.status == ended.status
    # A new artifact: a new run per tier, the last result kept meanwhile.
    newer = model(body(artifact={"uri": "s3://models/ranker/v4/model.onnx"}))
    rerun = tuning.step(newer, ended.status, [], lambda _: [], CFG, NOW)
    assert len(rerun.jobs) == 2
    kept = {e["tier"]: e for e in rerun.status}["xeon"]
    assert kept["phase"] == "Running" and kept["result"]["capacity"] == 1234.5
    assert kept["key"] != kept["result"]["key"]


def test_a_result_that_is_not_the_tuners_fails_the_run_with_what_it_said() -> None:
    im = model(body(tiered=False))
    first = tuning.step(im, None, [], lambda _: [], CFG, NOW)
    (job,) = first.jobs
    ended = tuning.step(
        im, first.status, [finished(job, "Complete")], lambda _: [pod_with("hello")], CFG, NOW
    )
    (entry,) = ended.status
    assert entry["phase"] == "Failed" and "hello" in entry["message"]


def tier(name: str, capacity: float | None = None) -> api.Tier:
    found: Obj = {"name": name, "hardware": {"pool": "xeon"}, "replicas": {"min": 1, "max": 1}}
    if capacity is not None:
        found["capacity"] = capacity
    return api.Tier.model_validate(found)


def test_a_tier_without_a_declared_capacity_uses_the_measured_one() -> None:
    measured = [{"tier": "small", "key": "k", "phase": "Running", "result": {"capacity": 100}}]
    tier_list = tiers.measured([tier("small"), tier("big", 1000)], measured)
    assert [t.capacity for t in tier_list] == [100, 1000]
    # A declared capacity wins over a measured one.
    assert tiers.measured([tier("small", 50)], measured)[0].capacity == 50
    tiering = api.Tiering(promote_after="1m", min_dwell="0s")
    d = tiers.decide(tier_list, tiering, None, tiers.Load(90), NOW)
    assert d.status["capacities"] == {"small": 100, "big": 1000}
    d = tiers.decide(
        tier_list, tiering, d.status, tiers.Load(90), NOW + datetime.timedelta(minutes=2)
    )
    assert d.target == 1, "90 requests/s is above 0.8 x the measured 100"


def test_a_tier_with_no_capacity_yet_moves_on_latency_alone() -> None:
    tier_list = [tier("small"), tier("big", 1000)]
    tiering = api.Tiering(promote_after="1m", min_dwell="0s", latency_slo_ms=50)
    d = tiers.decide(tier_list, tiering, None, tiers.Load(5000), NOW)
    d = tiers.decide(
        tier_list, tiering, d.status, tiers.Load(5000), NOW + datetime.timedelta(minutes=2)
    )
    assert d.target == 0, "no capacity: the rate alone says nothing"
    later = NOW + datetime.timedelta(minutes=4)
    d = tiers.decide(tier_list, tiering, d.status, tiers.Load(5000, p95_ms=80), later)
    d = tiers.decide(
        tier_list,
        tiering,
        d.status,
        tiers.Load(5000, p95_ms=80),
        later + datetime.timedelta(minutes=2),
    )
    assert d.target == 1
    assert d.status["capacities"] == {"big": 1000}


def test_a_tier_without_capacity_needs_spec_tuning() -> None:
    doc = body()
    assert validating.model(model(doc)) == []
    del doc["spec"]["tuning"]
    assert validating.model(model(doc)) == [
        "tier xeon: give capacity, or spec.tuning to measure it"
    ]


def with_results(doc: Obj, results: dict[str, Obj]) -> Obj:
    doc = copy.deepcopy(doc)
    doc["status"] = {
        "tuning": [
            {"tier": t, "key": "k1", "phase": "Succeeded", "result": {"key": "k1", **r}}
            for t, r in results.items()
        ]
    }
    return doc


RESULT = {
    "completedAt": "2026-12-01T12:05:00Z",
    "capacity": 1234.5,
    "p95Ms": 21.5,
    "sloP95Ms": 50,
    "baselineCapacity": 800.0,
    "nodeType": "Intel(R) Xeon(R) Platinum 8480+ (2 CPUs)",
    "config": {
        "backend": "onnxruntime",
        "max_batch_size": 32,
        "dynamic_batching": {"max_queue_delay_microseconds": 250},
        "instance_group": [{"kind": "KIND_CPU", "count": 2}],
        "parameters": {
            "intra_op_thread_count": "1",
            "precision": "bf16",
            "engine_cache": "/var/cache/polyserve/engines",
        },
    },
}


def test_from_status_merges_the_recommendation_into_spec_config() -> None:
    doc = body(tiered=False, config={"max_batch_size": 32, "parameters": {"mine": "kept"}})
    text = tuning_commands.render(with_results(doc, {"": RESULT}))
    assert "kubectl patch inferencemodel ranker -n ml --type merge" in text
    assert "1234.5 requests/s per replica" in text
    found = yaml.safe_load(text)
    config = found["spec"]["config"]
    assert config["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 250}
    # The user's own parameters stay; what the operator derives from hardware is left out.
    assert config["parameters"] == {"mine": "kept", "intra_op_thread_count": "1"}
    assert "backend" not in config
    # The patched spec is still a valid InferenceModel.
    patched = copy.deepcopy(doc)
    patched["spec"]["config"] = config
    assert validating.model(model(patched)) == []


def test_from_status_writes_each_tiers_measured_capacity() -> None:
    doc = body()
    found, notes = tuning_commands.patch(with_results(doc, {"xeon": RESULT}))
    assert [t.get("capacity") for t in found["spec"]["tiers"]] == [1234.5, 900]
    assert any("tier xeon's recommended config" in n for n in notes)
    assert found["spec"]["tiers"][1] == doc["spec"]["tiers"][1]


def test_from_status_says_what_is_missing_when_there_is_no_result_yet() -> None:
    doc = body()
    doc["status"] = {"tuning": [{"tier": "xeon", "key": "k", "phase": "Running", "message": "m"}]}
    with pytest.raises(tuning_commands.NoResult, match="xeon: Running"):
        tuning_commands.patch(doc)


def test_polyserve_tune_hands_its_arguments_to_the_tuner(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from polyserve_operator import cli

    code = cli.main(
        [
            "tune",
            f"--model-repository={tmp_path}",
            "--model=missing",
            "--slo-p95-ms=50",
            f"--output={tmp_path / 'out'}",
        ]
    )
    assert code == 2
    assert "no model folder" in capsys.readouterr().err

"""Every framework through the operator: hardware.backend, auto, and what the pod gets.

What each backend loads and where it runs is the worker's registry; these tests check the
operator reads it that way: the API's values, the configs it renders (backend, platform,
instance groups on every GPU, the engine cache) and the specs admission refuses, each with
the fix in its message.
"""

from __future__ import annotations

import typing
from typing import Any

import kubernetes_validate
import pytest

from polyserve_operator import api, render, settings, validating
from polyserve_operator.render import engines, modelconfigs
from polyserve_worker import backends as worker_backends

CFG = settings.Settings()
MLP = {
    "max_batch_size": 8,
    "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [8]}],
    "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
}


def _model(
    fmt: str, pool: str, backend: str | None = None, uri: str = "file:///m/model.onnx", **spec: Any
) -> api.InferenceModel:
    hardware: dict[str, Any] = {"pool": pool, **spec.pop("hardware", {})}
    if backend is not None:
        hardware["backend"] = backend
    return api.InferenceModel.model_validate(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "modelFormat": {"name": fmt},
                "artifact": {"uri": uri},
                "hardware": hardware,
                **spec,
            },
        }
    )


def _config(im: api.InferenceModel) -> dict[str, Any]:
    return modelconfigs.for_model("m", im.spec).model_dump(exclude_none=True)


def _problems(im: api.InferenceModel) -> str:
    return "; ".join(validating.model(im))


def test_the_api_offers_every_value_of_the_engine_table_and_every_registry_format() -> None:
    assert set(typing.get_args(api.Backend)) == {*engines.VALUES, engines.AUTO}
    names = typing.get_args(typing.get_type_hints(api.ModelFormat)["name"])
    assert tuple(names) == engines.FORMATS == tuple(worker_backends.FORMATS)


@pytest.mark.parametrize(
    ("fmt", "pool", "backend", "platform"),
    [
        ("onnx", "xeon", "openvino", None),
        ("onnx", "gpu", "tensorrt", None),
        ("openvino", "xeon", "openvino", None),
        ("tensorrt", "gpu", "tensorrt", "tensorrt_plan"),
        ("pytorch", "xeon", "pytorch", "pytorch_libtorch"),
        ("pytorch", "gpu", "pytorch", "pytorch_libtorch"),
        ("tensorflow", "xeon", "tensorflow", "tensorflow_savedmodel"),
        ("tensorflow", "gpu", "tensorflow", "tensorflow_savedmodel"),
    ],
)
def test_auto_renders_the_fastest_backend_for_the_format_on_the_pool(
    fmt: str, pool: str, backend: str, platform: str | None
) -> None:
    im = _model(fmt, pool)  # hardware.backend defaults to auto
    assert im.spec.hardware.backend == "auto"
    assert modelconfigs.chosen_backend(im.spec) == backend
    config = _config(im)
    assert config["backend"] == backend
    assert config.get("platform") == platform
    kind = "KIND_GPU" if pool == "gpu" else "KIND_CPU"
    assert config["instance_group"] == [{"kind": kind, "count": 1}]
    assert _problems(im) == ""


def test_auto_passes_over_backends_that_cannot_carry_the_configs_string_tensors() -> None:
    tokenizer = {
        "max_batch_size": 8,
        "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [{"name": "ids", "data_type": "TYPE_INT64", "dims": [128]}],
    }
    assert modelconfigs.chosen_backend(_model("onnx", "xeon", config=tokenizer).spec) == (
        "onnxruntime"
    )


@pytest.mark.parametrize(
    ("value", "pool", "backend", "kind"),
    [
        ("onnxruntime", "xeon", "onnxruntime", "KIND_CPU"),
        ("onnxruntime", "gpu", "onnxruntime", "KIND_GPU"),
        ("onnxruntime-cuda", "gpu", "onnxruntime", "KIND_GPU"),
        ("pytorch-cuda", "gpu", "pytorch", "KIND_GPU"),
        ("tensorflow", "gpu", "tensorflow", "KIND_GPU"),
    ],
)
def test_a_named_backend_runs_on_the_device_of_its_pool(
    value: str, pool: str, backend: str, kind: str
) -> None:
    fmt = {"pytorch": "pytorch", "tensorflow": "tensorflow"}.get(backend, "onnx")
    im = _model(fmt, pool, value)
    config = _config(im)
    assert (config["backend"], config["instance_group"][0]["kind"]) == (backend, kind)
    assert _problems(im) == ""


def test_a_pod_with_four_gpus_places_instances_on_every_one_of_them() -> None:
    im = _model("onnx", "gpu", hardware={"gpu": {"count": 4}})
    assert _config(im)["instance_group"] == [{"kind": "KIND_GPU", "count": 1, "gpus": [0, 1, 2, 3]}]
    groups = [{"kind": "KIND_GPU", "count": 2}, {"kind": "KIND_GPU", "gpus": [1]}]
    named = _model("onnx", "gpu", hardware={"gpu": {"count": 2}}, config={"instance_group": groups})
    assert _config(named)["instance_group"] == [
        {"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]},
        {"kind": "KIND_GPU", "gpus": [1]},
    ]
    assert _model("onnx", "gpu").spec.hardware.gpu is None
    assert "gpus" not in _config(_model("onnx", "gpu"))["instance_group"][0]


def test_an_instance_group_on_a_gpu_the_pod_does_not_get_is_refused() -> None:
    groups = [{"kind": "KIND_GPU", "gpus": [0, 2]}]
    two = _model("onnx", "gpu", hardware={"gpu": {"count": 2}}, config={"instance_group": groups})
    assert "names GPUs [2], but each pod gets 2 (hardware.gpu.count)" in _problems(two)
    xeon = _model("onnx", "xeon", config={"instance_group": groups})
    assert "pool xeon has none" in _problems(xeon)


def _pod(im: api.InferenceModel) -> dict[str, Any]:
    objects = render.objects(render.model_workload(im), CFG)
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30", strict=True)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_an_onnx_model_on_tensorrt_gets_an_engine_cache_on_an_empty_dir_by_default() -> None:
    im = _model("onnx", "gpu", "tensorrt", hardware={"precision": "fp16"})
    config = _config(im)
    assert config["parameters"] == {
        "precision": "fp16",
        "engine_cache": modelconfigs.ENGINE_CACHE_DIR,
    }
    assert config["default_model_filename"] == "model.onnx"
    pod = _pod(im)
    assert {"name": "engines", "emptyDir": {}} in pod["volumes"]
    (worker,) = pod["containers"]
    assert {"name": "engines", "mountPath": modelconfigs.ENGINE_CACHE_DIR} in worker["volumeMounts"]


def test_the_engine_cache_can_live_on_a_claim_that_outlives_the_pod() -> None:
    im = _model("onnx", "gpu", engine_cache={"claimName": "engines"})
    assert modelconfigs.chosen_backend(im.spec) == "tensorrt"
    pod = _pod(im)
    assert {"name": "engines", "persistentVolumeClaim": {"claimName": "engines"}} in pod["volumes"]


def test_the_operators_default_claim_serves_models_that_name_none_and_the_spec_wins() -> None:
    shared = settings.Settings(gpu=settings.GpuPool(engine_cache_claim="engines-shared"))
    for spec_claim, used in ((None, "engines-shared"), ({"claimName": "mine"}, "mine")):
        extra = {"engine_cache": spec_claim} if spec_claim else {}
        im = _model("onnx", "gpu", **extra)
        objects = render.objects(render.model_workload(im), shared)
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {"name": "engines", "persistentVolumeClaim": {"claimName": used}} in volumes


@pytest.mark.parametrize(
    ("fmt", "pool", "backend", "extra"),
    [
        ("tensorrt", "gpu", "tensorrt", {}),
        ("onnx", "xeon", "onnxruntime", {}),
        ("onnx", "gpu", "onnxruntime", {}),
    ],
)
def test_no_engine_cache_where_nothing_is_built(
    fmt: str, pool: str, backend: str, extra: dict[str, Any]
) -> None:
    im = _model(fmt, pool, backend, uri="file:///m/model.plan", **extra)
    assert "engine_cache" not in _config(im).get("parameters", {})
    assert all(v["name"] != "engines" for v in _pod(im)["volumes"])


def test_onnx_runtime_in_fp16_on_a_gpu_caches_its_tensorrt_providers_engines() -> None:
    im = _model("onnx", "gpu", "onnxruntime-cuda", hardware={"precision": "fp16"})
    assert _config(im)["parameters"]["engine_cache"] == modelconfigs.ENGINE_CACHE_DIR


def test_a_savedmodel_directory_is_named_by_the_worker_from_its_files() -> None:
    im = _model("tensorflow", "xeon", uri="s3://models/mlp/savedmodel/")
    config = _config(im)
    assert "default_model_filename" not in config  # the worker finds saved_model.pb
    assert (config["backend"], config["platform"]) == ("tensorflow", "tensorflow_savedmodel")


def test_torchscript_keeps_its_file_name_and_its_listed_tensors() -> None:
    im = _model("pytorch", "xeon", uri="file:///m/classifier.pt", config=MLP)
    config = _config(im)
    assert config["default_model_filename"] == "classifier.pt"
    assert [t["name"] for t in config["input"]] == ["INPUT__0"]


@pytest.mark.parametrize(
    ("fmt", "pool", "backend", "message"),
    [
        ("tensorflow", "xeon", "openvino", "a tensorflow model cannot load on backend openvino"),
        ("tensorflow", "xeon", "openvino", "set hardware.backend to tensorflow or auto"),
        ("pytorch", "gpu", "onnxruntime-cuda", "pytorch files load on pytorch, pytorch-cuda"),
        ("tensorrt", "xeon", "tensorrt", "tensorrt, onnxruntime-cuda and pytorch-cuda need a GPU"),
        ("tensorrt", "xeon", "auto", "no backend loads tensorrt files on pool xeon"),
        ("tensorrt", "xeon", "auto", "set hardware.pool to gpu"),
        ("openvino", "gpu", "auto", "no backend loads openvino files on pool gpu"),
        (
            "onnx",
            "gpu",
            "openvino",
            "openvino runs on the xeon pool; on gpu (NVIDIA) use onnxruntime",
        ),
    ],
)
def test_admission_refuses_a_format_backend_or_pool_that_cannot_load_with_the_fix(
    fmt: str, pool: str, backend: str, message: str
) -> None:
    assert message in _problems(_model(fmt, pool, backend))


def test_precision_follows_the_format_a_built_engine_is_fixed_an_onnx_build_is_not() -> None:
    plan = _model("tensorrt", "gpu", "tensorrt", hardware={"precision": "fp16"})
    assert "a tensorrt file's precision was fixed when it was built" in _problems(plan)
    assert _problems(_model("onnx", "gpu", "tensorrt", hardware={"precision": "fp16"})) == ""
    bf16 = _model("onnx", "xeon", "onnxruntime", hardware={"precision": "bf16"})
    assert "cannot run precision bf16 on the xeon pool; it runs fp32; bf16 runs on openvino" in (
        _problems(bf16)
    )
    assert _problems(_model("onnx", "xeon", hardware={"precision": "bf16"})) == ""


def test_todays_backend_values_keep_working_on_their_pools() -> None:
    for fmt, pool, backend in (
        ("onnx", "xeon", "onnxruntime"),
        ("onnx", "xeon", "openvino"),
        ("tensorrt", "gpu", "tensorrt"),
        ("onnx", "gpu", "onnxruntime-cuda"),
        ("pytorch", "gpu", "pytorch-cuda"),
    ):
        assert _problems(_model(fmt, pool, backend)) == "", (fmt, pool, backend)

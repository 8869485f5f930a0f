"""The seam between the planes: what the operator renders, a real worker serves.

The operator's rendered ConfigMap and init-container arguments are replayed here by hand
(a kubelet would): the fetch runs with the rendered arguments, each config.pbtxt lands where
the rendered volume mount puts it, and a worker started with the rendered arguments serves
the models through tritonclient. No cluster is involved; the render is the operator's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from polyserve_operator import api, render, settings, validating
from polyserve_worker import fetching
from polyserve_worker import settings as worker_settings
from tests.worker import models
from tests.worker.conftest import StartWorker

CFG = settings.Settings()


def _model(name: str, artifact: Path) -> api.InferenceModel:
    return api.InferenceModel.model_validate(
        {
            "apiVersion": api.API_VERSION,
            "kind": "InferenceModel",
            "metadata": {"name": name, "namespace": "contract"},
            "spec": {
                "modelFormat": {"name": "onnx"},
                "artifact": {"uri": artifact.as_uri()},
                "hardware": {"pool": "xeon", "backend": "onnxruntime"},
                "config": {
                    "max_batch_size": 4,
                    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                    "dynamic_batching": {},
                },
            },
        }
    )


def _replay(objects: list[dict[str, Any]], root: Path) -> list[str]:
    """Do what the kubelet would: fill the volumes, run the init containers with the
    rendered arguments (container paths moved under ``root``); return the worker's args."""
    by_kind = {o["kind"]: o for o in objects}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    config = next(v for v in pod["volumes"] if v["name"] == "config")["configMap"]["name"]
    assert config == by_kind["ConfigMap"]["metadata"]["name"]
    volumes = {"models": root / "models", "config": root / "config"}
    volumes["config"].mkdir(parents=True)
    for key, text in by_kind["ConfigMap"]["data"].items():
        (volumes["config"] / key).write_text(text)

    def local(container: dict[str, Any], path: str) -> str:
        mount = max(
            (m for m in container["volumeMounts"] if path.startswith(m["mountPath"])),
            key=lambda m: len(m["mountPath"]),
        )
        return str(volumes[mount["name"]]) + path[len(mount["mountPath"]) :]

    for init in pod.get("initContainers", []):
        command, *rest = init["args"]
        if command == "fetch":
            uri, dest, *flags = rest
            assert fetching.main([uri, local(init, dest), *flags], env={}) == 0
        else:
            assert command == "configure"
            assert fetching.configure_main([local(init, path) for path in rest]) == 0
    worker = next(c for c in pod["containers"] if c["name"] == "worker")
    args: list[str] = worker["args"]
    return args


def _scale(worker_http: str, model: str, factor: float, name: str = "INPUT0") -> None:
    client = httpclient.InferenceServerClient(worker_http)
    inp = httpclient.InferInput(name, [2, 4], "FP32")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp.set_data_from_numpy(x)
    out = client.infer(model, [inp]).get_response()["outputs"][0]["name"]
    result = client.infer(model, [inp]).as_numpy(out)
    np.testing.assert_allclose(result, x * factor)


def test_a_rendered_inference_model_is_fetched_and_served_by_a_real_worker(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    # A single-file artifact keeps its own name; the rendered config says which file it is.
    artifact = tmp_path / "store" / "resnet-v7.onnx"
    models.scale(artifact, 3.0)
    objects = render.objects(render.model_workload(_model("resnet", artifact)), CFG)
    args = _replay(objects, tmp_path)
    assert worker_settings.parse(args).model_repository == Path("/models")
    worker = start_worker(tmp_path / "models")
    _scale(worker.http, "resnet", 3.0)


def test_a_rendered_inference_ensemble_serves_its_members_in_one_worker(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    double, triple = tmp_path / "store" / "double.onnx", tmp_path / "store" / "triple.onnx"
    models.scale(double, 2.0)
    models.scale(triple, 3.0)
    members = {"double": _model("double", double), "triple": _model("triple", triple)}
    ensemble = api.InferenceEnsemble.model_validate(
        {
            "apiVersion": api.API_VERSION,
            "kind": "InferenceEnsemble",
            "metadata": {"name": "six", "namespace": "contract"},
            "spec": {
                "inputs": [{"name": "X", "data_type": "TYPE_FP32", "dims": [4]}],
                "outputs": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [4]}],
                "steps": [
                    {"name": "first", "modelRef": "double", "inputs": {"INPUT0": "X"}},
                    {
                        "name": "second",
                        "modelRef": "triple",
                        "inputs": {"INPUT0": "first.OUTPUT0"},
                        "outputs": {"OUTPUT0": "Y"},
                    },
                ],
                "hardware": {"pool": "xeon", "backend": "onnxruntime"},
                "maxBatchSize": 4,
            },
        }
    )
    assert validating.ensemble(ensemble, dict(members)) == []
    objects = render.objects(render.ensemble_workload(ensemble, members), CFG)
    _replay(objects, tmp_path)
    worker = start_worker(tmp_path / "models")
    _scale(worker.http, "six", 6.0, name="X")


def test_the_native_grpc_setting_reaches_a_real_worker_which_serves_grpc_on_it(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    """Settings.worker_grpc_transport=native renders --grpc-transport auto: a worker started
    with the rendered arguments serves gRPC on the native front (grpc.aio under TLS)."""
    artifact = tmp_path / "store" / "scale.onnx"
    models.scale(artifact, 2.0)
    native = settings.Settings(worker_grpc_transport="native")
    objects = render.objects(render.model_workload(_model("scale", artifact)), native)
    parsed = worker_settings.parse(_replay(objects, tmp_path))
    assert parsed.grpc_transport == "auto"
    worker = start_worker(tmp_path / "models", grpc_transport=parsed.grpc_transport)
    assert worker.worker.grpc_transport == "native"
    client = grpcclient.InferenceServerClient(worker.grpc)
    tensor = grpcclient.InferInput("INPUT0", [2, 4], "FP32")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor.set_data_from_numpy(x)
    result = client.infer("scale", [tensor])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), x * 2.0)
    default = render.objects(render.model_workload(_model("scale", artifact)), CFG)
    assert worker_settings.parse(_replay(default, tmp_path / "default")).grpc_transport == "aio"

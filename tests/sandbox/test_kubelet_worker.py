"""The operator's rendered worker pod, run by the sandbox's kubelet: its init containers
fetch and configure the model, the real polyserve-worker serves it on the pod's address."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from polyserve_operator import api, render, settings
from polyserve_sandbox.kubelet import images
from tests.sandbox.kubelet_harness import Resolver, condition, running, state
from tests.worker import models

CFG = settings.Settings()
Obj = dict[str, Any]


def _model(name: str, artifact: Path) -> api.InferenceModel:
    return api.InferenceModel.model_validate(
        {
            "apiVersion": api.API_VERSION,
            "kind": "InferenceModel",
            "metadata": {"name": name, "namespace": "ns"},
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


def _rendered_pod(artifact: Path) -> tuple[Obj, Resolver]:
    """A pod from the rendered Deployment's template, and its ConfigMap to resolve."""
    objects = render.objects(render.model_workload(_model("scale", artifact)), CFG)
    by_kind = {o["kind"]: o for o in objects}
    template = copy.deepcopy(by_kind["Deployment"]["spec"]["template"])
    metadata = {**template["metadata"], "name": "scale-0", "namespace": "ns"}
    metadata["uid"] = str(uuid.uuid4())
    resolver = Resolver()
    config_map = by_kind["ConfigMap"]
    resolver.config_maps[config_map["metadata"]["name"]] = config_map
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}, (
        resolver
    )


@pytest.mark.slow
async def test_a_rendered_worker_pod_fetches_its_model_turns_ready_and_serves(
    tmp_path: Path,
) -> None:
    artifact = tmp_path / "store" / "scale-v1.onnx"
    models.scale(artifact, 3.0)
    spec, resolver = _rendered_pod(artifact)
    async with running(
        spec, tmp_path / "pods", resolver=resolver, image_map=images.default_images(), grace=3
    ) as pod_:
        recorder = pod_.recorder
        status = await recorder.until_status(lambda s: condition(s, "Ready") == "True", 90)
        for init in spec["spec"]["initContainers"]:
            assert state(status, init["name"])["state"]["terminated"]["reason"] == "Completed"
        worker = state(status, "worker")
        assert worker["started"] is True and worker["restartCount"] == 0
        assert worker["imageID"].startswith("ghcr.io/polyserve/worker@sha256:")
        client = httpclient.InferenceServerClient(f"{status['podIP']}:8000")
        inputs = httpclient.InferInput("INPUT0", [2, 4], "FP32")
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        inputs.set_data_from_numpy(x)
        result = client.infer("scale", [inputs]).as_numpy("OUTPUT0")
        np.testing.assert_allclose(result, x * 3.0)
        client.close()
        fetched = pod_.runtime.logs(spec["spec"]["initContainers"][0]["name"])
        assert b"fetched 1 file(s)" in fetched
        await pod_.runtime.terminate(3)
        assert state(recorder.status, "worker")["state"]["terminated"]["exitCode"] == 0


async def test_the_former_render_with_configs_mounted_inside_read_only_models_cannot_start(
    tmp_path: Path,
) -> None:
    # Before the operator's 'configure' init container, each config.pbtxt was a subPath
    # mount inside /models, which the worker mounts read-only: a runtime cannot create
    # that mount point, and the pod never starts (CreateContainerError).
    artifact = tmp_path / "store" / "scale-v1.onnx"
    models.scale(artifact, 3.0)
    spec, resolver = _rendered_pod(artifact)
    body = spec["spec"]
    body["initContainers"] = [c for c in body["initContainers"] if c["name"] != "configure"]
    worker = next(c for c in body["containers"] if c["name"] == "worker")
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in worker["volumeMounts"]
    worker["volumeMounts"].append(
        {
            "name": "config",
            "mountPath": "/models/scale/config.pbtxt",
            "subPath": "scale.pbtxt",
            "readOnly": True,
        }
    )
    async with running(
        spec, tmp_path / "pods", resolver=resolver, image_map=images.default_images()
    ) as pod_:
        status = await pod_.recorder.until_status(
            lambda s: (
                state(s, "worker")["state"].get("waiting", {}).get("reason")
                == "CreateContainerError"
            ),
            60,
        )
        message = state(status, "worker")["state"]["waiting"]["message"]
        assert 'to rootfs at "/models/scale/config.pbtxt"' in message
        assert "read-only file system" in message
        assert condition(status, "Initialized") == "True"
        assert status["phase"] == "Pending"

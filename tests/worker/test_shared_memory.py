"""System shared memory through tritonclient.utils.shared_memory, and its hostile inputs."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from polyserve_worker import errors
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker
from tests.worker.test_http import raw

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 10, dtype=np.int32)


@pytest.fixture
def served(tmp_path: Path, start_worker: StartWorker) -> RunningWorker:
    return start_worker(models.triton_repository(tmp_path), allow_client_shm=True)


@pytest.fixture
def regions() -> Iterator[dict[str, Any]]:
    """An input region holding A and B back to back, and an output region for two outputs."""
    tag = uuid.uuid4().hex[:8]
    handles = {
        "in": shm.create_shared_memory_region(f"in_{tag}", f"/ps_in_{tag}", 128),
        "out": shm.create_shared_memory_region(f"out_{tag}", f"/ps_out_{tag}", 128),
    }
    shm.set_shared_memory_region(handles["in"], [A, B])
    yield {"tag": tag, **handles}
    for handle in handles.values():
        shm.destroy_shared_memory_region(handle)


def http_request(tag: str, binary_out: bool = False) -> tuple[list[Any], list[Any]]:
    inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_shared_memory(f"in_{tag}", 64)
    inputs[1].set_shared_memory(f"in_{tag}", 64, offset=64)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("OUTPUT0", "OUTPUT1")
    ]
    outputs[0].set_shared_memory(f"out_{tag}", 64)
    outputs[1].set_shared_memory(f"out_{tag}", 64, offset=64)
    return inputs, outputs


def test_inputs_and_outputs_travel_through_shared_memory_over_http(
    served: RunningWorker, regions: dict[str, Any]
) -> None:
    tag = regions["tag"]
    client = httpclient.InferenceServerClient(served.http)
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]
    client.register_system_shared_memory(f"in_{tag}", f"/ps_in_{tag}", 128)
    client.register_system_shared_memory(f"out_{tag}", f"/ps_out_{tag}", 128)
    status = {r["name"]: r for r in client.get_system_shared_memory_status()}
    assert status[f"in_{tag}"]["byte_size"] == 128
    inputs, outputs = http_request(tag)
    result = client.infer("simple", inputs, outputs=outputs)
    params = result.get_output("OUTPUT1")["parameters"]
    assert params == {
        "shared_memory_region": f"out_{tag}",
        "shared_memory_byte_size": 64,
        "shared_memory_offset": 64,
    }
    summed = shm.get_contents_as_numpy(regions["out"], np.int32, [1, 16])
    diff = shm.get_contents_as_numpy(regions["out"], np.int32, [1, 16], offset=64)
    np.testing.assert_array_equal(summed, A + B)
    np.testing.assert_array_equal(diff, A - B)
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_inputs_and_outputs_travel_through_shared_memory_over_grpc(
    served: RunningWorker, regions: dict[str, Any]
) -> None:
    tag = regions["tag"]
    client = grpcclient.InferenceServerClient(served.grpc)
    client.register_system_shared_memory(f"in_{tag}", f"/ps_in_{tag}", 128)
    client.register_system_shared_memory(f"out_{tag}", f"/ps_out_{tag}", 128)
    assert set(client.get_system_shared_memory_status().regions) == {f"in_{tag}", f"out_{tag}"}
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_shared_memory(f"in_{tag}", 64)
    inputs[1].set_shared_memory(f"in_{tag}", 64, offset=64)
    out = grpcclient.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory(f"out_{tag}", 64)
    plain = grpcclient.InferRequestedOutput("OUTPUT1")
    result = client.infer("simple", inputs, outputs=[out, plain])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(regions["out"], np.int32, [1, 16]), A + B
    )
    client.unregister_system_shared_memory(f"in_{tag}")
    assert set(client.get_system_shared_memory_status().regions) == {f"out_{tag}"}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (
            {
                "shared_memory_region": "in_TAG",
                "shared_memory_byte_size": 64,
                "shared_memory_offset": 100,
            },
            "fall outside",
        ),
        (
            {
                "shared_memory_region": "in_TAG",
                "shared_memory_byte_size": 64,
                "shared_memory_offset": -8,
            },
            "fall outside",
        ),
        ({"shared_memory_region": "in_TAG", "shared_memory_byte_size": 1 << 40}, "fall outside"),
        ({"shared_memory_region": "in_TAG", "shared_memory_byte_size": "64"}, "must be an integer"),
        ({"shared_memory_region": "in_TAG"}, "shared_memory_byte_size is required"),
        ({"shared_memory_region": "nope", "shared_memory_byte_size": 64}, "not registered"),
        ({"shared_memory_region": "in_TAG", "shared_memory_byte_size": 32}, "needs 64 bytes"),
    ],
)
def test_hostile_offsets_and_sizes_are_400_and_never_read_outside_the_region(
    served: RunningWorker, regions: dict[str, Any], params: dict[str, Any], fragment: str
) -> None:
    tag = regions["tag"]
    httpclient.InferenceServerClient(served.http).register_system_shared_memory(
        f"in_{tag}", f"/ps_in_{tag}", 128
    )
    params = {k: (v.replace("TAG", tag) if isinstance(v, str) else v) for k, v in params.items()}
    doc = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": params},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16},
        ]
    }
    status, _, body = raw(served, "POST", "/v2/models/simple/infer", json.dumps(doc).encode())
    assert status == 400
    assert fragment in json.loads(body)["error"]


def test_registering_bad_regions_is_refused(served: RunningWorker, regions: dict[str, Any]) -> None:
    tag = regions["tag"]
    client = httpclient.InferenceServerClient(served.http)
    with pytest.raises(InferenceServerException, match="exceeds"):
        client.register_system_shared_memory("big", f"/ps_in_{tag}", 4096)
    with pytest.raises(InferenceServerException, match="no shared memory object"):
        client.register_system_shared_memory("ghost", "/ps_does_not_exist", 8)
    with pytest.raises(InferenceServerException, match="POSIX shared memory name"):
        client.register_system_shared_memory("escape", "/../etc/passwd", 8)
    client.register_system_shared_memory("twice", f"/ps_in_{tag}", 8)
    with pytest.raises(InferenceServerException, match="already registered"):
        client.register_system_shared_memory("twice", f"/ps_in_{tag}", 8)
    with pytest.raises(InferenceServerException, match="no system shared memory region 'ghost'"):
        client.unregister_system_shared_memory("ghost")


def test_an_output_larger_than_its_span_is_400(
    served: RunningWorker, regions: dict[str, Any]
) -> None:
    tag = regions["tag"]
    client = httpclient.InferenceServerClient(served.http)
    client.register_system_shared_memory(f"in_{tag}", f"/ps_in_{tag}", 128)
    client.register_system_shared_memory(f"out_{tag}", f"/ps_out_{tag}", 128)
    inputs, _ = http_request(tag)
    small = httpclient.InferRequestedOutput("OUTPUT0")
    small.set_shared_memory(f"out_{tag}", 16)
    with pytest.raises(
        InferenceServerException, match="needs 64 bytes but its shared memory span holds 16"
    ):
        client.infer("simple", inputs, outputs=[small])


def test_unregistering_a_region_in_use_keeps_it_mapped_for_that_request(
    served: RunningWorker, regions: dict[str, Any]
) -> None:
    """The lease keeps the mapping alive: unregister mid-flight only retires the name."""
    tag = regions["tag"]
    core = served.worker.core
    core.shm.register_system(f"in_{tag}", f"/ps_in_{tag}", 0, 128)
    lease = core.shm.lease()
    view = lease.read(
        "INPUT0",
        {"shared_memory_region": f"in_{tag}", "shared_memory_byte_size": 64},
        "INT32",
        [1, 16],
    )
    core.shm.unregister(f"in_{tag}")
    np.testing.assert_array_equal(view, A)  # still mapped for the request in flight
    lease.release()
    with pytest.raises(errors.InvalidArgument, match="not registered"):
        core.shm.lease().read(
            "INPUT0",
            {"shared_memory_region": f"in_{tag}", "shared_memory_byte_size": 64},
            "INT32",
            [1, 16],
        )


def test_shared_memory_is_off_unless_allowed(tmp_path: Path, start_worker: StartWorker) -> None:
    worker = start_worker(models.triton_repository(tmp_path))
    client = httpclient.InferenceServerClient(worker.http)
    assert "system_shared_memory" not in client.get_server_metadata()["extensions"]
    with pytest.raises(InferenceServerException, match="--allow-client-shm") as caught:
        client.register_system_shared_memory("r", "/x", 8)
    assert caught.value.status() == "501"
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(worker.grpc))
    with pytest.raises(grpc.RpcError) as rpc:
        stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=10)
    assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as rpc:
        stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(), timeout=10)
    assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_cuda_regions_without_a_gpu_runtime_say_what_is_missing(served: RunningWorker) -> None:
    client = httpclient.InferenceServerClient(served.http)
    assert client.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException, match="NVIDIA GPU and CuPy") as caught:
        client.register_cuda_shared_memory("gpu0", b"AAAA", 0, 64)
    assert caught.value.status() == "501"
    with pytest.raises(InferenceServerException, match="not base64"):
        client.register_cuda_shared_memory("gpu0", b"!!", 0, 64)


def test_a_cuda_region_round_trips_through_a_real_gpu(served: RunningWorker) -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("CUDA shared memory needs an NVIDIA GPU (no nvidia-smi on this machine)")
    pytest.importorskip("cupy", reason="CUDA shared memory in the worker needs CuPy")
    try:
        import tritonclient.utils.cuda_shared_memory as cudashm
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"tritonclient's CUDA shared memory utilities are missing: {exc}")
    client = httpclient.InferenceServerClient(served.http)
    region = cudashm.create_shared_memory_region("gpu_in", 128, 0)
    out = cudashm.create_shared_memory_region("gpu_out", 128, 0)
    try:
        cudashm.set_shared_memory_region(region, [A, B])
        client.register_cuda_shared_memory("gpu_in", cudashm.get_raw_handle(region), 0, 128)
        client.register_cuda_shared_memory("gpu_out", cudashm.get_raw_handle(out), 0, 128)
        inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_shared_memory("gpu_in", 64)
        inputs[1].set_shared_memory("gpu_in", 64, offset=64)
        output = httpclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("gpu_out", 64)
        client.infer("simple", inputs, outputs=[output])
        result = cudashm.get_contents_as_numpy(out, np.int32, [1, 16])
        np.testing.assert_array_equal(result, A + B)
    finally:
        client.unregister_cuda_shared_memory()
        cudashm.destroy_shared_memory_region(region)
        cudashm.destroy_shared_memory_region(out)


def test_a_key_that_is_a_symbolic_link_is_refused_and_its_target_left_alone(
    served: RunningWorker, tmp_path: Path
) -> None:
    target = tmp_path / "secret.txt"
    target.write_bytes(b"do not read me" + b"\0" * 50)
    link = Path("/dev/shm") / f"ps_link_{uuid.uuid4().hex[:8]}"
    link.symlink_to(target)
    try:
        client = httpclient.InferenceServerClient(served.http)
        with pytest.raises(InferenceServerException, match="symbolic link") as caught:
            client.register_system_shared_memory("stolen", f"/{link.name}", 64)
        assert caught.value.status() == "400"
        assert client.get_system_shared_memory_status() == []
    finally:
        link.unlink()
    assert target.read_bytes().startswith(b"do not read me")


def test_a_key_that_is_not_a_shared_memory_object_is_refused(served: RunningWorker) -> None:
    fifo = Path("/dev/shm") / f"ps_fifo_{uuid.uuid4().hex[:8]}"
    os.mkfifo(fifo)
    try:
        client = httpclient.InferenceServerClient(served.http)
        with pytest.raises(InferenceServerException, match="not a shared memory object") as caught:
            client.register_system_shared_memory("pipe", f"/{fifo.name}", 8)
        assert caught.value.status() == "400"
    finally:
        fifo.unlink()


def test_registrations_are_capped_in_number_and_in_bytes_mapped(
    tmp_path: Path, start_worker: StartWorker, regions: dict[str, Any]
) -> None:
    worker = start_worker(
        models.triton_repository(tmp_path),
        allow_client_shm=True,
        max_shm_regions=3,
        max_shm_bytes=300,
    )
    key = f"/ps_in_{regions['tag']}"
    client = httpclient.InferenceServerClient(worker.http)
    for name in ("a", "b", "c"):
        client.register_system_shared_memory(name, key, 64)
    with pytest.raises(InferenceServerException, match="--max-shm-regions") as caught:
        client.register_system_shared_memory("d", key, 8)
    assert caught.value.status() == "400"
    client.unregister_system_shared_memory("c")
    with pytest.raises(InferenceServerException, match="--max-shm-bytes") as caught:
        client.register_system_shared_memory("c", key, 200)  # 64 + 64 + 200 > 300
    assert caught.value.status() == "400"
    client.register_system_shared_memory("c", key, 100)
    assert sorted(r["name"] for r in client.get_system_shared_memory_status()) == ["a", "b", "c"]

"""The operator and worker images, built from the repository's Dockerfiles and run for real.

Built with buildah on a local Debian bookworm base (``building``); ``make images`` runs this
module and records the sizes (``POLYSERVE_IMAGE_SIZES`` names the file). The worker image
runs its own entrypoint on the example repository and answers an inference over HTTP; the
operator image renders an example with ``polyserve render``. Slow (the first build takes
about 15 minutes; later ones reuse cached layers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.http as httpclient
import yaml

from tests.images import building

pytestmark = [pytest.mark.slow, pytest.mark.timeout(building.BUILD_TIMEOUT_SECONDS)]

OPERATOR_LIMIT_BYTES = 300 * 10**6
WORKER_CPU_LIMIT_BYTES = int(2.5 * 10**9)
START_DEADLINE_SECONDS = 120.0


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = building.missing()
    if reason is not None:
        pytest.skip(reason)
    return tmp_path_factory.mktemp("images") / "build.log"


@pytest.fixture(scope="module")
def operator_image(log: Path) -> str:
    return building.build(building.OPERATOR_IMAGE, log)


@pytest.fixture(scope="module")
def worker_image(log: Path) -> str:
    return building.build(building.WORKER_CPU_IMAGE, log)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example repository (mlp and cnn), built as `make models` builds it."""
    repo = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, str(building.ROOT / "examples" / "build_models.py"), str(repo)],
        check=True,
        capture_output=True,
    )
    # The image's user (uid 1000) reads it, as a pod reads its emptyDir; pytest makes 0700.
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return repo


def output_of(image: str, *argv: str, volumes: dict[str, str] | None = None) -> str:
    with building.container(image) as name:
        return building.run(building.run_argv(name, argv, volumes=volumes))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serving(worker_image: str, models: Path, log: Path) -> Iterator[str]:
    """The worker image's own entrypoint serving the example repository on the host's
    network; yields its HTTP address."""
    config = building.config(worker_image)
    entrypoint = list(config["Entrypoint"])  # type: ignore[call-overload]
    http, grpc, metrics = free_port(), free_port(), free_port()
    flags = [
        "--model-repository=/models",
        "--host=127.0.0.1",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
    ]
    with building.container(worker_image) as name:
        argv = building.run_argv(name, [*entrypoint, *flags], volumes={str(models): "/models"})
        output = log.with_name("worker.log").open("wb")
        process = subprocess.Popen(
            argv,
            env=building.environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole at teardown
        )
        output.close()
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
            deadline = time.monotonic() + START_DEADLINE_SECONDS
            while not _ready(client):
                if process.poll() is not None:
                    pytest.fail(log.with_name("worker.log").read_text()[-3000:])
                assert time.monotonic() < deadline, "the worker was not ready in time"
                time.sleep(0.2)  # polling readiness, with a deadline
            client.close()
            yield f"127.0.0.1:{http}"
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group (buildah and the worker), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)


def _ready(client: httpclient.InferenceServerClient) -> bool:
    try:
        return bool(client.is_server_ready())
    except Exception:  # not listening yet
        return False


def test_the_cpu_worker_image_answers_an_inference_through_its_entrypoint(
    serving: str, models: Path
) -> None:
    data = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    client = httpclient.InferenceServerClient(serving)
    try:
        request = httpclient.InferInput("INPUT0", [2, 256], "FP32")
        request.set_data_from_numpy(data)
        result = client.infer("mlp", [request]).as_numpy("OUTPUT0")
    finally:
        client.close()
    session = onnxruntime.InferenceSession(str(models / "mlp" / "1" / "model.onnx"))
    (expected,) = session.run(["OUTPUT0"], {"INPUT0": data})
    assert result is not None
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


def test_the_cpu_worker_image_carries_every_cpu_framework_and_no_cuda(worker_image: str) -> None:
    script = (
        "import onnxruntime, openvino, tensorflow, torch;"
        "print(torch.version.cuda, onnxruntime.get_available_providers())"
    )
    out = output_of(worker_image, "python", "-c", script)
    assert out.startswith("None "), out
    assert "CUDAExecutionProvider" not in out
    found = output_of(
        worker_image, "sh", "-c", "find / -xdev -name 'libcudart*' -o -name 'libcublas*' | head"
    )
    assert found.strip() == ""


def test_the_operator_image_renders_an_example_with_polyserve_render(operator_image: str) -> None:
    examples = building.ROOT / "manifests" / "examples"
    out = output_of(
        operator_image,
        "polyserve",
        "render",
        "-f",
        "/examples/resnet-xeon.yaml",
        volumes={str(examples): "/examples"},
    )
    kinds = {doc["kind"] for doc in yaml.safe_load_all(out) if doc}
    assert {"ConfigMap", "Deployment", "Service"} <= kinds


def test_the_operator_image_starts_its_entrypoint(operator_image: str) -> None:
    entrypoint = list(building.config(operator_image)["Entrypoint"])  # type: ignore[call-overload]
    assert "--liveness" in output_of(operator_image, *entrypoint, "--help")


@pytest.mark.parametrize("image_fixture", ["operator_image", "worker_image"])
def test_the_images_run_as_uid_1000_without_build_tools_or_pip(
    image_fixture: str, request: pytest.FixtureRequest
) -> None:
    image = request.getfixturevalue(image_fixture)
    assert building.config(image)["User"] == "1000:1000"
    out = output_of(
        image,
        "sh",
        "-c",
        "id -u; for t in gcc cc c++ make strip ld pip pip3; do command -v $t; done; "
        "python -c 'import pip' 2>/dev/null && echo pip-module; true",
    )
    assert out.split() == ["1000"], f"expected uid 1000 and no build tools or pip: {out}"


def test_the_images_stay_under_their_size_targets(operator_image: str, worker_image: str) -> None:
    sizes = {
        building.BASE: building.size(building.BASE),
        operator_image: building.size(operator_image),
        worker_image: building.size(worker_image),
    }
    record = os.environ.get("POLYSERVE_IMAGE_SIZES")
    if record:
        Path(record).write_text(_table(sizes))
    assert sizes[operator_image] < OPERATOR_LIMIT_BYTES, _table(sizes)
    assert sizes[worker_image] < WORKER_CPU_LIMIT_BYTES, _table(sizes)


def _table(sizes: dict[str, int]) -> str:
    rows = [
        "# Image sizes",
        "",
        "Written by `make images` (tests/images): `buildah images` sizes (uncompressed layers)",
        "of the images built from Dockerfile.operator and Dockerfile.worker (VARIANT=cpu) on the",
        "local base: Debian bookworm minbase with Debian's Python 3.11 (debootstrap).",
        "",
        "| image | size | target |",
        "|---|---|---|",
    ]
    targets = {
        building.BASE: "(in both)",
        building.OPERATOR: "300 MB",
        building.WORKER_CPU: "2.5 GB",
    }
    for image, size in sizes.items():
        rows.append(f"| `{image}` | {size / 10**6:,.0f} MB | {targets.get(image, '')} |")
    return "\n".join(rows) + "\n"


def test_the_gpu_worker_image_imports_tensorrt_and_cuda_frameworks(log: Path) -> None:
    if os.environ.get("POLYSERVE_BUILD_GPU_IMAGE") != "1":
        pytest.skip(
            "the gpu variant is built only with POLYSERVE_BUILD_GPU_IMAGE=1: TensorRT's "
            "libraries are on NVIDIA's index alone (PyPI's tensorrt-cu13-libs is a stub that "
            "downloads from pypi.nvidia.com while it installs), which must be reachable"
        )
    image = building.build(building.WORKER_GPU_IMAGE, log)
    script = (
        "import tensorrt, torch, onnxruntime, cupy;"
        "assert torch.version.cuda, 'torch is not a CUDA build';"
        "assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers();"
        "print(tensorrt.__version__)"
    )
    assert output_of(image, "python", "-c", script).strip()

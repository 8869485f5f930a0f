"""Kubernetes-facing lifecycle: live vs ready, required models, the process and its exit.

What clients see while the worker drains is in test_draining.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from polyserve_worker.backends import base
from polyserve_worker.tensors import Array
from tests.worker import models
from tests.worker.conftest import StartWorker


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_readiness_follows_required_models_only(tmp_path: Path, start_worker: StartWorker) -> None:
    models.triton_repository(tmp_path)
    models.scale_versions(tmp_path, {1: 1.0})
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"junk")
    worker = start_worker(tmp_path, model_control_mode="explicit", load_model=("simple",))
    client = httpclient.InferenceServerClient(worker.http)
    assert client.is_server_live() and client.is_server_ready()
    client.load_model("scale")
    with pytest.raises(Exception, match="broken"):
        client.load_model("broken")
    assert client.is_server_ready(), "an optional model's failure must not flip readiness"
    client.unload_model("scale")
    assert client.is_server_ready()
    client.unload_model("simple")
    assert client.is_server_live()
    assert not client.is_server_ready(), "unloading a required model must flip readiness"
    assert status(f"http://{worker.http}/v2/health/ready") == 503


def test_a_failed_required_model_keeps_the_server_unready_but_live(
    tmp_path: Path, start_worker: StartWorker
) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"junk")
    models.scale_versions(tmp_path, {1: 1.0})
    worker = start_worker(tmp_path, required_model=("broken",))
    client = httpclient.InferenceServerClient(worker.http)
    assert client.is_server_live()
    assert not client.is_server_ready()
    assert client.is_model_ready("scale")
    relaxed = start_worker(tmp_path, required_model=("broken",), strict_readiness=False)
    assert httpclient.InferenceServerClient(relaxed.http).is_server_ready()


class GatedBackend:
    """Doubles its input, but only once the test opens the gate (to hold requests in flight)."""

    name = "gated"
    default_filename = "model.txt"

    def __init__(self) -> None:
        self.gate = threading.Event()

    def complete_config(self, config: Any, model_path: Path) -> None:
        pass

    async def load(
        self, config: Any, model_path: Path, instance: base.InstanceSpec
    ) -> base.ModelInstance:
        return GatedInstance(self.gate)


class GatedInstance(base.BlockingInstance):
    def __init__(self, gate: threading.Event) -> None:
        super().__init__("gated", batched=True)
        self.gate = gate

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> base.Outputs:
        self.gate.wait(30)
        return {"OUTPUT0": inputs["INPUT0"] * 2}


GATED_CONFIG = """
backend: gated
max_batch_size: 4
input: [{name: INPUT0, data_type: TYPE_FP32, dims: [2]}]
output: [{name: OUTPUT0, data_type: TYPE_FP32, dims: [2]}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(
    repo: Path, exit_timeout: float, *flags: str, module: str = "polyserve_worker.main"
) -> tuple[subprocess.Popen[bytes], int, int]:
    """The worker as a process on free ports (``module`` may be tests.worker.echo_worker),
    once it is ready; its HOME is a fresh folder next to the repository."""
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            f"--model-repository={repo}",
            "--host=127.0.0.1",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={free_port()}",
            f"--exit-timeout-secs={exit_timeout}",
            *flags,
        ],
        env={**os.environ, "HOME": str(repo.parent / "home")},
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if status(f"http://127.0.0.1:{http_port}/v2/health/ready") == 200:
                return proc, http_port, grpc_port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("worker never became ready:\n" + proc.communicate()[0].decode())
        time.sleep(0.05)


def test_the_worker_process_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    models.triton_repository(tmp_path)
    http = free_port()
    env = {**os.environ, "POLYSERVE_HTTP_PORT": str(http), "POLYSERVE_HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polyserve_worker.main",
            "--model-repository",
            str(tmp_path),
            "--grpc-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if status(f"http://127.0.0.1:{http}/v2/health/ready") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError("worker never became ready")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        log = out.decode()
        assert "draining" in log and "worker stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_model_that_fails_at_start_makes_the_process_exit_1_with_the_reason_last(
    tmp_path: Path,
) -> None:
    models.triton_repository(tmp_path)
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "polyserve_worker.main",
            "--model-repository",
            str(tmp_path),
            "--host=127.0.0.1",
            "--http-port=0",
            "--grpc-port=0",
            "--metrics-port=0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("polyserve-worker: exiting: model 'broken' failed to load")
    assert "--exit-on-error=false" in last


def test_the_worker_leaves_no_onnx_runtime_telemetry_in_its_home(tmp_path: Path) -> None:
    repo = models.triton_repository(tmp_path / "repo")
    proc, http_port, _ = start_process(repo, exit_timeout=5)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for inp in inputs:
            inp.set_data_from_numpy(np.ones((1, 16), np.int32))
        client.infer("simple", inputs)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    home = tmp_path / "home"
    assert not home.exists() or list(home.rglob("*")) == [], sorted(home.rglob("*"))

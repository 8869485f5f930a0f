"""The main job on the bundled example models: build, serve, call over every protocol, stop.

    make demo-worker        (or: .venv/bin/python examples/demo_worker.py)

Builds ``examples/models`` (mlp and cnn, ONNX, and the same mlp in every other framework
installed: TorchScript, TensorFlow SavedModel, OpenVINO IR in FP32 and BF16), starts
``polyserve-worker`` on it, calls each model with tritonclient over HTTP (JSON and binary
tensors) and gRPC, prints results and latencies, checks that every framework's mlp answers
like the ONNX one, then stops the worker with SIGTERM as Kubernetes would.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_framework_models  # noqa: E402
import build_models  # noqa: E402

#: model -> (sample shape, input name, output name)
MODELS = {"mlp": ((256,), "INPUT0", "OUTPUT0"), "cnn": ((3, 224, 224), "INPUT0", "OUTPUT0")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"the worker exited early with code {proc.returncode}; see its log above"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"the worker was not ready after {timeout:.0f} s ({url})")


def timed(call: Callable[[], np.ndarray], repeats: int = 20) -> tuple[np.ndarray, float, float]:
    call()  # warm up
    latencies = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        latencies.append((time.perf_counter() - start) * 1000)
    assert result is not None
    latencies.sort()
    return result, statistics.median(latencies), latencies[int(len(latencies) * 0.95) - 1]


def main() -> int:
    models = HERE / "models"
    print("== building example models")
    build_models.build(models)
    framework_models = build_framework_models.build(models)
    has_pipeline = build_framework_models.build_pipeline(models)
    for name in framework_models:
        MODELS[name] = ((256,), *build_framework_models.NAMES[name])
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "polyserve_worker.main",
        "--model-repository",
        str(models),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
    ]
    print("== starting:", " ".join(command[2:]))
    proc = subprocess.Popen(command, env=os.environ.copy())
    try:
        wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", proc)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        print(f"== worker ready: HTTP {http_port}, gRPC {grpc_port}, metrics {metrics_port}")
        rng = np.random.default_rng(0)
        mlp_input = rng.standard_normal((1, 256)).astype(np.float32)
        mlp_answers: dict[str, np.ndarray] = {}
        for model, (shape, input_name, output_name) in MODELS.items():
            meta = http.get_model_metadata(model)
            backend = http.get_model_config(model).get("backend", "?")
            print(f"\n-- {model} ({backend}): inputs {meta['inputs']} outputs {meta['outputs']}")
            is_mlp = model.startswith("mlp")
            x = mlp_input if is_mlp else rng.standard_normal((1, *shape)).astype(np.float32)

            def via_http(
                binary: bool,
                model: str = model,
                x: np.ndarray = x,
                names: tuple[str, str] = (input_name, output_name),
            ) -> np.ndarray:
                inp = httpclient.InferInput(names[0], list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = httpclient.InferRequestedOutput(names[1], binary_data=binary)
                result = http.infer(model, [inp], outputs=[out]).as_numpy(names[1])
                assert result is not None
                return result

            def via_grpc(
                model: str = model,
                x: np.ndarray = x,
                names: tuple[str, str] = (input_name, output_name),
            ) -> np.ndarray:
                inp = grpcclient.InferInput(names[0], list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                result = grpc.infer(model, [inp]).as_numpy(names[1])
                assert result is not None
                return result

            answers = []
            for label, call in (
                ("HTTP JSON  ", lambda: via_http(False)),
                ("HTTP binary", lambda: via_http(True)),
                ("gRPC       ", via_grpc),
            ):
                result, p50, p95 = timed(call)
                answers.append(result)
                top = int(np.argmax(result[0]))
                first = [round(float(v), 4) for v in result[0, :3]]
                print(
                    f"   {label}: output {list(result.shape)}, argmax {top}, first {first}, "
                    f"p50 {p50:.2f} ms, p95 {p95:.2f} ms"
                )
            for other in answers[1:]:
                np.testing.assert_allclose(other, answers[0], rtol=1e-5, atol=1e-5)
            print("   all three protocols agree")
            if is_mlp:
                mlp_answers[model] = answers[0]
        if len(mlp_answers) > 1:
            print("\n== the mlp in every framework, against ONNX Runtime")
            for model, answer in mlp_answers.items():
                # BF16 keeps 8 bits of mantissa: it agrees to about 1e-2, FP32 to about 1e-5.
                tolerance = 5e-2 if model.endswith("bf16") else 1e-4
                difference = float(np.max(np.abs(answer - mlp_answers["mlp"])))
                np.testing.assert_allclose(
                    answer, mlp_answers["mlp"], rtol=tolerance, atol=tolerance
                )
                print(f"   {model:<18} max |difference| {difference:.2e} (within {tolerance})")
        if has_pipeline:
            print("\n== ensemble 'pipeline': TorchScript preprocess_torch -> ONNX Runtime mlp")
            features = rng.random((4, 256), dtype=np.float32)
            inp = grpcclient.InferInput("FEATURES", list(features.shape), "FP32")
            inp.set_data_from_numpy(features)
            scores, p50, p95 = timed(lambda: grpc.infer("pipeline", [inp]).as_numpy("SCORES"))
            direct = httpclient.InferInput("INPUT0", list(features.shape), "FP32")
            direct.set_data_from_numpy((features - 0.5) * 2.0)
            expected = http.infer("mlp", [direct]).as_numpy("OUTPUT0")
            np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
            print(
                f"   gRPC, batch of 4: scores {list(scores.shape)}, p50 {p50:.2f} ms, "
                f"p95 {p95:.2f} ms; equal to calling mlp on (x - 0.5) * 2 directly"
            )
        stats = http.get_inference_statistics()["model_stats"]
        for s in stats:
            runs = f"{s['inference_count']} inferences in {s['execution_count']} executions"
            print(f"\n== {s['name']}: {runs}")
    finally:
        print("\n== stopping the worker (SIGTERM)")
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        print(f"== worker exited with code {code}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

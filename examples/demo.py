"""The operator's tour on a local fleet: every step a user takes, for real.

    make demo        (or: .venv/bin/python examples/demo.py)

1. ``polyserve sandbox up``: an API server, a node that reflects this machine, the operator.
2. ``kubectl apply`` an InferenceModel (the ONNX mlp on the Xeon pool, a ``file://``
   artifact) and an InferenceEnsemble (normalize -> mlp, in one worker), and watch
   ``kubectl get im,ie`` reach Ready while the pods start as real worker processes.
3. Infer through each Service's address with tritonclient, over HTTP and gRPC.
4. Change the model's config and watch the new revision roll, with a client running
   throughout that must see no failed request.
5. Two canary releases of a third model under load: one that answers 200s with wrong
   numbers is rolled back on mirror agreement, a good one is promoted
   (``polyserve rollout status --watch``).
6. ``kubectl delete``, and ``polyserve sandbox down``: nothing is left running.

Exits 0 only when every step worked. The worker-only tour is ``make demo-worker``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import build_models  # noqa: E402

FLEET = ROOT / ".polyserve-sandbox" / "demo"
NAMESPACE = "demo"
BIN = Path(sys.executable).parent
X = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)


class DemoError(Exception):
    """A step did not do what it should; the message says which and where to look."""


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*command: str, show: bool = True) -> str:
    """Run a command as the user would type it; fail the demo if it fails."""
    if show:
        print("$ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command)))
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise DemoError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    if show and done.stdout.strip():
        print(done.stdout.rstrip())
    return done.stdout


def kubectl(*args: str, show: bool = True) -> str:
    return run(str(BIN / "kubectl"), "--kubeconfig", str(FLEET / "kubeconfig"), *args, show=show)


def polyserve(*args: str, show: bool = True) -> str:
    return run(str(BIN / "polyserve"), "sandbox", *args, "--dir", str(FLEET), show=show)


def normalize_model(path: Path) -> Path:
    """``INPUT0`` FP32 [batch, 256] -> ``OUTPUT0`` = (x - mean(x)) per row: a preprocessing
    step for the ensemble."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["INPUT0"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["INPUT0", "mean"], ["OUTPUT0"]),
        ],
        "normalize",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 256])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def manifests(mlp: Path, normalize: Path, delay_us: int) -> list[dict[str, Any]]:
    def model(name: str, artifact: Path, replicas: int) -> dict[str, Any]:
        return {
            "apiVersion": "polyserve.io/v1alpha1",
            "kind": "InferenceModel",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "modelFormat": {"name": "onnx"},
                "artifact": {"uri": artifact.as_uri()},
                "hardware": {"pool": "xeon", "backend": "onnxruntime"},
                "replicas": replicas,
                "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
                "config": {
                    "max_batch_size": 32,
                    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [256]}],
                    "output": [
                        {
                            "name": "OUTPUT0",
                            "data_type": "TYPE_FP32",
                            "dims": [10 if name == "mlp" else 256],
                        }
                    ],
                    "dynamic_batching": {"max_queue_delay_microseconds": delay_us},
                },
            },
        }

    ensemble = {
        "apiVersion": "polyserve.io/v1alpha1",
        "kind": "InferenceEnsemble",
        "metadata": {"name": "pipeline", "namespace": NAMESPACE},
        "spec": {
            "maxBatchSize": 32,
            "inputs": [{"name": "FEATURES", "data_type": "TYPE_FP32", "dims": [256]}],
            "outputs": [{"name": "SCORES", "data_type": "TYPE_FP32", "dims": [10]}],
            "steps": [
                {"name": "normalize", "modelRef": "normalize", "inputs": {"INPUT0": "FEATURES"}},
                {
                    "name": "classify",
                    "modelRef": "mlp",
                    "inputs": {"INPUT0": "normalize.OUTPUT0"},
                    "outputs": {"OUTPUT0": "SCORES"},
                },
            ],
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": 1,
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
        },
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    return [namespace, model("mlp", mlp, 2), model("normalize", normalize, 0), ensemble]


def watch_rollout(name: str, timeout: float = 120.0) -> str:
    """`polyserve rollout status --watch` once the rollout has started; its final phase."""
    wait(
        "the rollout to start",
        lambda: rollout_phase(name) in ("Progressing", "Paused", "RolledBack"),
        timeout=60,
    )
    polyserve_rollout = [str(BIN / "polyserve"), "rollout", "status", name, "-n", NAMESPACE]
    run(*polyserve_rollout, "--watch", "--kubeconfig", str(FLEET / "kubeconfig"))
    return rollout_phase(name)


def rollout_phase(name: str) -> str:
    body = json.loads(kubectl("get", "im", name, "-n", NAMESPACE, "-o", "json", show=False))
    return str(((body.get("status") or {}).get("rollout") or {}).get("phase", ""))


def scorer(artifact: Path, delay_us: int) -> dict[str, Any]:
    """A model released by canary: half the traffic after it is Ready, then an analysis of
    its success rate and its agreement with stable's answers on every request stable copies
    to it."""
    return {
        "apiVersion": "polyserve.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": "scorer", "namespace": NAMESPACE},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": artifact.as_uri()},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": 1,
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
            "config": {
                "max_batch_size": 32,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [256]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [10]}],
                "dynamic_batching": {"max_queue_delay_microseconds": delay_us},
            },
            "rollout": {
                "strategy": "Canary",
                "canary": {
                    "steps": [{"analysis": {}}, {"setWeight": 50}, {"analysis": {}}],
                    "analysis": {
                        "interval": "3s",
                        "count": 2,
                        "minSamples": 5,
                        "inconclusiveLimit": 10,
                        "metrics": [
                            {"name": "successRate", "min": 0.99},
                            {"name": "mirrorAgreement", "min": 0.99},
                        ],
                    },
                    "mirror": {"percent": 100, "compare": {"*": {"maxAbsDiff": 1.0e-4}}},
                    "abortScaleDownDelaySeconds": 2,
                },
            },
        },
    }


def apply(docs: list[dict[str, Any]]) -> None:
    path = FLEET / "demo.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    kubectl("apply", "-f", str(path))


def apply_one(doc: dict[str, Any], file: str, show: bool = True) -> None:
    path = FLEET / file
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    kubectl("apply", "-f", str(path), show=show)


def watch_ready(names: list[str], timeout: float = 120.0) -> None:
    """``kubectl get im,ie`` until every resource is Ready; the table redrawn as it changes."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        table = kubectl("get", "im,ie", "-n", NAMESPACE, show=False)
        ageless = "\n".join(line.rsplit(None, 1)[0] for line in table.splitlines() if line.strip())
        if ageless != last:
            print(f"[{time.monotonic() - started:5.1f} s] kubectl get im,ie -n {NAMESPACE}")
            print("  " + table.rstrip().replace("\n", "\n  "), flush=True)
            last = ageless
        ready = {
            item["metadata"]["name"]
            for kind in ("im", "ie")
            for item in json.loads(kubectl("get", kind, "-n", NAMESPACE, "-o", "json", show=False))[
                "items"
            ]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (item.get("status") or {}).get("conditions") or []
            )
        }
        if set(names) <= ready:
            print(f"all Ready after {time.monotonic() - started:.1f} s")
            return
        time.sleep(1)
    raise DemoError(f"not Ready within {timeout:.0f} s; see `kubectl describe im,ie -n demo`")


def watch_pods(selector: str, gone: str, timeout: float = 90.0) -> None:
    """``kubectl get pods`` redrawn as it changes, until no pod of revision ``gone`` is left."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        table = kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, show=False)
        ageless = "\n".join(line.rsplit(None, 1)[0] for line in table.splitlines() if line.strip())
        if ageless != last:
            print(f"[{time.monotonic() - started:5.1f} s]")
            print("  " + table.rstrip().replace("\n", "\n  "), flush=True)
            last = ageless
        listed = kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json", show=False)
        pods = json.loads(listed)["items"]
        revisions = {
            p["metadata"].get("annotations", {}).get("polyserve.io/revision") for p in pods
        }
        if pods and gone not in revisions:
            return
        time.sleep(0.3)
    raise DemoError(f"revision {gone} still has pods after {timeout:.0f} s")


def addresses() -> dict[tuple[str, str], str]:
    rows = json.loads(polyserve("endpoints", "-o", "json", show=False))
    return {(r["service"], r["port"]): r["address"] for r in rows if r["namespace"] == NAMESPACE}


def infer(address: str, model: str, protocol: str, inputs: str, output: str) -> np.ndarray:
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(address)
    try:
        tensor = module.InferInput(inputs, list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result: np.ndarray = client.infer(model, [tensor]).as_numpy(output)
        return result
    finally:
        client.close()


def traffic(address: str, stop: threading.Event, counts: Counter[str], model: str = "mlp") -> None:
    """A closed-loop client on a model's Service while a rollout happens."""
    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    while not stop.is_set():
        try:
            client.infer(model, [tensor])
            counts["ok"] += 1
        except Exception as exc:  # counted and reported: the demo fails on any
            counts[f"failed: {exc}"[:120]] += 1
    client.close()


def revision() -> str:
    body = json.loads(kubectl("get", "im", "mlp", "-n", NAMESPACE, "-o", "json", show=False))
    return str((body.get("status") or {}).get("revision", ""))


def wait(what: str, probe: Callable[[], bool], timeout: float = 90.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return
        time.sleep(0.5)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def tour() -> None:
    started = time.monotonic()
    step("1. a local fleet: API server, this machine as a node, the operator")
    artifacts = FLEET / "artifacts"
    build_models.build(ROOT / "examples" / "models")
    mlp = ROOT / "examples" / "models" / "mlp" / "1" / "model.onnx"
    normalize = normalize_model(artifacts / "normalize" / "model.onnx")
    polyserve("up")
    kubectl("get", "nodes", "--show-labels=false")

    step("2. kubectl apply: an InferenceModel and an InferenceEnsemble")
    apply(manifests(mlp, normalize, delay_us=500))
    # normalize has no pods of its own (replicas 0): it serves inside the pipeline only.
    watch_ready(["mlp", "pipeline"])
    apply_one(scorer(mlp, delay_us=500), "scorer.yaml", show=False)
    kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide")

    step("3. infer through the Services, over HTTP and gRPC")
    found = addresses()
    polyserve("endpoints")
    direct = infer(found[("mlp", "http")], "mlp", "http", "INPUT0", "OUTPUT0")
    over_grpc = infer(found[("mlp", "grpc")], "mlp", "grpc", "INPUT0", "OUTPUT0")
    np.testing.assert_allclose(direct, over_grpc, rtol=1e-5)
    print(f"mlp over HTTP and gRPC agree: top class per row {direct.argmax(axis=1).tolist()}")
    scores = infer(found[("pipeline", "grpc")], "pipeline", "grpc", "FEATURES", "SCORES")
    print(
        f"pipeline (normalize -> mlp) over gRPC: top class per row {scores.argmax(axis=1).tolist()}"
    )

    step("4. a config change rolls out as a new revision, under load")
    before = revision()
    stop, counts = threading.Event(), Counter[str]()
    client = threading.Thread(target=traffic, args=(found[("mlp", "grpc")], stop, counts))
    client.start()
    try:
        wait("traffic", lambda: counts["ok"] > 20)
        apply(manifests(mlp, normalize, delay_us=2000))
        print("the pods of mlp as the new revision rolls:")
        watch_pods("app.kubernetes.io/instance=mlp", gone=before)
        wait("the new revision in status", lambda: revision() not in ("", before))
        print(f"revision {before} -> {revision()}")
        watch_ready(["mlp"])
        kubectl("get", "rs", "-n", NAMESPACE, "-l", "app.kubernetes.io/instance=mlp")
    finally:
        stop.set()
        client.join(30)
    failed = {k: v for k, v in counts.items() if k != "ok"}
    print(f"requests during the rollout: {counts['ok']} answered, {sum(failed.values())} failed")
    if failed:
        raise DemoError(f"requests failed during the rollout: {failed}")

    step("5. canary releases: one that answers wrong numbers rolls back, a good one promotes")
    watch_ready(["scorer"])
    wrong = FLEET / "artifacts" / "mlp-retrained" / "model.onnx"
    wrong.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_models.mlp_model(seed=1), str(wrong))  # same shapes, other numbers
    found = addresses()
    stop, counts = threading.Event(), Counter[str]()
    client = threading.Thread(
        target=traffic, args=(found[("scorer", "grpc")], stop, counts, "scorer")
    )
    client.start()
    try:
        wait("traffic", lambda: counts["ok"] > 20)
        print("release 1: a retrained model (200s, other numbers)")
        apply_one(scorer(wrong, delay_us=500), "scorer.yaml")
        if watch_rollout("scorer") != "RolledBack":
            raise DemoError("the wrong release was not rolled back")
        print("release 2, at once: the same model exported again (a new artifact, same numbers)")
        again = FLEET / "artifacts" / "mlp-exported-again" / "model.onnx"
        again.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlp, again)
        apply_one(scorer(again, delay_us=500), "scorer.yaml")
        if watch_rollout("scorer") != "Healthy":
            raise DemoError("the good release was not promoted")
    finally:
        stop.set()
        client.join(30)
    failed = {k: v for k, v in counts.items() if k != "ok"}
    print(f"requests during both releases: {counts['ok']} answered, {sum(failed.values())} failed")
    if failed:
        raise DemoError(f"requests failed during the canaries: {failed}")

    step("6. delete, and stop the fleet")
    kubectl("delete", "-f", str(FLEET / "scorer.yaml"), "--wait=true", "--timeout=60s")
    kubectl("delete", "-f", str(FLEET / "demo.yaml"), "--wait=true", "--timeout=60s")
    wait(
        "the pods to go",
        lambda: (
            not json.loads(kubectl("get", "pods", "-n", NAMESPACE, "-o", "json", show=False))[
                "items"
            ]
        ),
    )
    polyserve("down")
    print(f"\nthe tour took {time.monotonic() - started:.0f} s")


def main() -> int:
    if shutil.which("kubectl", path=str(BIN)) is None:
        print("kubectl is missing from the environment: run `make venv`", file=sys.stderr)
        return 1
    FLEET.mkdir(parents=True, exist_ok=True)
    try:
        tour()
    except Exception as exc:  # any failure: say where to look, and leave nothing running
        print(f"\ndemo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            f"logs: {FLEET}/logs/ (sandbox.log, operator.log); pods: {FLEET}/pods/", file=sys.stderr
        )
        subprocess.run(
            [str(BIN / "polyserve"), "sandbox", "down", "--dir", str(FLEET)], check=False
        )
        return 1
    except KeyboardInterrupt:
        subprocess.run(
            [str(BIN / "polyserve"), "sandbox", "down", "--dir", str(FLEET)], check=False
        )
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

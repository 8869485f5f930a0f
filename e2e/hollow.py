"""A control-plane harness: a fleet whose pods are hollow, the operator as a real process,
the same mix of inputs for every run, and the end state in a form two runs can compare.

Pods are hollow (``pods: hollow``: reported running and ready, nothing started), so what is
under test is the control plane alone: the operator, the API server (with or without its
fault plan) and the sandbox's controllers. The operator is ``python -m
polyserve_operator.main``, started, stopped and killed like the process a Deployment runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.conftest import wait_for
from polyserve_operator import api, k8s
from polyserve_sandbox import cli as sandbox_cli

Obj = dict[str, Any]
MANAGED_BY = "app.kubernetes.io/managed-by"
INSTANCE = "app.kubernetes.io/instance"
REVISION = "polyserve.io/revision"
#: Owned kinds, as (apiVersion, kind).
OWNED = (
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("v1", "Pod"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
)
OURS = ("InferenceModel", "InferenceEnsemble")


@contextlib.contextmanager
def fleet(folder: Path, faults: Obj | None = None) -> Iterator[Path]:
    """A hollow fleet without an operator, with a fault plan from the start; yields its
    kubeconfig."""
    folder.mkdir(parents=True, exist_ok=True)
    config: Obj = {
        "pods": "hollow",
        "operator": {"enabled": False},
        "machineNode": False,
        "nodes": [{"name": "hollow-0", "allocatable": {"cpu": "64", "memory": "256Gi"}}],
    }
    if faults is not None:
        config["faults"] = faults
    (folder / "sandbox.yaml").write_text(yaml.safe_dump(config))
    out = io.StringIO()
    try:
        sandbox_cli.up(folder, operator=False, log=out)
    except sandbox_cli.SandboxError as exc:
        raise RuntimeError(f"the sandbox did not start: {exc}") from exc
    try:
        yield folder / "kubeconfig"
    finally:
        sandbox_cli.down(folder, log=out)


def api_url(kubeconfig: Path) -> str:
    return str(yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"])


def set_faults(kubeconfig: Path, plan: Obj | None) -> Obj:
    """Replace the running API server's fault plan (None: no faults); returns the plan the
    server now holds."""
    url = api_url(kubeconfig) + "/sandbox/faults"
    method, data = ("DELETE", None) if plan is None else ("PUT", json.dumps(plan).encode())
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        result: Obj = json.loads(response.read())
        return result


def injected(kubeconfig: Path) -> dict[str, int]:
    """What the fault plan injected so far, by fault (409, 429, 500, lost, 410, closed)."""
    with urllib.request.urlopen(api_url(kubeconfig) + "/sandbox/faults", timeout=10) as answer:
        found: dict[str, int] = {}
        for item in json.loads(answer.read())["injected"]:
            found[item["fault"]] = found.get(item["fault"], 0) + item["count"]
        return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OperatorProcess:
    """``polyserve-operator`` as a process: started, stopped with SIGTERM, or killed."""

    def __init__(self, kubeconfig: Path, log: Path, *, interval: float = 0.5) -> None:
        self.kubeconfig, self.log, self.interval = kubeconfig, log, interval
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, wait: bool = True) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("POLYSERVE_OPERATOR_")},
            "POLYSERVE_OPERATOR_KUBECONFIG": str(self.kubeconfig),
            "POLYSERVE_OPERATOR_METRICS_ADDR": "127.0.0.1",
            "POLYSERVE_OPERATOR_METRICS_PORT": "0",
            "POLYSERVE_OPERATOR_STATUS_INTERVAL_SECONDS": str(self.interval),
            "POLYSERVE_OPERATOR_PRE_STOP_SECONDS": "0",
        }
        liveness = f"http://127.0.0.1:{_free_port()}/healthz"
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts} ---\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "polyserve_operator.main", "--liveness", liveness],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        if wait:
            wait_for("the operator's liveness endpoint", lambda: _answers(liveness), 60)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a node failure would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, characters: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else ""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


# -- the inputs ------------------------------------------------------------------------


def _model(name: str, namespace: str, *, replicas: int, uri: str = "", **spec: Any) -> Obj:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "modelFormat": {"name": "onnx"},
            "artifact": {"uri": uri or f"s3://models/{name}/v1/model.onnx"},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": replicas,
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "config": {
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            },
            **spec,
        },
    }


CANARY = {
    "strategy": "Canary",
    "canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}, {"setWeight": 100}]},
}


def first_inputs(namespace: str) -> list[Obj]:
    """Plain models (one with a PodDisruptionBudget), two members and their ensemble, and a
    model rolled out by canary."""
    ensemble = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceEnsemble",
        "metadata": {"name": "pipeline", "namespace": namespace},
        "spec": {
            "maxBatchSize": 8,
            "inputs": [{"name": "X", "data_type": "TYPE_FP32", "dims": [4]}],
            "outputs": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [4]}],
            "steps": [
                {"name": "one", "modelRef": "first", "inputs": {"INPUT0": "X"}},
                {
                    "name": "two",
                    "modelRef": "second",
                    "inputs": {"INPUT0": "one.OUTPUT0"},
                    "outputs": {"OUTPUT0": "Y"},
                },
            ],
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": 1,
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        },
    }
    return [
        _model("plain", namespace, replicas=1),
        _model("pair", namespace, replicas=2),
        _model("first", namespace, replicas=0),
        _model("second", namespace, replicas=0),
        ensemble,
        _model("scorer", namespace, replicas=2, rollout=CANARY),
    ]


def second_inputs(namespace: str) -> tuple[list[Obj], list[tuple[str, str]]]:
    """What changes next: a new revision of the canary model, the pair scaled down to one
    (its budget goes), a member's new artifact (the ensemble follows); ``plain`` deleted."""
    scorer = _model(
        "scorer", namespace, replicas=2, uri="s3://models/scorer/v2/model.onnx", rollout=CANARY
    )
    pair = _model("pair", namespace, replicas=1)
    second = _model("second", namespace, replicas=0, uri="s3://models/second/v2/model.onnx")
    return [scorer, pair, second], [("InferenceModel", "plain")]


def apply_all(client: k8s.Client, docs: list[Obj]) -> None:
    for doc in docs:
        client.apply(doc)


def delete_all(client: k8s.Client, namespace: str, names: list[tuple[str, str]]) -> None:
    for kind, name in names:
        client.delete(api.API_VERSION, kind, namespace, name)


# -- the end state ---------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What a namespace holds, in a form two runs of the same inputs compare equal in."""

    resources: dict[str, Obj]
    owned: dict[str, Obj]

    def settled(self) -> bool:
        """Every resource's status follows its current spec and says nothing is under way
        or wrong (Progressing and Degraded False: ready, or scaled to zero), and no rollout
        is under way."""
        for body in self.resources.values():
            status = body["status"]
            if status.get("observedGeneration") != body["generation"]:
                return False
            states = {kind: value for kind, value, _ in status["conditions"]}
            if states.get("Progressing") != "False" or states.get("Degraded") != "False":
                return False
            rollout = status.get("rollout")
            if rollout and (rollout.get("phase"), rollout.get("canaryRevision")) != (
                "Healthy",
                None,
            ):
                return False
        return True


def _conditions(status: Obj) -> list[tuple[str, str, str]]:
    return sorted(
        (c.get("type", ""), c.get("status", ""), c.get("reason", ""))
        for c in status.get("conditions") or []
    )


def _resource(body: Obj) -> Obj:
    status = body.get("status") or {}
    rollout = status.get("rollout") or {}
    ready = next(
        (c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), None
    )
    return {
        "generation": body["metadata"].get("generation"),
        "spec": body.get("spec"),
        "status": {
            "observedGeneration": status.get("observedGeneration"),
            "conditions": _conditions(status),
            "ready": ready,
            "revision": status.get("revision"),
            "endpoints": status.get("endpoints"),
            "rollout": {
                "phase": rollout.get("phase"),
                "stableRevision": rollout.get("stableRevision"),
                "canaryRevision": rollout.get("canaryRevision"),
            }
            if rollout
            else None,
        },
        "finalizers": body["metadata"].get("finalizers"),
    }


def _owned(obj: Obj) -> Obj:
    meta = obj["metadata"]
    kind = obj["kind"]
    owners = sorted((o["kind"], o["name"]) for o in meta.get("ownerReferences") or [])
    found: Obj = {"labels": meta.get("labels"), "owners": owners}
    spec = obj.get("spec") or {}
    if kind == "Deployment":
        found["spec"] = spec
    elif kind == "ConfigMap":
        found["data"] = obj.get("data")
    elif kind == "Service":
        found["spec"] = {k: v for k, v in spec.items() if k not in ("clusterIP", "clusterIPs")}
    elif kind == "PodDisruptionBudget":
        found["spec"] = spec
    elif kind == "ReplicaSet":
        found["replicas"] = spec.get("replicas")
    return found


def snapshot(client: k8s.Client, namespace: str) -> Snapshot:
    resources: dict[str, Obj] = {}
    for kind in OURS:
        for body in client.list(api.API_VERSION, kind, namespace, {}):
            resources[f"{kind}/{body['metadata']['name']}"] = _resource(body)
    owned: dict[str, Obj] = {}
    pods: dict[str, int] = {}
    for api_version, kind in OWNED:
        for obj in client.list(api_version, kind, namespace, {}):
            meta = obj["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            if kind == "Pod":
                references: list[Obj] = meta.get("ownerReferences") or [{}]
                owner = str(references[0].get("name", ""))
                pods[owner] = pods.get(owner, 0) + 1
                continue
            owned[f"{kind}/{meta['name']}"] = _owned(obj)
    owned["pods per ReplicaSet"] = dict(sorted(pods.items()))
    text = json.dumps({"resources": resources, "owned": owned}, sort_keys=True)
    normal = json.loads(text.replace(namespace, "NAMESPACE"))
    return Snapshot(normal["resources"], normal["owned"])


def orphans(client: k8s.Client, namespace: str) -> list[str]:
    """Owned objects whose workload is gone (or never was)."""
    workloads = {
        body["metadata"]["name"]
        for kind in OURS
        for body in client.list(api.API_VERSION, kind, namespace, {})
    }
    found = []
    for api_version, kind in OWNED:
        for obj in client.list(api_version, kind, namespace, {}):
            meta = obj["metadata"]
            labels = meta.get("labels") or {}
            if meta.get("deletionTimestamp"):
                continue
            instance = labels.get(INSTANCE)
            if instance and instance not in workloads:
                found.append(f"{kind}/{meta['name']}")
    return found

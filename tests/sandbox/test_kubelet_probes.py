"""Probes as the kubelet runs them, against real processes on the pod's own address."""

from __future__ import annotations

from pathlib import Path

from polyserve_sandbox.kubelet.layout import PodLayout
from tests.sandbox.kubelet_harness import condition, container, pod, running, state

# Answers GET /NAME with 200 while STATE/NAME exists, else 503.
SERVER = """
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
state = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print('GET', self.path, flush=True)
        found = os.path.exists(os.path.join(state, self.path.strip('/')))
        self.send_response(200 if found else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ['POD_IP'], 8080), Handler).serve_forever()
"""
POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
STATE_VOLUME = {"name": "state", "emptyDir": {}}
STATE_MOUNT = {"name": "state", "mountPath": "/state"}


def web(**fields: object) -> dict[str, object]:
    fields.setdefault("env", [POD_IP])
    return container(
        "web",
        SERVER,
        args=["/state"],
        ports=[{"name": "http", "containerPort": 8080}],
        volumeMounts=[STATE_MOUNT],
        **fields,
    )


def probe(action: dict[str, object], **fields: object) -> dict[str, object]:
    return {**action, "periodSeconds": 1, "failureThreshold": 1, **fields}


def state_dir(root: Path, spec: dict[str, object]) -> Path:
    return PodLayout(root, spec).volumes / "state"


async def test_readiness_drives_ready_and_the_pod_conditions(tmp_path: Path) -> None:
    readiness = probe({"httpGet": {"path": "/ready", "port": "http"}})
    spec = pod([web(readinessProbe=readiness)], volumes=[STATE_VOLUME])
    async with running(spec, tmp_path) as pod_:
        recorder = pod_.recorder
        refused = (
            'Readiness probe failed: Get "http://{ip}:8080/ready": dial tcp {ip}:8080: connect: '
            "connection refused"
        )
        failed = "Readiness probe failed: HTTP probe failed with statuscode: 503"
        await recorder.until(lambda: ("Warning", "Unhealthy", failed) in recorder.events)
        status = recorder.status
        assert state(status, "web")["started"] is True
        assert state(status, "web")["ready"] is False
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "ContainersNotReady"
        assert ready["message"] == "containers with unready status: [web]"
        first = next(m for _, r, m in recorder.events if r == "Unhealthy")
        assert first in (refused.format(ip=status["podIP"]), failed)
        (state_dir(tmp_path, spec) / "ready").touch()
        status = await recorder.until_status(lambda s: condition(s, "Ready") == "True")
        assert condition(status, "ContainersReady") == "True"
        (state_dir(tmp_path, spec) / "ready").unlink()
        await recorder.until_status(lambda s: condition(s, "Ready") == "False")
        assert state(recorder.status, "web")["restartCount"] == 0


async def test_a_failed_liveness_probe_kills_and_restarts_the_container(tmp_path: Path) -> None:
    liveness = probe({"httpGet": {"path": "/live", "port": 8080}}, initialDelaySeconds=1)
    spec = pod(
        [web(livenessProbe=liveness)], volumes=[STATE_VOLUME], terminationGracePeriodSeconds=1
    )
    async with running(spec, tmp_path) as pod_:
        recorder = pod_.recorder
        status = await recorder.until_status(lambda s: state(s, "web")["restartCount"] >= 1)
        last = state(status, "web")["lastState"]["terminated"]
        assert last["exitCode"] == 0 and last["reason"] == "Completed"  # it handles SIGTERM
        reasons = recorder.reasons()
        assert reasons.index("Unhealthy") < reasons.index("Killing")
        assert ("Normal", "Killing", "Container web failed liveness probe, will be restarted") in (
            recorder.events
        )
        unhealthy = next(m for _, r, m in recorder.events if r == "Unhealthy")
        assert unhealthy.startswith("Liveness probe failed: ")


async def test_the_startup_probe_gates_readiness_and_runs_exec_in_the_container_view(
    tmp_path: Path,
) -> None:
    startup = probe({"exec": {"command": ["test", "-f", "/state/started"]}}, failureThreshold=60)
    readiness = probe({"tcpSocket": {"port": "http"}})
    spec = pod([web(startupProbe=startup, readinessProbe=readiness)], volumes=[STATE_VOLUME])
    async with running(spec, tmp_path) as pod_:
        recorder = pod_.recorder
        await recorder.until(lambda: recorder.reasons().count("Unhealthy") >= 2)
        status = recorder.status
        assert state(status, "web")["started"] is False
        assert state(status, "web")["ready"] is False
        assert all(
            m.startswith("Startup probe failed") for _, r, m in recorder.events if r == "Unhealthy"
        )
        (state_dir(tmp_path, spec) / "started").touch()
        status = await recorder.until_status(lambda s: condition(s, "Ready") == "True")
        assert state(status, "web")["started"] is True


async def test_a_failed_startup_probe_restarts_the_container(tmp_path: Path) -> None:
    startup = probe(
        {"exec": {"command": ["sh", "-c", 'echo "not yet: $GREETING"; exit 1']}}, failureThreshold=2
    )
    spec = pod(
        [web(startupProbe=startup, env=[POD_IP, {"name": "GREETING", "value": "hello"}])],
        volumes=[STATE_VOLUME],
        terminationGracePeriodSeconds=1,
    )
    async with running(spec, tmp_path) as pod_:
        recorder = pod_.recorder
        await recorder.until_status(lambda s: state(s, "web")["restartCount"] >= 1)
        assert ("Warning", "Unhealthy", "Startup probe failed: not yet: hello\n") in recorder.events
        assert ("Normal", "Killing", "Container web failed startup probe, will be restarted") in (
            recorder.events
        )


async def test_an_http_pre_stop_hook_reaches_the_container_before_sigterm(tmp_path: Path) -> None:
    readiness = probe({"tcpSocket": {"port": "http"}})
    pre_stop = {"httpGet": {"path": "/prestop", "port": "http"}}
    spec = pod(
        [web(readinessProbe=readiness, lifecycle={"preStop": pre_stop})], volumes=[STATE_VOLUME]
    )
    async with running(spec, tmp_path) as pod_:
        await pod_.recorder.until_status(lambda s: condition(s, "Ready") == "True")
        await pod_.runtime.terminate(5)
        assert pod_.runtime.logs("web").splitlines()[-1] == b"GET /prestop"
        assert state(pod_.recorder.status, "web")["state"]["terminated"]["exitCode"] == 0

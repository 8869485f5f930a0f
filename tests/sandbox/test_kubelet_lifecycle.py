"""A pod's life as real processes: init containers, restarts and back-off, exits,
termination, logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from polyserve_sandbox.kubelet import logs
from tests.sandbox.kubelet_harness import (
    condition,
    container,
    log,
    pod,
    processes_with,
    running,
    state,
)

SLEEP = "import time; time.sleep(600)"


async def test_init_containers_run_in_order_to_completion_before_the_containers(
    tmp_path: Path,
) -> None:
    # Paths reach programs as arguments: the sandbox translates those, not code.
    shared = {"name": "work", "emptyDir": {}}
    mount = [{"name": "work", "mountPath": "/data"}]
    write = "import sys; open(sys.argv[1], 'a').write(sys.argv[2])"
    spec = pod(
        [
            container(
                "main",
                "import sys, time; print(open(sys.argv[1]).read()); time.sleep(600)",
                args=["/data/order"],
                volumeMounts=mount,
            )
        ],
        init=[
            container("first", write, args=["/data/order", "1"], volumeMounts=mount),
            container("second", write, args=["/data/order", "2"], volumeMounts=mount),
        ],
        volumes=[shared],
    )
    async with running(spec, tmp_path) as pod_:
        recorder = pod_.recorder
        status = await recorder.until_status(lambda s: condition(s, "Ready") == "True")
        assert status["phase"] == "Running"
        assert condition(status, "Initialized") == "True"
        for name in ("first", "second"):
            done = state(status, name)
            assert done["state"]["terminated"]["reason"] == "Completed"
            assert done["ready"] is True
        assert state(status, "main")["started"] is True
        await recorder.until(lambda: log(pod_, "main") == b"12\n")
        started = [m for kind, reason, m in recorder.events if reason == "Started"]
        assert started == [
            "Started container first",
            "Started container second",
            "Started container main",
        ]
        # Before the init containers ran, every container waited on them.
        first = recorder.statuses[0]
        assert first["phase"] == "Pending"
        assert state(first, "main")["state"] == {"waiting": {"reason": "PodInitializing"}}
        assert condition(first, "Initialized") == "False"


async def test_a_failed_init_container_is_restarted_with_back_off_and_the_pod_stays_pending(
    tmp_path: Path,
) -> None:
    spec = pod([container("main", SLEEP)], init=[container("setup", "raise SystemExit(3)")])
    async with running(spec, tmp_path) as pod_:
        status = await pod_.recorder.until_status(
            lambda s: (
                state(s, "setup")["restartCount"] >= 2 and "waiting" in state(s, "setup")["state"]
            )
        )
        setup = state(status, "setup")
        assert setup["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert "restarting failed container=setup pod=p_ns(" in setup["state"]["waiting"]["message"]
        assert setup["lastState"]["terminated"]["exitCode"] == 3
        assert setup["lastState"]["terminated"]["reason"] == "Error"
        assert status["phase"] == "Pending"
        init = next(c for c in status["conditions"] if c["type"] == "Initialized")
        assert init["reason"] == "ContainersNotInitialized"
        assert init["message"] == "containers with incomplete status: [setup]"
        assert state(status, "main")["state"]["waiting"]["reason"] == "PodInitializing"
        assert "BackOff" in pod_.recorder.reasons()


async def test_a_failed_init_container_fails_the_pod_under_restart_policy_never(
    tmp_path: Path,
) -> None:
    spec = pod(
        [container("main", SLEEP)],
        init=[container("setup", "raise SystemExit(1)")],
        restart="Never",
    )
    async with running(spec, tmp_path) as pod_:
        status = await pod_.recorder.until_status(lambda s: s["phase"] == "Failed")
        assert state(status, "setup")["restartCount"] == 0
        assert "Started container main" not in [m for _, _, m in pod_.recorder.events]


async def test_a_crashing_container_backs_off_with_a_doubling_window(tmp_path: Path) -> None:
    spec = pod([container("main", "print('boom'); raise SystemExit(2)")])
    async with running(spec, tmp_path) as pod_:
        status = await pod_.recorder.until_status(
            lambda s: (
                state(s, "main")["restartCount"] >= 3 and "waiting" in state(s, "main")["state"]
            )
        )
        main = state(status, "main")
        assert main["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert main["lastState"]["terminated"]["exitCode"] == 2
        windows = [
            s["state"]["waiting"]["message"].split()[1]
            for s in (state(x, "main") for x in pod_.recorder.statuses)
            if s["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
        ]
        # The first exit restarts at once, then 0.3 s, 0.6 s... (the kubelet: 10 s, 20 s).
        assert list(dict.fromkeys(windows))[:2] == ["300ms", "600ms"]
        assert status["phase"] == "Running"
        assert condition(status, "ContainersReady") == "False"


async def test_an_error_exit_puts_the_end_of_the_log_in_the_termination_message(
    tmp_path: Path,
) -> None:
    code = "import sys; [print('line', i) for i in range(200)]; sys.exit(7)"
    spec = pod(
        [container("main", code, terminationMessagePolicy="FallbackToLogsOnError")], restart="Never"
    )
    async with running(spec, tmp_path) as pod_:
        status = await pod_.recorder.until_status(lambda s: s["phase"] == "Failed")
        terminated = state(status, "main")["state"]["terminated"]
        message = terminated["message"]
        assert terminated["exitCode"] == 7 and terminated["reason"] == "Error"
        assert message.endswith("line 199\n")
        assert len(message.splitlines()) == logs.FALLBACK_LINES
        assert message.splitlines()[0] == "line 120"


async def test_the_termination_message_file_wins_over_the_log(tmp_path: Path) -> None:
    code = "import sys; print('noise'); open(sys.argv[1], 'w').write('the reason'); sys.exit(1)"
    spec = pod(
        [
            container(
                "main",
                code,
                args=["/dev/termination-log"],
                terminationMessagePolicy="FallbackToLogsOnError",
            )
        ],
        restart="Never",
    )
    async with running(spec, tmp_path) as pod_:
        status = await pod_.recorder.until_status(lambda s: s["phase"] == "Failed")
        assert state(status, "main")["state"]["terminated"]["message"] == "the reason"


async def test_a_pod_whose_containers_all_complete_succeeds(tmp_path: Path) -> None:
    spec = pod([container("a", "pass"), container("b", "pass")], restart="OnFailure")
    async with running(spec, tmp_path) as pod_:
        status = await pod_.recorder.until_status(lambda s: s["phase"] == "Succeeded")
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == "PodCompleted"


async def test_terminate_runs_pre_stop_then_sigterm_and_leaves_no_process(tmp_path: Path) -> None:
    marker = f"marker-{tmp_path.name}"
    handler = (
        "import signal, sys, time, subprocess\n"
        f"subprocess.Popen(['sh', '-c', 'sleep 600; :', '{marker}'])\n"
        "def stop(*_):\n"
        "    print('pre-stop ran:', open(sys.argv[2]).read(), flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    pre_stop = {"exec": {"command": ["sh", "-c", 'echo yes > "$1"', "sh", "/data/pre-stop"]}}
    spec = pod(
        [
            container(
                "main",
                handler,
                args=[marker, "/data/pre-stop"],
                lifecycle={"preStop": pre_stop},
                volumeMounts=[{"name": "work", "mountPath": "/data"}],
            )
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    async with running(spec, tmp_path, grace=10) as pod_:
        await pod_.recorder.until(lambda: log(pod_, "main") == b"up\n")
        await pod_.recorder.until(lambda: len(processes_with(marker)) >= 2)
        began = time.monotonic()
        await pod_.runtime.terminate(10)
        assert time.monotonic() - began < 5
        status = pod_.recorder.status
        terminated = state(status, "main")["state"]["terminated"]
        assert terminated["exitCode"] == 0
        assert status["phase"] == "Succeeded"
        assert pod_.runtime.logs("main").endswith(b"pre-stop ran: yes\n\n")
        assert processes_with(marker) == []
        assert ("Normal", "Killing", "Stopping container main") in pod_.recorder.events
        assert not (tmp_path / pod_.runtime.layout.key / "volumes").exists()


async def test_a_process_that_ignores_sigterm_is_killed_when_the_grace_period_ends(
    tmp_path: Path,
) -> None:
    ignore = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(600)"
    )
    spec = pod([container("main", ignore)], terminationGracePeriodSeconds=1)
    async with running(spec, tmp_path) as pod_:
        await pod_.recorder.until(lambda: log(pod_, "main") == b"up\n")
        began = time.monotonic()
        await pod_.runtime.terminate(1)
        elapsed = time.monotonic() - began
        # The kubelet gives SIGTERM at least 2 s, then SIGKILL.
        assert 1.8 < elapsed < 6
        assert state(pod_.recorder.status, "main")["state"]["terminated"]["exitCode"] == 137


async def test_cancelling_the_runtime_kills_every_process_at_once(tmp_path: Path) -> None:
    marker = f"cancel-{tmp_path.name}"
    code = (
        "import subprocess, time; "
        f"subprocess.Popen(['sh', '-c', 'sleep 600; :', '{marker}']); time.sleep(600)"
    )
    spec = pod([container("main", code)])
    async with running(spec, tmp_path) as pod_:
        await pod_.recorder.until(lambda: len(processes_with(marker)) >= 2)
        pod_.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pod_.task
        await pod_.recorder.until(lambda: processes_with(marker) == [], deadline=5)
        pod_.task = asyncio.create_task(asyncio.sleep(0))


async def test_an_unknown_image_is_err_image_pull_then_image_pull_back_off(tmp_path: Path) -> None:
    spec = pod([{"name": "main", "image": "registry.example/nope:1"}])
    async with running(spec, tmp_path) as pod_:
        status = await pod_.recorder.until_status(
            lambda s: (
                state(s, "main")["state"].get("waiting", {}).get("reason") == "ImagePullBackOff"
            )
        )
        assert state(status, "main")["state"]["waiting"]["message"] == (
            'Back-off pulling image "registry.example/nope:1"'
        )
        pulled = next(m for _, r, m in pod_.recorder.events if r == "Failed")
        assert pulled.startswith('Failed to pull image "registry.example/nope:1": ')
        assert "image map" in pulled
        assert any(
            s["containerStatuses"][0]["state"].get("waiting", {}).get("reason") == "ErrImagePull"
            for s in pod_.recorder.statuses
        )


async def test_a_command_that_is_not_found_terminates_with_start_error(tmp_path: Path) -> None:
    spec = pod(
        [{"name": "main", "image": "local/tools:1", "command": ["no-such-program"]}],
        restart="Never",
    )
    async with running(spec, tmp_path) as pod_:
        status = await pod_.recorder.until_status(lambda s: s["phase"] == "Failed")
        terminated = state(status, "main")["state"]["terminated"]
        assert terminated["reason"] == "StartError"
        assert terminated["exitCode"] == 128
        assert (
            'exec: "no-such-program": executable file not found in $PATH' in terminated["message"]
        )


async def test_logs_serve_the_current_and_the_previous_run_with_a_tail(tmp_path: Path) -> None:
    code = "import os; print('a'); print('b'); print('c'); raise SystemExit(1)"
    spec = pod([container("main", code)])
    async with running(spec, tmp_path) as pod_:
        await pod_.recorder.until_status(
            lambda s: (
                state(s, "main")["restartCount"] >= 1 and "waiting" in state(s, "main")["state"]
            )
        )
        assert pod_.runtime.logs("main", tail=2) == b"b\nc\n"
        assert pod_.runtime.logs("main", previous=True) == b"a\nb\nc\n"
        with pytest.raises(logs.LogsUnavailable, match="not valid for pod p"):
            pod_.runtime.logs("other")


DRIVER = """
import asyncio, sys
from pathlib import Path
from polyserve_sandbox.kubelet import pods
from tests.sandbox.kubelet_harness import IMAGES, Resolver, address, container, pod

code = (
    "import subprocess, sys, time; "
    "subprocess.Popen(['sh', '-c', 'sleep 600; :', sys.argv[1]]); time.sleep(600)"
)
spec = pod([container("main", code, args=[sys.argv[2]])])

async def main():
    runtime = pods.PodRuntime(
        spec, pod_ip=address(), root=Path(sys.argv[1]), images=IMAGES, resolver=Resolver(),
        on_status=lambda status: None, on_event=lambda *event: None,
    )
    await runtime.run()

asyncio.run(main())
"""


def _wait_until(predicate: Callable[[], bool], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, what
        time.sleep(0.05)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the PID namespace that takes grandchildren needs root"
)
def test_a_killed_sandbox_leaves_no_process_behind(tmp_path: Path) -> None:
    marker = f"crash-{tmp_path.name}"
    sandbox = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path), marker],
        cwd=Path(__file__).parents[2],
        stdin=subprocess.DEVNULL,
    )
    try:
        # The program and its own child; then the sandbox dies without running any clean-up
        # code: only the kernel takes them (the parent-death signal and the PID namespace).
        _wait_until(lambda: len(processes_with(marker)) >= 2, 20, "the pod did not start")
        sandbox.kill()
        sandbox.wait()
        _wait_until(lambda: not processes_with(marker), 5, "processes were left behind")
    finally:
        sandbox.kill()
        sandbox.wait()


async def test_a_sidecar_starts_before_the_next_init_container_and_stops_after_the_containers(
    tmp_path: Path,
) -> None:
    mount = [{"name": "shared", "mountPath": "/data"}]
    side = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "open(sys.argv[1], 'w').write('up')\n"
        "time.sleep(600)\n"
    )
    startup = {"exec": {"command": ["test", "-f", "/data/side"]}, "periodSeconds": 1}
    check = "import os, sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 1)"
    spec = pod(
        [container("main", "print('main ran')", volumeMounts=mount)],
        init=[
            container(
                "side",
                side,
                args=["/data/side"],
                restartPolicy="Always",
                startupProbe=startup,
                volumeMounts=mount,
            ),
            container("check", check, args=["/data/side"], volumeMounts=mount),
        ],
        volumes=[{"name": "shared", "emptyDir": {}}],
        restart="Never",
    )
    async with running(spec, tmp_path) as pod_:
        recorder = pod_.recorder
        status = await recorder.until_status(lambda s: s["phase"] == "Succeeded")
        assert state(status, "check")["state"]["terminated"]["exitCode"] == 0
        assert state(status, "main")["state"]["terminated"]["exitCode"] == 0
        # The kubelet stops the sidecar once the containers are done; it exits on SIGTERM.
        assert state(status, "side")["state"]["terminated"]["exitCode"] == 0
        assert ("Normal", "Killing", "Stopping container side") in recorder.events
        # When the next init container ran, the sidecar ran and had started.
        checking = next(
            s
            for s in recorder.statuses
            if "running" in state(s, "check")["state"] or "terminated" in state(s, "check")["state"]
        )
        assert "running" in state(checking, "side")["state"]
        assert state(checking, "side")["started"] is True

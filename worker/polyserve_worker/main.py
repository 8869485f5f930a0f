"""``polyserve-worker``: the command line. The only module that reads argv and the environment."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import sys
from collections.abc import MutableSequence, Sequence
from multiprocessing import connection
from typing import Any

from pydantic import ValidationError

from polyserve_worker import server
from polyserve_worker import settings as worker_settings
from polyserve_worker.settings import WorkerSettings

logger = logging.getLogger("polyserve_worker")


def settings_from(argv: Sequence[str]) -> WorkerSettings:
    """Settings from ``argv`` and the environment (see ``polyserve_worker.settings``)."""
    return worker_settings.parse(argv)


async def _run(
    settings: WorkerSettings, rank: int = 0, metrics_ports: MutableSequence[int] | None = None
) -> None:
    worker = server.Worker(settings, rank=rank, metrics_ports=metrics_ports)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await worker.start()
    except server.StartupError:
        await worker.stop()
        raise
    await stopping.wait()
    logger.info("stopping: draining requests in flight (up to %ss)", settings.exit_timeout_secs)
    await worker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fetch":
        from polyserve_worker import fetching

        return fetching.main(argv[1:])
    if argv and argv[0] == "configure":
        from polyserve_worker import fetching

        return fetching.configure_main(argv[1:])
    if argv and argv[0] == "tune":
        try:
            from polyserve_worker.tuning import cli as tuning_cli
        except ImportError as exc:
            print(f"polyserve-worker tune: pip install 'polyserve[tune]' ({exc})", file=sys.stderr)
            return 2
        return tuning_cli.main(argv[1:])
    try:
        settings = settings_from(argv)
    except ValidationError as exc:
        missing = any(e["type"] == "missing" for e in exc.errors())
        hint = " (give --model-repository DIR or set POLYSERVE_MODEL_REPOSITORY)" if missing else ""
        print(f"polyserve-worker: invalid settings{hint}:\n{exc}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    if not settings.model_repository.is_dir():
        print(
            f"polyserve-worker: model repository {settings.model_repository} is not a directory",
            file=sys.stderr,
        )
        return 2
    if settings.workers > 1:
        if 0 in (settings.http_port, settings.grpc_port):
            print("polyserve-worker: --workers above 1 needs fixed ports", file=sys.stderr)
            return 2
        return _supervise(settings)
    return _serve(settings)


def _configure_logging(settings: WorkerSettings) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.log_verbose:
        logging.getLogger("polyserve_worker.batching").setLevel(logging.DEBUG)


def _serve(
    settings: WorkerSettings, rank: int = 0, metrics_ports: MutableSequence[int] | None = None
) -> int:
    try:
        _event_loop_runner()(_run(settings, rank, metrics_ports))
    except server.StartupError as exc:
        # The last line of the log: Kubernetes shows it as the termination message
        # (terminationMessagePolicy: FallbackToLogsOnError) and the operator in status.
        print(
            f"polyserve-worker: exiting: {exc} (start with --exit-on-error=false to serve "
            "the other models anyway)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


def _child(settings: WorkerSettings, rank: int, metrics_ports: MutableSequence[int]) -> None:
    """One of ``--workers`` processes (started with spawn: nothing of the parent's gRPC or
    event loop state is inherited); ``metrics_ports``, shared by all of them, is where each
    says the port of its own metrics, so the first can serve every process's."""
    _configure_logging(settings)
    sys.exit(_serve(settings, rank, metrics_ports))


def _supervise(settings: WorkerSettings) -> int:
    """Run ``settings.workers`` serving processes on the same ports (SO_REUSEPORT) and
    stay in front of them as the container's main process: SIGTERM and SIGINT are passed
    on, each drains as a single worker does; when one exits on its own, the rest are
    stopped and the exit status is the first one's, so the pod restarts as a whole."""
    spawn = multiprocessing.get_context("spawn")
    metrics_ports = spawn.Array("i", settings.workers, lock=False)
    children = [
        spawn.Process(
            target=_child,
            args=(settings, rank, metrics_ports),
            name=f"polyserve-worker-{rank}",
        )
        for rank in range(settings.workers)
    ]
    signalled = False

    def stop_all() -> None:
        for child in children:
            if child.pid is not None and child.exitcode is None:
                child.terminate()  # SIGTERM: the child drains

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal signalled
        signalled = True
        stop_all()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for child in children:
        child.start()
    logger.info("started %d worker processes on shared ports", len(children))
    failed: int | None = None
    running = list(children)
    while running:
        connection.wait([child.sentinel for child in running])
        for child in [c for c in running if c.exitcode is not None]:
            running.remove(child)
            if not signalled and failed is None:
                logger.error("%s exited with %s; stopping the others", child.name, child.exitcode)
                failed = child.exitcode or 1
                stop_all()
    if failed is not None:
        return failed
    return 0 if all(child.exitcode == 0 for child in children) else 1


def _event_loop_runner() -> Any:
    """uvloop where installed (the worker extra brings it): it roughly doubles REST throughput
    on the same cores by running the event loop and HTTP parsing in C."""
    try:
        import uvloop
    except ImportError:
        logger.info("uvloop not installed; using the standard asyncio event loop")
        return asyncio.run
    return uvloop.run


if __name__ == "__main__":
    sys.exit(main())

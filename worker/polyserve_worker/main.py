"""``polyserve-worker``: the command line. The only module that reads argv and the environment."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from polyserve_worker import server
from polyserve_worker import settings as worker_settings
from polyserve_worker.settings import WorkerSettings

logger = logging.getLogger("polyserve_worker")


def settings_from(argv: Sequence[str]) -> WorkerSettings:
    """Settings from ``argv`` and the environment (see ``polyserve_worker.settings``)."""
    return worker_settings.parse(argv)


async def _run(settings: WorkerSettings) -> None:
    worker = server.Worker(settings)
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
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.log_verbose:
        logging.getLogger("polyserve_worker.batching").setLevel(logging.DEBUG)
    if not settings.model_repository.is_dir():
        print(
            f"polyserve-worker: model repository {settings.model_repository} is not a directory",
            file=sys.stderr,
        )
        return 2
    try:
        _event_loop_runner()(_run(settings))
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

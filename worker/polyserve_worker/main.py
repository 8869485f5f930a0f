"""``polyserve-worker``: the command line. The only module that reads argv and the environment."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from polyserve_worker import server
from polyserve_worker.settings import WorkerSettings

logger = logging.getLogger("polyserve_worker")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polyserve-worker",
        description=(
            "Serve a Triton-layout model repository over the Open Inference Protocol. Every "
            "flag can also be set as POLYSERVE_<FLAG> (e.g. POLYSERVE_HTTP_PORT). "
            "'polyserve-worker fetch URI DEST' downloads a model artifact."
        ),
    )
    p.add_argument("--model-repository", help="model repository directory")
    p.add_argument("--http-port", type=int, help="REST port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 8002)")
    p.add_argument("--host", help="bind address (default 0.0.0.0)")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"])
    p.add_argument("--load-model", action="append", help="model to load at start (explicit mode)")
    p.add_argument(
        "--required-model", action="append", help="model the readiness probe follows (repeatable)"
    )
    p.add_argument(
        "--strict-readiness",
        type=_bool,
        help="ready only while required models are ready (default true)",
    )
    p.add_argument("--exit-timeout-secs", type=float, help="drain time on SIGTERM (default 30)")
    p.add_argument("--repository-poll-secs", type=float, help="poll interval (default 15)")
    p.add_argument("--http-max-input-size", type=int, help="largest request body in bytes")
    p.add_argument(
        "--allow-client-shm",
        type=_bool,
        nargs="?",
        const=True,
        help="serve system shared memory to clients on this node (default false)",
    )
    p.add_argument("--log-verbose", type=int, help="1: log every batch and why it closed")
    return p


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def settings_from(argv: Sequence[str]) -> WorkerSettings:
    args = _parser().parse_args(list(argv))
    given = {key: value for key, value in vars(args).items() if value is not None}
    for key in ("load_model", "required_model"):
        if key in given:
            given[key] = tuple(given[key])
    return WorkerSettings(**given)


async def _run(settings: WorkerSettings) -> None:
    worker = server.Worker(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await worker.start()
    await stopping.wait()
    logger.info("stopping: draining requests in flight (up to %ss)", settings.exit_timeout_secs)
    await worker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fetch":
        from polyserve_worker import fetching

        return fetching.main(argv[1:])
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
    _event_loop_runner()(_run(settings))
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

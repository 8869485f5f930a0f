"""``python -m tests.worker.echo_worker FLAGS...``: the worker process with the echo backend.

For tests that need the worker in a process of its own (so the test's client threads do not
share its interpreter) but a model that costs nothing to run, so what they measure is the
worker's own work. Takes the worker's flags; stops on SIGTERM like ``polyserve-worker``.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from polyserve_worker import server, settings
from tests.worker.fakes import EchoBackend


async def serve(argv: list[str]) -> None:
    worker = server.Worker(settings.parse(argv), extra_backends={"echo": EchoBackend()})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    await worker.start()
    await stopping.wait()
    await worker.stop()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))

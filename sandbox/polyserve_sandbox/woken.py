"""The loop of the sandbox's controllers: woken by the store's changes to the kinds it
watches, or after a resync period, and stopped cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from polyserve_sandbox.apiserver import store as apistore


class WokenLoop:
    """``begin`` listens to the store and runs ``loop``; ``woken`` waits for a change (or
    ``seconds``) and says whether to go on; ``stop`` ends it."""

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        # Set by stop(): Python 3.11's wait_for can swallow a cancellation that arrives as
        # the event fires, and the loop must end all the same.
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def begin(
        self,
        store: apistore.Store,
        kinds: list[tuple[str, str]],
        changed: Callable[[apistore.Event], None],
        loop: Coroutine[Any, Any, None],
        name: str,
    ) -> None:
        # The controllers' listeners only read what changed (to mark it dirty).
        self._unsubscribe = store.listen(changed, kinds=kinds, shared=True)
        self._task = asyncio.create_task(loop, name=name)

    async def woken(self, seconds: float) -> bool:
        """Wait for a change or ``seconds``; False once stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()
        return not self._stopping

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

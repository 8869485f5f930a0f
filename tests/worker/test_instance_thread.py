"""A blocking backend's instance runs everything on one thread of its own: its batches and
the backend's own set-up calls (``loop.run_in_executor(self._executor, ...)``), in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from polyserve_worker import errors
from polyserve_worker.backends import base
from polyserve_worker.tensors import Array


class Doubling(base.BlockingInstance):
    """Doubles INPUT0, remembering which thread ran each call; refuses negative inputs."""

    def __init__(self) -> None:
        super().__init__("doubling", batched=True)
        self.threads: list[int] = []

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> base.Outputs:
        self.threads.append(threading.get_ident())
        if (inputs["INPUT0"] < 0).any():
            raise ValueError("negative input")
        return {"OUTPUT0": inputs["INPUT0"] * 2}

    async def set_up(self) -> int:
        """A backend's own call on its instance thread, as PyTorch's thread settings are."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._set_up)

    def _set_up(self) -> int:
        self.threads.append(threading.get_ident())
        return len(self.threads)


async def test_batches_and_set_up_calls_run_on_the_instance_thread_in_order() -> None:
    instance = Doubling()
    assert await instance.set_up() == 1
    result = await instance.execute(
        [{"INPUT0": np.array([[1.0]])}, {"INPUT0": np.array([[2.0], [3.0]])}], []
    )
    first, second = result.results
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["OUTPUT0"].tolist() == [[2.0]]
    assert second["OUTPUT0"].tolist() == [[4.0], [6.0]]
    assert len(set(instance.threads)) == 1
    assert instance.threads[0] != threading.get_ident()
    await instance.close()


async def test_a_failing_request_fails_alone_and_the_thread_carries_on() -> None:
    instance = Doubling()
    result = await instance.execute(
        [{"INPUT0": np.array([[1.0]])}, {"INPUT0": np.array([[-1.0]])}], []
    )
    good, bad = result.results
    assert isinstance(good, dict) and good["OUTPUT0"].tolist() == [[2.0]]
    assert isinstance(bad, errors.ServerError)
    assert "negative input" in str(bad)
    again = await instance.execute([{"INPUT0": np.array([[5.0]])}], [])
    assert isinstance(again.results[0], dict)
    await instance.close()


async def test_an_exception_on_the_thread_reaches_the_awaiting_caller() -> None:
    thread = base.InstanceThread("test-instance")

    def broken() -> None:
        raise KeyError("lost")

    with pytest.raises(KeyError, match="lost"):
        await thread.call(asyncio.get_running_loop(), broken)
    assert await thread.call(asyncio.get_running_loop(), lambda: 7) == 7
    thread.shutdown()


async def test_a_closed_instance_takes_no_more_work() -> None:
    instance = Doubling()
    await instance.execute([{"INPUT0": np.array([[1.0]])}], [])
    await instance.close()
    with pytest.raises(RuntimeError, match="after shutdown"):
        await instance.execute([{"INPUT0": np.array([[1.0]])}], [])

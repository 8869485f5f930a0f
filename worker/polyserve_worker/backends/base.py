"""The backend contract: what every framework module implements, and nothing more.

Batch-first, as Triton's ``execute(requests)``: an instance gets the requests of one batch
and returns one result per request; an error it can pin on one request fails only that
request. The batcher owns queues, futures and timing; backends never know how a batch was
formed. ``BlockingInstance`` does the common work for frameworks with a blocking ``run``:
concatenate along the batch dimension, run on the instance's own thread, split back, and
on failure rerun the requests one by one to find the culprit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar, cast

import numpy as np

from polyserve_worker import errors
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

Outputs = dict[str, Array]

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True)
class Timings:
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass(frozen=True)
class ExecuteResult:
    results: list[Outputs | errors.PolyserveError]
    timings: Timings


@dataclass(frozen=True)
class InstanceSpec:
    """Where one instance runs: its name, device kind and device id."""

    name: str
    kind: str  # "KIND_CPU" or "KIND_GPU"
    device_id: int = 0


class ModelInstance(Protocol):
    """One loaded copy of a model version that executes one batch at a time."""

    async def execute(
        self, requests: Sequence[Mapping[str, Array]], outputs: Sequence[str]
    ) -> ExecuteResult: ...

    async def close(self) -> None: ...


class Backend(Protocol):
    """A framework: fills in a config from the model file and loads instances."""

    name: str
    default_filename: str

    def complete_config(self, config: Any, model_path: Path) -> None:
        """Fill inputs, outputs and max_batch_size the config leaves out (blocking)."""
        ...

    async def load(
        self, config: Any, model_path: Path, instance: InstanceSpec
    ) -> ModelInstance: ...


class InstanceThread(concurrent.futures.Executor):
    """The one thread an instance runs its blocking calls on, in the order they come.

    An executor, so a backend's own set-up calls (``loop.run_in_executor``) run on the
    thread its batches run on; ``call`` is the per-batch path, which hands the outcome
    straight to an asyncio future: ``run_in_executor`` on a ThreadPoolExecutor costs a
    concurrent future, an asyncio future chained to it and the callbacks between them,
    about 10 us of CPU per batch more.

    The thread is a daemon: an instance still running a batch when the process exits is
    not waited for (instances are closed, and their threads joined, on every orderly
    stop)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shut_down = False

    def call(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """``fn(*args)`` on the thread; its result or exception comes back on ``loop``."""
        future: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:
                _hand_over(loop, future, None, exc)
            else:
                _hand_over(loop, future, result, None)

        self._put(job)
        return future

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._put(job)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Run what was submitted, then end the thread (``cancel_futures`` is not offered:
        an instance has nothing queued when it closes)."""
        with self._lock:
            if not self._shut_down:
                self._shut_down = True
                self._jobs.put(None)
        if wait and self._thread is not None:
            self._thread.join()

    def _put(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


def _hand_over(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[T],
    result: T | None,
    error: BaseException | None,
) -> None:
    """From the instance thread: settle ``future`` on its loop (if that still runs)."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(cast(T, result))


class BlockingInstance(ABC):
    """Base for frameworks whose inference call blocks (it runs off the event loop)."""

    def __init__(self, model_name: str, batched: bool) -> None:
        self.model_name = model_name
        self.batched = batched
        # One thread per instance: an instance runs one batch at a time, and N instances
        # run N batches at once (the frameworks release the GIL while computing).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = InstanceThread(f"instance-{model_name}")

    @abstractmethod
    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> Outputs:
        """Run the framework once on (possibly concatenated) inputs. Blocking."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Free framework resources; called once on the instance thread at close."""

    async def execute(
        self, requests: Sequence[Mapping[str, Array]], outputs: Sequence[str]
    ) -> ExecuteResult:
        if self._loop is None:  # cached: get_running_loop() is a syscall on Python 3.11
            self._loop = asyncio.get_running_loop()
        return await self._executor.call(self._loop, self._execute, requests, outputs)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.release)
        self._executor.shutdown(wait=True)

    def _execute(
        self, requests: Sequence[Mapping[str, Array]], outputs: Sequence[str]
    ) -> ExecuteResult:
        start = time.perf_counter_ns()
        if len(requests) == 1 or not self.batched:
            merged = requests[0] if len(requests) == 1 else None
        else:
            merged = merge(requests)
        prepared = time.perf_counter_ns()
        if merged is None:  # not batched: one run per request (the batcher sends one)
            results = [self._run_one(r, outputs) for r in requests]
            done = time.perf_counter_ns()
            return ExecuteResult(results, Timings(prepared - start, done - prepared, 0))
        try:
            produced = self.run(merged, outputs)
        except Exception as exc:
            if len(requests) == 1:
                return ExecuteResult([self._failure(exc)], Timings(prepared - start, 0, 0))
            # Rerun each request alone so the failure lands on the request that caused it.
            logger.info("batch of %d failed on %s; isolating", len(requests), self.model_name)
            results = [self._run_one(r, outputs) for r in requests]
            done = time.perf_counter_ns()
            return ExecuteResult(results, Timings(prepared - start, done - prepared, 0))
        computed = time.perf_counter_ns()
        results_split: list[Outputs | errors.PolyserveError]
        if len(requests) == 1:
            results_split = [produced]
        else:
            results_split = split(produced, requests, self.model_name)
        finished = time.perf_counter_ns()
        return ExecuteResult(
            results_split, Timings(prepared - start, computed - prepared, finished - computed)
        )

    def _run_one(
        self, request: Mapping[str, Array], outputs: Sequence[str]
    ) -> Outputs | errors.PolyserveError:
        try:
            return self.run(request, outputs)
        except Exception as exc:
            return self._failure(exc)

    def _failure(self, exc: Exception) -> errors.PolyserveError:
        if isinstance(exc, errors.PolyserveError):
            return exc
        error = errors.ServerError(f"model '{self.model_name}' failed to execute: {exc}")
        error.__cause__ = exc
        return error


def merge(requests: Sequence[Mapping[str, Array]]) -> dict[str, Array]:
    """The requests of a batch as one: each input concatenated along the batch dimension."""
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}


def split(
    produced: Outputs, requests: Sequence[Mapping[str, Array]], model_name: str
) -> list[Outputs | errors.PolyserveError]:
    """One merged run's outputs back into one result per request, by each request's rows;
    an output without the batch dimension fails every request of the batch, saying why."""
    sizes = [int(next(iter(r.values())).shape[0]) for r in requests]
    total = sum(sizes)
    for name, array in produced.items():
        if array.ndim == 0 or array.shape[0] != total:
            error = errors.ServerError(
                f"model '{model_name}' output '{name}' has shape {list(array.shape)}, which "
                f"does not start with the batch size {total}; set max_batch_size: 0 if the "
                "model has no batch dimension"
            )
            return [error for _ in sizes]
    # Python ints, not numpy's: slicing with them is faster, and this runs once per request.
    ends = itertools.accumulate(sizes)
    return [
        {name: array[end - size : end] for name, array in produced.items()}
        for size, end in zip(sizes, ends, strict=True)
    ]

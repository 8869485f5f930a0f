"""Dynamic batcher with Triton's semantics, and the scheduling of batches onto instances.

One ``Batcher`` per loaded model version. Requests wait in one queue per priority level;
whenever an instance is free the batcher forms a batch following Triton's rules and hands
it to that instance:

- ``max_batch_size`` caps the sum of the requests' batch sizes; requests whose non-batch
  shapes differ never share a batch.
- a batch is sent when it is full, when it reaches a ``preferred_batch_size``, when the
  oldest request has waited ``max_queue_delay_microseconds``, or at once when the delay is
  0 and the queue is drained (so batches form naturally while every instance is busy).
- per level: ``max_queue_size`` refuses with Unavailable, ``default_timeout_microseconds``
  with ``timeout_action`` REJECT (fail) or DELAY (serve after everything not timed out),
  ``allow_timeout_override`` lets a request set its own timeout. A delayed request still
  counts against its level's ``max_queue_size``, as in Triton's PolicyQueue.
- ``preserve_ordering`` releases responses in arrival order even across instances.

Without ``dynamic_batching`` each request runs alone, as Triton's default scheduler does.
Every closed batch is logged at DEBUG with why it closed. Time comes from an injected clock.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from polyserve_worker import clock as clocks
from polyserve_worker import errors, stats
from polyserve_worker.backends import base
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

# Why a batch closed, as logged and counted.
FULL = "full"
PREFERRED = "preferred size reached"
DELAY = "delay elapsed"
DRAINED = "queue drained"
SHAPE = "next request has other shapes"
SINGLE = "no dynamic batching"


@dataclass(frozen=True)
class QueuePolicy:
    timeout_action: str = "REJECT"
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0


@dataclass(frozen=True)
class Policy:
    """The batcher's settings, read once from the model config."""

    max_batch_size: int = 0
    dynamic: bool = False
    preferred: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 1
    default_priority: int = 1
    queue_policies: Mapping[int, QueuePolicy] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        if not config.HasField("dynamic_batching") or config.max_batch_size == 0:
            return cls(max_batch_size=config.max_batch_size)
        b = config.dynamic_batching
        levels = max(1, b.priority_levels)
        default = b.default_priority_level or 1
        base_policy = _queue_policy(b.default_queue_policy)
        policies = {
            level: _queue_policy(b.priority_queue_policy[level])
            if level in b.priority_queue_policy
            else base_policy
            for level in range(1, levels + 1)
        }
        return cls(
            max_batch_size=config.max_batch_size,
            dynamic=True,
            preferred=tuple(sorted(set(b.preferred_batch_size))),
            max_queue_delay_us=b.max_queue_delay_microseconds,
            preserve_ordering=b.preserve_ordering,
            priority_levels=levels,
            default_priority=default,
            queue_policies=policies,
        )


#: What requests that share a batch agree on: (input name, shape less the batch dim, dtype).
ShapeKey = tuple[tuple[str, tuple[int, ...], str], ...]

#: The policy of a level the config leaves out (one instance: it is looked up per request).
_NO_QUEUE_POLICY = QueuePolicy()


def _queue_policy(message: Any) -> QueuePolicy:
    return QueuePolicy(
        timeout_action="DELAY" if message.timeout_action == 1 else "REJECT",
        default_timeout_us=message.default_timeout_microseconds,
        allow_timeout_override=message.allow_timeout_override,
        max_queue_size=message.max_queue_size,
    )


def _shape_key(inputs: Mapping[str, Array], batched: bool) -> ShapeKey:
    """A request's ``ShapeKey``, its inputs in name order."""
    return tuple(
        sorted(
            [(name, a.shape[1:] if batched else a.shape, a.dtype.str) for name, a in inputs.items()]
        )
    )


@dataclass(eq=False, slots=True)
class _Pending:
    seq: int
    inputs: Mapping[str, Array]
    outputs: tuple[str, ...]
    batch_size: int
    shape_key: ShapeKey
    level: int
    enqueued: float
    deadline: float | None
    future: asyncio.Future[base.Outputs]
    delayed: bool = False
    settled: bool = False


class Batcher:
    """Queues, batch formation and dispatch for one model version."""

    def __init__(
        self,
        model: str,
        policy: Policy,
        instances: Sequence[base.ModelInstance],
        model_stats: stats.ModelStats,
        clock: clocks.Clock | None = None,
    ) -> None:
        if not instances:
            raise ValueError("a batcher needs at least one instance")
        self.model = model
        self.policy = policy
        self.stats = model_stats
        self._clock = clock or clocks.MonotonicClock()
        self._instances = list(instances)
        self._free: collections.deque[base.ModelInstance] = collections.deque(instances)
        self._queues: dict[int, collections.deque[_Pending]] = {
            level: collections.deque() for level in range(1, policy.priority_levels + 1)
        }
        self._delayed: collections.deque[_Pending] = collections.deque()
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._executing: set[_Pending] = set()  # requests in batches an instance is running
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        # preserve_ordering: completed results wait here until all earlier ones are out.
        self._next_release = 0
        self._finished: dict[int, tuple[_Pending, base.Outputs | BaseException]] = {}
        self.closing_reasons: collections.Counter[str] = collections.Counter()
        self._event_loop: asyncio.AbstractEventLoop | None = None
        # The batch window's timer (``_wait``) and the time it was set for.
        self._timer: asyncio.Future[None] | None = None
        self._timer_until = 0.0
        # Only queue policies with timeouts need the queues scanned on every wake-up.
        self._timeouts = any(
            p.default_timeout_us or p.allow_timeout_override for p in policy.queue_policies.values()
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher:{self.model}")
        self._task.add_done_callback(self._loop_exited)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish, then close instances.

        Everything happens within ``drain_timeout``: requests still unanswered then fail
        with Unavailable, and an instance still busy is left to finish on its own."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        self._accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
        except TimeoutError:
            logger.warning(
                "model '%s': %d requests still in flight at stop", self.model, self._in_flight
            )
            self.abort(f"model '{self.model}' stopped before the request finished")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.abort(f"model '{self.model}' was unloaded")
        for instance in self._instances:
            try:
                await asyncio.wait_for(instance.close(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                logger.warning("model '%s': an instance was still busy at stop", self.model)

    def abort(self, reason: str) -> None:
        """Refuse new requests and fail every queued and running request now (Unavailable):
        the exit deadline has come, and an answer beats a connection closed under it."""
        self._accepting = False
        failure = errors.Unavailable(reason)
        for pending in self._all_queued():
            self.stats.pending -= 1
            self._settle(pending, failure)
        for queue in self._ordered():
            queue.clear()
        for pending in list(self._executing):
            self._settle(pending, failure)
        self._finished.clear()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- submission ----------------------------------------------------------------------

    async def submit(
        self,
        inputs: Mapping[str, Array],
        outputs: Sequence[str],
        batch_size: int,
        priority: int = 0,
        timeout_us: int | None = None,
    ) -> base.Outputs:
        """Queue one request and wait for its outputs."""
        if not self._accepting:
            raise errors.Unavailable(f"model '{self.model}' is shutting down")
        level = self._level(priority)
        policy = self.policy.queue_policies.get(level, _NO_QUEUE_POLICY)
        queue = self._queues[level]
        if policy.max_queue_size and self._queued_at(level) >= policy.max_queue_size:
            raise errors.Unavailable(
                f"model '{self.model}': the queue for priority {level} is full "
                f"(max_queue_size {policy.max_queue_size}); retry later or add instances"
            )
        now = self._clock.now()
        timeout = policy.default_timeout_us
        if timeout_us is not None and policy.allow_timeout_override:
            timeout = timeout_us
        future: asyncio.Future[base.Outputs] = self._loop_of().create_future()
        pending = _Pending(
            seq=next(self._seq),
            inputs=inputs,
            outputs=tuple(outputs),
            batch_size=batch_size,
            shape_key=_shape_key(inputs, self.policy.max_batch_size > 0),
            level=level,
            enqueued=now,
            deadline=now + timeout / 1e6 if timeout else None,
            future=future,
        )
        queue.append(pending)
        self._in_flight += 1
        self._idle.clear()
        self.stats.pending += 1
        self._wake.set()
        return await future

    def _queued_at(self, level: int) -> int:
        """Requests waiting at ``level``, including its timed-out ones that DELAY kept."""
        delayed = sum(1 for p in self._delayed if p.level == level) if self._delayed else 0
        return len(self._queues[level]) + delayed

    def _loop_of(self) -> asyncio.AbstractEventLoop:
        # Cached: get_running_loop() costs a getpid() syscall per call on Python 3.11.
        if self._event_loop is None:
            self._event_loop = asyncio.get_running_loop()
        return self._event_loop

    def _level(self, priority: int) -> int:
        if priority == 0:
            return self.policy.default_priority
        if not 1 <= priority <= self.policy.priority_levels:
            # Triton serves out-of-range priorities at the default level.
            return self.policy.default_priority
        return priority

    # -- the scheduling loop -------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            while True:
                self._wake.clear()
                now = self._clock.now()
                if self._timeouts:
                    self._expire(now)
                wait_until: float | None = None
                while self._free and self._has_queued():
                    batch, reason, wait_until = self._form(now)
                    if not batch:
                        break
                    self._dispatch(batch, reason, now)
                if self._timeouts:
                    wait_until = self._earliest_deadline(wait_until)
                await self._wait(wait_until)
        finally:
            self._stop_timer()

    def _earliest_deadline(self, until: float | None) -> float | None:
        """``until``, or sooner if a queued request times out before it."""
        deadlines = [p.deadline for p in self._all_queued() if p.deadline and not p.delayed]
        if not deadlines:
            return until
        return min(deadlines) if until is None else min(until, *deadlines)

    async def _wait(self, until: float | None) -> None:
        """Until the batcher is woken, or the clock reaches ``until``.

        The timer for ``until`` wakes the batcher when it fires, and lives on across
        wake-ups while ``until`` stays the same: it is the oldest request's due time, and
        every batch-mate that arrives meanwhile wakes the batcher, which used to cost a new
        sleeper and a wait on two tasks each time."""
        if until is None:
            self._stop_timer()
            await self._wake.wait()
            return
        delay = until - self._clock.now()
        if delay <= 0:
            await asyncio.sleep(0)
            return
        if self._timer is None or self._timer.done() or self._timer_until != until:
            self._stop_timer()
            self._timer = asyncio.ensure_future(self._clock.sleep(delay))
            self._timer.add_done_callback(self._timer_fired)
            self._timer_until = until
        await self._wake.wait()

    def _timer_fired(self, timer: asyncio.Future[None]) -> None:
        if not timer.cancelled():
            self._wake.set()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _loop_exited(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("batcher for '%s' died", self.model, exc_info=task.exception())

    def _has_queued(self) -> bool:
        return any(self._queues.values()) or bool(self._delayed)

    def _all_queued(self) -> list[_Pending]:
        return [p for q in self._queues.values() for p in q] + list(self._delayed)

    def _expire(self, now: float) -> None:
        for level, queue in self._queues.items():
            if not any(p.deadline is not None and p.deadline <= now for p in queue):
                continue
            action = self.policy.queue_policies.get(level, _NO_QUEUE_POLICY).timeout_action
            kept: collections.deque[_Pending] = collections.deque()
            for pending in queue:
                if pending.deadline is None or pending.deadline > now:
                    kept.append(pending)
                elif action == "DELAY":
                    pending.delayed = True
                    self._delayed.append(pending)
                else:
                    waited_us = int((now - pending.enqueued) * 1e6)
                    self.stats.pending -= 1
                    self._resolve(
                        pending,
                        errors.Unavailable(
                            f"model '{self.model}': request timed out in the queue after "
                            f"{waited_us} us"
                        ),
                    )
            self._queues[level] = kept

    def _ordered(self) -> list[collections.deque[_Pending]]:
        return [self._queues[level] for level in sorted(self._queues)] + [self._delayed]

    def _form(self, now: float) -> tuple[list[_Pending], str, float | None]:
        """Pick the next batch, or say until when to wait for batch-mates."""
        for queue in self._ordered():
            while queue and queue[0].future.done():  # the caller went away
                gone = queue.popleft()
                self.stats.pending -= 1
                self._resolve(gone, errors.Unavailable("request cancelled by the client"))
        if not self.policy.dynamic:
            for queue in self._ordered():
                if queue:
                    return [queue.popleft()], SINGLE, None
            return [], "", None
        chosen: list[tuple[collections.deque[_Pending], _Pending]] = []
        size = 0
        preferred_at = 0  # number of chosen requests at the largest preferred size seen
        blocked = ""
        first_key: tuple[Any, ...] | None = None
        oldest = None
        for queue in self._ordered():
            for pending in queue:
                if pending.future.done():
                    continue
                if first_key is None:
                    first_key = pending.shape_key
                    oldest = pending.enqueued
                elif pending.shape_key != first_key:
                    blocked = SHAPE
                    break
                if size + pending.batch_size > self.policy.max_batch_size:
                    blocked = FULL
                    break
                chosen.append((queue, pending))
                size += pending.batch_size
                oldest = min(oldest or pending.enqueued, pending.enqueued)
                if size in self.policy.preferred:
                    preferred_at = len(chosen)
            if blocked:
                break
        if not chosen:
            return [], "", None
        if size == self.policy.max_batch_size:
            reason = FULL
        elif preferred_at:
            chosen = chosen[:preferred_at]
            reason = PREFERRED
        elif blocked:
            reason = blocked
        elif self.policy.max_queue_delay_us == 0:
            reason = DRAINED
        else:
            assert oldest is not None
            due = oldest + self.policy.max_queue_delay_us / 1e6
            if now < due:
                return [], "", due
            reason = DELAY
        for queue, pending in chosen:
            queue.remove(pending)
        return [p for _, p in chosen], reason, None

    def _dispatch(self, batch: list[_Pending], reason: str, now: float) -> None:
        instance = self._free.popleft()
        size = sum(p.batch_size for p in batch)
        self.closing_reasons[reason] += 1
        logger.debug(
            "model '%s': batch of %d (%d requests) closed: %s", self.model, size, len(batch), reason
        )
        for pending in batch:
            self.stats.pending -= 1
            self.stats.record_queue(int((now - pending.enqueued) * 1e9))
            self._executing.add(pending)
        task = asyncio.create_task(self._run(instance, batch, size), name=f"execute:{self.model}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, instance: base.ModelInstance, batch: list[_Pending], size: int) -> None:
        outputs = sorted({name for p in batch for name in p.outputs})
        if any(not p.outputs for p in batch):
            outputs = []  # someone wants every output
        try:
            result = await instance.execute([p.inputs for p in batch], outputs)
        except Exception as exc:  # a broken backend must not strand the requests
            logger.exception("model '%s': instance failed a batch of %d", self.model, size)
            failure = errors.ServerError(f"model '{self.model}' failed to execute: {exc}")
            for pending in batch:
                self._resolve(pending, failure)
        else:
            t = result.timings
            self.stats.record_execution(size, len(batch), t.input_ns, t.infer_ns, t.output_ns)
            for pending, outcome in zip(batch, result.results, strict=True):
                if isinstance(outcome, dict) and pending.outputs:
                    outcome = {n: outcome[n] for n in pending.outputs if n in outcome}
                self._resolve(pending, outcome)
        finally:
            self._executing.difference_update(batch)
            self._free.append(instance)
            self._wake.set()

    def _resolve(self, pending: _Pending, outcome: base.Outputs | BaseException) -> None:
        if not self.policy.preserve_ordering:
            self._settle(pending, outcome)
            return
        self._finished[pending.seq] = (pending, outcome)
        while self._next_release in self._finished:
            ready, result = self._finished.pop(self._next_release)
            self._next_release += 1
            self._settle(ready, result)

    def _settle(self, pending: _Pending, outcome: base.Outputs | BaseException) -> None:
        if pending.settled:  # abort() answered it already
            return
        pending.settled = True
        if not pending.future.done():
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        self._release_slot()

    def _release_slot(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

"""Batcher semantics, on a fake clock with small honest fake instances (no real time)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from polyserve_worker import batching, errors, stats
from polyserve_worker.backends import base
from polyserve_worker.clock import FakeClock
from polyserve_worker.tensors import Array


class SumInstance:
    """Sums each request's ``x`` along axis 1; can be held busy by closing its gate."""

    def __init__(self, name: str = "a") -> None:
        self.name = name
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.log: list[tuple[str, list[int]]] = []

    async def execute(
        self, requests: Sequence[Mapping[str, Array]], outputs: Sequence[str]
    ) -> base.ExecuteResult:
        self.batches.append([int(r["x"].shape[0]) for r in requests])
        await self.gate.wait()
        results: list[base.Outputs | errors.PolyserveError] = [
            {"y": r["x"].sum(axis=1, keepdims=True)} for r in requests
        ]
        return base.ExecuteResult(results, base.Timings(1, 2, 3))

    async def close(self) -> None:
        pass


def make(instances: Sequence[Any], clock: FakeClock, **policy: Any) -> batching.Batcher:
    defaults: dict[str, Any] = {"max_batch_size": 8, "dynamic": True}
    defaults.update(policy)
    batcher = batching.Batcher(
        "m", batching.Policy(**defaults), instances, stats.ModelStats("m", "1"), clock
    )
    batcher.start()
    return batcher


def x(value: float, batch: int = 1, width: int = 2) -> dict[str, Array]:
    return {"x": np.full((batch, width), value, dtype=np.float32)}


async def settle() -> None:
    """Let every ready task run (no wall-clock time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


def submit(
    batcher: batching.Batcher, value: float, batch: int = 1, **kw: Any
) -> asyncio.Task[base.Outputs]:
    return asyncio.create_task(batcher.submit(x(value, batch), (), batch, **kw))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_requests_arriving_while_the_instance_is_busy_form_one_batch(
    clock: FakeClock,
) -> None:
    inst = SumInstance()
    inst.gate.clear()
    b = make([inst], clock)
    first = submit(b, 1)
    await settle()
    rest = [submit(b, v) for v in (2, 3, 4)]
    await settle()
    assert inst.batches == [[1]]
    inst.gate.set()
    results = await asyncio.gather(first, *rest)
    assert inst.batches == [[1], [1, 1, 1]]
    assert [float(r["y"][0, 0]) for r in results] == [2.0, 4.0, 6.0, 8.0]
    assert b.closing_reasons[batching.DRAINED] == 2
    await b.stop()


async def test_batch_closes_when_full_without_waiting_for_the_delay(clock: FakeClock) -> None:
    inst = SumInstance()
    b = make([inst], clock, max_batch_size=4, max_queue_delay_us=1_000_000)
    tasks = [submit(b, v) for v in range(4)]
    await asyncio.gather(*tasks)
    assert inst.batches == [[1, 1, 1, 1]]
    assert b.closing_reasons == {batching.FULL: 1}
    await b.stop()


async def test_batch_closes_when_a_preferred_size_is_reached(clock: FakeClock) -> None:
    inst = SumInstance()
    b = make([inst], clock, preferred=(2,), max_queue_delay_us=1_000_000)
    await asyncio.gather(submit(b, 1), submit(b, 2))
    assert inst.batches == [[1, 1]]
    assert b.closing_reasons == {batching.PREFERRED: 1}
    await b.stop()


async def test_batch_waits_for_max_queue_delay_then_closes(clock: FakeClock) -> None:
    inst = SumInstance()
    b = make([inst], clock, max_queue_delay_us=1000)
    task = submit(b, 1)
    await settle()
    clock.advance(0.0005)
    await settle()
    assert inst.batches == []
    second = submit(b, 2)
    await settle()
    clock.advance(0.0006)
    await asyncio.gather(task, second)
    assert inst.batches == [[1, 1]]
    assert b.closing_reasons == {batching.DELAY: 1}
    await b.stop()


async def test_requests_of_different_batch_sizes_combine_and_split_back(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    b = make([inst], clock)
    first = submit(b, 0)
    await settle()
    two = submit(b, 1, batch=2)
    three = submit(b, 2, batch=3)
    await settle()
    inst.gate.set()
    _, r2, r3 = await asyncio.gather(first, two, three)
    assert inst.batches[1] == [2, 3]
    assert r2["y"].shape == (2, 1) and r3["y"].shape == (3, 1)
    assert float(r3["y"][2, 0]) == 4.0
    await b.stop()


async def test_requests_with_other_shapes_never_share_a_batch(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    b = make([inst], clock)
    first = submit(b, 0)
    await settle()
    narrow = asyncio.create_task(b.submit(x(1, width=2), (), 1))
    wide = asyncio.create_task(b.submit(x(1, width=5), (), 1))
    await settle()
    inst.gate.set()
    _, rn, rw = await asyncio.gather(first, narrow, wide)
    assert inst.batches == [[1], [1], [1]]
    assert float(rn["y"][0, 0]) == 2.0 and float(rw["y"][0, 0]) == 5.0
    assert b.closing_reasons[batching.SHAPE] == 1
    await b.stop()


async def test_higher_priority_requests_are_served_first(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    b = make([inst], clock, max_batch_size=1, priority_levels=2, default_priority=2)
    blocker = submit(b, 0)
    await settle()
    low = submit(b, 1)
    high = submit(b, 2, priority=1)
    await settle()
    order: list[str] = []
    low.add_done_callback(lambda _: order.append("low"))
    high.add_done_callback(lambda _: order.append("high"))
    inst.gate.set()
    await asyncio.gather(blocker, low, high)
    assert order == ["high", "low"]
    await b.stop()


async def test_a_full_queue_refuses_with_unavailable(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    policy = {1: batching.QueuePolicy(max_queue_size=1)}
    b = make([inst], clock, queue_policies=policy)
    running = submit(b, 0)
    await settle()
    queued = submit(b, 1)
    await settle()
    with pytest.raises(errors.Unavailable, match="queue for priority 1 is full"):
        await b.submit(x(2), (), 1)
    inst.gate.set()
    await asyncio.gather(running, queued)
    await b.stop()


async def test_requests_that_time_out_in_the_queue_are_rejected(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    policy = {1: batching.QueuePolicy(default_timeout_us=1000)}
    b = make([inst], clock, queue_policies=policy)
    running = submit(b, 0)
    await settle()
    waiting = submit(b, 1)
    await settle()
    clock.advance(0.002)
    await settle()
    with pytest.raises(errors.Unavailable, match="timed out in the queue"):
        await waiting
    inst.gate.set()
    await running
    await b.stop()


async def test_timeout_action_delay_serves_late_requests_after_the_others(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    policy = {1: batching.QueuePolicy(default_timeout_us=1000, timeout_action="DELAY")}
    b = make([inst], clock, max_batch_size=1, queue_policies=policy)
    running = submit(b, 0)
    await settle()
    late = submit(b, 1)
    await settle()
    clock.advance(0.002)
    await settle()
    fresh = submit(b, 2)
    await settle()
    order: list[str] = []
    late.add_done_callback(lambda _: order.append("late"))
    fresh.add_done_callback(lambda _: order.append("fresh"))
    inst.gate.set()
    await asyncio.gather(running, late, fresh)
    assert order == ["fresh", "late"]
    await b.stop()


async def test_requests_delayed_by_a_timeout_still_count_against_max_queue_size(
    clock: FakeClock,
) -> None:
    """Triton's PolicyQueue counts its delayed requests in its size: a DELAY policy must not
    turn max_queue_size into no limit at all."""
    inst = SumInstance()
    inst.gate.clear()
    policy = {
        1: batching.QueuePolicy(default_timeout_us=1000, timeout_action="DELAY", max_queue_size=4)
    }
    b = make([inst], clock, max_batch_size=1, queue_policies=policy)
    running = submit(b, 0)
    await settle()
    late = [submit(b, v) for v in (1, 2, 3, 4)]
    await settle()
    clock.advance(0.002)  # all four time out and are delayed
    await settle()
    with pytest.raises(errors.Unavailable, match="max_queue_size 4"):
        await b.submit(x(5), (), 1)
    assert b.stats.pending == 4
    inst.gate.set()
    await asyncio.gather(running, *late)
    await b.submit(x(6), (), 1)  # room again once they are served
    await b.stop()


async def test_stop_answers_what_is_still_running_at_its_deadline_and_keeps_it(
    clock: FakeClock,
) -> None:
    inst = SumInstance()
    inst.gate.clear()  # never opens: the instance hangs
    b = make([inst], clock, max_batch_size=1)
    running = submit(b, 0)
    await settle()
    queued = submit(b, 1)
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await b.stop(drain_timeout=0.2)
    assert loop.time() - started < 1.0
    for request in (running, queued):
        with pytest.raises(errors.Unavailable, match="stopped before the request finished"):
            await request
    assert b.in_flight == 0
    inst.gate.set()  # let the hung batch end, as a real instance thread would eventually
    await settle()


async def test_request_timeout_overrides_only_when_allowed(clock: FakeClock) -> None:
    for allowed in (True, False):
        inst = SumInstance()
        inst.gate.clear()
        policy = {1: batching.QueuePolicy(allow_timeout_override=allowed)}
        b = make([inst], clock, queue_policies=policy)
        running = submit(b, 0)
        await settle()
        waiting = submit(b, 1, timeout_us=500)
        await settle()
        clock.advance(0.001)
        await settle()
        assert waiting.done() is allowed
        inst.gate.set()
        await running
        if allowed:
            with pytest.raises(errors.Unavailable):
                await waiting
        else:
            await waiting
        await b.stop()


async def test_preserve_ordering_releases_responses_in_arrival_order(clock: FakeClock) -> None:
    slow, fast = SumInstance("slow"), SumInstance("fast")
    slow.gate.clear()
    b = make([slow, fast], clock, max_batch_size=1, preserve_ordering=True)
    first = submit(b, 1)
    await settle()
    second = submit(b, 2)
    await settle()
    assert fast.batches == [[1]]
    assert not second.done()
    slow.gate.set()
    await asyncio.gather(first, second)
    await b.stop()


async def test_without_preserve_ordering_a_fast_instance_answers_first(clock: FakeClock) -> None:
    slow, fast = SumInstance("slow"), SumInstance("fast")
    slow.gate.clear()
    b = make([slow, fast], clock, max_batch_size=1)
    first = submit(b, 1)
    await settle()
    second = await submit(b, 2)
    assert float(second["y"][0, 0]) == 4.0
    assert not first.done()
    slow.gate.set()
    await first
    await b.stop()


async def test_without_dynamic_batching_each_request_runs_alone(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    b = make([inst], clock, dynamic=False)
    tasks = [submit(b, v) for v in range(3)]
    await settle()
    inst.gate.set()
    await asyncio.gather(*tasks)
    assert inst.batches == [[1], [1], [1]]
    assert b.closing_reasons == {batching.SINGLE: 3}
    await b.stop()


async def test_a_cancelled_request_does_not_disturb_its_batch_mates(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    b = make([inst], clock, preserve_ordering=True)
    first = submit(b, 0)
    await settle()
    gone = submit(b, 1)
    kept = submit(b, 2)
    await settle()
    gone.cancel()
    inst.gate.set()
    await first
    assert float((await kept)["y"][0, 0]) == 4.0
    await b.stop()


class NegativeFails(base.BlockingInstance):
    """A blocking 'model' that refuses negative inputs, to pin failures on one request."""

    def __init__(self) -> None:
        super().__init__("neg", batched=True)
        self.runs: list[int] = []

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> base.Outputs:
        self.runs.append(int(inputs["x"].shape[0]))
        if (inputs["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": inputs["x"] * 2}


async def test_a_failure_the_backend_pins_on_one_request_fails_only_that_request(
    clock: FakeClock,
) -> None:
    inst = NegativeFails()
    result = await inst.execute([x(1), x(-1), x(3, batch=2)], [])
    good, bad, other = result.results
    assert isinstance(bad, errors.ServerError) and "negative input" in str(bad)
    assert isinstance(good, dict) and float(good["y"][0, 0]) == 2.0
    assert isinstance(other, dict) and other["y"].shape == (2, 2)
    assert inst.runs == [4, 1, 1, 2]
    await inst.close()


async def test_stop_drains_queued_requests_before_closing(clock: FakeClock) -> None:
    inst = SumInstance()
    inst.gate.clear()
    b = make([inst], clock)
    tasks = [submit(b, v) for v in range(3)]
    await settle()
    stopping = asyncio.create_task(b.stop(drain_timeout=5))
    await settle()
    with pytest.raises(errors.Unavailable, match="shutting down"):
        await b.submit(x(9), (), 1)
    inst.gate.set()
    await stopping
    assert all(t.done() and not t.exception() for t in tasks)


async def test_statistics_record_queue_and_compute(clock: FakeClock) -> None:
    inst = SumInstance()
    b = make([inst], clock)
    await asyncio.gather(submit(b, 1, batch=3))
    assert b.stats.execution_count == 1
    assert b.stats.inference_count == 3
    assert b.stats.batches[3].compute_infer.ns == 2
    assert b.stats.batch_size.observations == 1
    assert b.stats.pending == 0
    await b.stop()

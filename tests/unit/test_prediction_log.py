"""The prediction log's writer, driven directly with a sender of the test's own and an injected sleep: batches of
the configured size, bounded memory whatever the monitor does (drops counted), passing failures sent again,
refusals let go, and `record` never raising or waiting."""

from __future__ import annotations

import asyncio

import pytest

from gateway.serving.prediction_log import PredictionLog
from meshserve.core.errors import ErrorCode, InvalidArgument, MeshError, Unavailable
from meshserve.core.logs import Throttle
from meshserve.monitor.v1 import monitor_pb2


def records(n: int, start: int = 0) -> list[monitor_pb2.PredictionRecord]:
    return [monitor_pb2.PredictionRecord(prediction_id=f"p{i}", route="fraud", score=0.5) for i in
            range(start, start + n)]  # fmt: skip


class Monitor:
    """A sender that records each batch; `failures` are raised first, one per call; `gate` holds every call."""

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.failures = list(failures or [])
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def send(self, batch: list[monitor_pb2.PredictionRecord]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append([r.prediction_id for r in batch])


class Sleeps:
    """asyncio.sleep, recording each pause (and yielding, without waiting)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await asyncio.sleep(0)


async def settle(writer: PredictionLog) -> None:
    assert await writer.flush(5.0), f"still held: {writer.held}"


async def test_records_go_out_in_batches_of_the_configured_size_in_order():
    monitor = Monitor()
    writer = PredictionLog(monitor.send, capacity=100, batch=4)
    writer.record(records(10))  # before the task runs: they wait
    assert writer.held == 10
    writer.run()
    await settle(writer)
    assert monitor.batches == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"], ["p8", "p9"]]
    assert (writer.logged, writer.dropped, writer.failed, writer.held) == (10, 0, 0, 0)
    await writer.close()


async def test_a_batch_leaves_when_full_or_a_moment_after_its_first_record_so_answers_share_calls():
    monitor = Monitor()
    writer = PredictionLog(monitor.send, capacity=100, batch=5, linger_s=0.2)
    writer.run()
    started = asyncio.get_running_loop().time()
    for n in range(3):  # a trickle: they wait for the batch to fill, up to the linger
        writer.record(records(1, start=n))
        await asyncio.sleep(0.01)
    assert monitor.batches == []
    await settle(writer)
    assert monitor.batches == [["p0", "p1", "p2"]]
    assert asyncio.get_running_loop().time() - started >= 0.2
    writer.record(records(5, start=3))  # a whole batch leaves at once: within a few loop turns, no linger
    for _ in range(10):
        await asyncio.sleep(0)
    assert monitor.batches[-1] == ["p3", "p4", "p5", "p6", "p7"]
    await writer.close()


async def test_a_slow_monitor_costs_bounded_memory_and_the_excess_is_dropped_and_counted():
    monitor = Monitor()
    monitor.gate = asyncio.Event()  # the monitor takes no batch until told
    writer = PredictionLog(monitor.send, capacity=10, batch=4, linger_s=0)
    writer.run()
    writer.record(records(3))
    await asyncio.sleep(0)  # the first batch leaves and hangs
    assert monitor.calls == 1
    for n in range(5):  # 3 out + 5 x 3 offered: room for 7 more
        writer.record(records(3, start=3 + 3 * n))
        assert writer.held <= 10
    assert (writer.held, writer.dropped) == (10, 8)
    monitor.gate.set()
    await settle(writer)
    logged = [i for batch in monitor.batches for i in batch]
    assert logged == [f"p{i}" for i in range(10)]  # the first ones kept, the newest dropped
    assert (writer.logged, writer.dropped, writer.failed) == (10, 8, 0)
    await writer.close()


async def test_record_never_waits_for_the_monitor_nor_raises():
    monitor = Monitor()
    monitor.gate = asyncio.Event()
    writer = PredictionLog(monitor.send, capacity=5, batch=2)
    writer.run()
    for _ in range(1000):
        writer.record(records(1))  # sync: would block forever if it waited on the gate
    assert writer.held == 5 and writer.dropped == 995

    def broken():
        yield records(1)[0]
        raise KeyError("model 'gone' is not in the registry")

    writer.record(broken())  # a record that cannot be built costs the answer its log line, nothing else
    assert writer.unreadable == 1
    await writer.close(0.01)


async def test_a_monitor_that_is_down_gets_the_batch_again_after_growing_pauses_and_nothing_is_lost():
    down = [Unavailable("monitor service unavailable: connection refused")] * 5
    monitor = Monitor(down + [MeshError("no answer in time", ErrorCode.DEADLINE_EXCEEDED)])
    sleeps = Sleeps()
    writer = PredictionLog(monitor.send, capacity=100, batch=50, linger_s=0, retry_s=0.1, max_retry_s=1.0,
                           sleep=sleeps, throttle=Throttle(interval_s=3600))  # fmt: skip
    writer.record(records(5))
    writer.run()
    await settle(writer)
    assert monitor.batches == [["p0", "p1", "p2", "p3", "p4"]]
    assert sleeps.pauses == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert (writer.logged, writer.dropped, writer.failed) == (5, 0, 0)
    writer.record(records(1, start=5))  # back up: the pause starts short again
    await settle(writer)
    assert monitor.batches[-1] == ["p5"] and sleeps.pauses[-1] == 1.0 and len(sleeps.pauses) == 6
    await writer.close()


async def test_while_the_monitor_is_down_new_answers_beyond_the_bound_are_dropped_and_counted():
    sleeps = Sleeps()
    monitor = Monitor([Unavailable("down")] * 1000)
    writer = PredictionLog(monitor.send, capacity=8, batch=4, sleep=sleeps)
    writer.run()
    for n in range(20):
        writer.record(records(1, start=n))
        await asyncio.sleep(0)
    assert writer.held == 8 and writer.dropped == 12 and writer.logged == 0
    monitor.failures.clear()  # back
    await settle(writer)
    assert (writer.logged, writer.dropped, writer.failed) == (8, 12, 0)
    await writer.close()


@pytest.mark.parametrize("refusal", [InvalidArgument("record 3: empty prediction_id"), RuntimeError("bug")])
async def test_a_batch_the_monitor_refuses_for_good_is_counted_failed_and_the_log_goes_on(refusal):
    monitor = Monitor([refusal])
    writer = PredictionLog(monitor.send, capacity=100, batch=3, throttle=Throttle(interval_s=3600))
    writer.record(records(5))
    writer.run()
    await settle(writer)
    assert monitor.batches == [["p3", "p4"]]
    assert (writer.logged, writer.failed, writer.dropped) == (2, 3, 0)
    await writer.close()


async def test_close_sends_what_it_can_in_time_and_counts_the_rest_dropped():
    monitor = Monitor()
    writer = PredictionLog(monitor.send, capacity=100, batch=10)
    writer.run()
    writer.record(records(3))
    await writer.close(1.0)
    assert (writer.logged, writer.dropped) == (3, 0)

    stuck = Monitor()
    stuck.gate = asyncio.Event()
    writer = PredictionLog(stuck.send, capacity=100, batch=10)
    writer.run()
    writer.record(records(4))
    await writer.close(0.05)
    assert (writer.logged, writer.dropped, writer.held) == (0, 4, 0)


def test_sizes_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        PredictionLog(Monitor().send, capacity=0)

"""The coalescing primitive, driven directly with a scripted transport and a fake timer: no network, no clock."""

from __future__ import annotations

import asyncio

import pytest

from meshserve.core.coalesce import Coalescer


class Transport:
    """Records every batch sent; each call waits until the test releases it (or answers at once)."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.batches: list[tuple[object, list[object]]] = []
        self.gates: list[asyncio.Future[None]] = []
        self.cancelled = 0
        self.fail_with: BaseException | None = None

    async def send(self, key, items):
        self.batches.append((key, list(items)))
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        if not self.hold:
            gate.set_result(None)
        try:
            await gate
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_with is not None:
            raise self.fail_with
        return [item.upper() if isinstance(item, str) else item for item in items]

    def release(self, n: int = 0) -> None:
        self.gates[n].set_result(None)

    def sizes(self) -> list[int]:
        return [len(items) for _, items in self.batches]


class FakeTimer:
    def __init__(self) -> None:
        self.pending: list[tuple[float, object, FakeHandle]] = []

    def __call__(self, delay, callback):
        handle = FakeHandle()
        self.pending.append((delay, callback, handle))
        return handle

    def fire(self, n: int) -> None:
        _, callback, handle = self.pending[n]
        if not handle.cancelled:
            callback()


class FakeHandle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def turns(n: int = 3) -> None:
    """Let the event loop run a few turns (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_an_idle_target_gets_a_call_at_once():
    transport = Transport()
    coalescer = Coalescer(transport.send, max_in_flight=1)
    assert await coalescer.submit("a") == "A"
    assert transport.batches == [(None, ["a"])]


async def test_members_submitted_in_the_same_turn_leave_together():
    transport = Transport()
    coalescer = Coalescer(transport.send, max_in_flight=4)
    assert await asyncio.gather(*(coalescer.submit(x) for x in "abc")) == ["A", "B", "C"]
    assert transport.batches == [(None, ["a", "b", "c"])]


async def test_while_the_target_is_busy_members_form_a_batch_that_leaves_when_a_slot_frees():
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1)
    first = asyncio.ensure_future(coalescer.submit("a"))
    await turns()
    assert transport.sizes() == [1] and coalescer.in_flight == 1
    later = [asyncio.ensure_future(coalescer.submit(x)) for x in "bcd"]
    await turns()
    assert transport.sizes() == [1] and coalescer.waiting == 3  # nothing else left while the slot was busy
    transport.release(0)
    assert await first == "A"
    await turns()
    assert transport.batches[1] == (None, ["b", "c", "d"])
    transport.release(1)
    assert await asyncio.gather(*later) == ["B", "C", "D"]
    assert coalescer.stats.batches == 2 and coalescer.stats.members == 4 and coalescer.stats.largest == 3


async def test_two_slots_mean_two_batches_in_flight():
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=2)
    tasks = [asyncio.ensure_future(coalescer.submit("a"))]
    await turns()
    tasks.append(asyncio.ensure_future(coalescer.submit("b")))
    await turns()
    tasks += [asyncio.ensure_future(coalescer.submit(x)) for x in "cd"]
    await turns()
    assert transport.sizes() == [1, 1] and coalescer.in_flight == 2 and coalescer.waiting == 2
    transport.release(1)
    await turns()
    assert transport.sizes() == [1, 1, 2]
    transport.release(0)
    transport.release(2)
    assert await asyncio.gather(*tasks) == ["A", "B", "C", "D"]


async def test_batches_never_exceed_the_size_limit_and_a_full_batch_leaves_at_once():
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1, max_size=4)
    blocker = asyncio.ensure_future(coalescer.submit("x"))
    await turns()
    tasks = [asyncio.ensure_future(coalescer.submit(f"m{n}", size=1)) for n in range(9)]
    await turns()
    # the slot is still busy, but two batches filled up and left; the last member waits for a slot
    assert transport.sizes() == [1, 4, 4] and coalescer.waiting == 1
    for gate in range(3):
        transport.release(gate)
    await turns()
    assert transport.sizes() == [1, 4, 4, 1]
    transport.release(3)
    await asyncio.gather(blocker, *tasks)


async def test_a_member_that_does_not_fit_starts_the_next_batch():
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1, max_size=8)
    blocker = asyncio.ensure_future(coalescer.submit("x"))
    await turns()
    big = [asyncio.ensure_future(coalescer.submit(n, size=3)) for n in range(3)]  # 3 + 3 fit, the third not
    await turns()
    assert [items for _, items in transport.batches] == [["x"], [0, 1]]
    for gate in range(2):
        transport.release(gate)
    await turns()
    assert [items for _, items in transport.batches][2] == [2]
    transport.release(2)
    assert await asyncio.gather(*big) == [0, 1, 2]
    await blocker


async def test_members_with_different_keys_never_share_a_batch_nor_wait_for_each_other():
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1)
    blockers = [asyncio.ensure_future(coalescer.submit(x, key=x)) for x in ("A0", "B0")]
    await turns()
    assert transport.batches == [("A0", ["A0"]), ("B0", ["B0"])]  # each key has its own slot
    tasks = [
        asyncio.ensure_future(coalescer.submit(item, key=key))
        for item, key in [("a1", "A0"), ("b1", "B0"), ("a2", "A0"), ("b2", "B0")]
    ]
    await turns()
    assert coalescer.waiting == 4
    transport.release(1)  # B's slot frees first: B's batch leaves, A's keeps waiting for A's slot
    await turns()
    assert transport.batches[2] == ("B0", ["b1", "b2"]) and coalescer.waiting == 2
    transport.release(0)
    await turns()
    assert transport.batches[3] == ("A0", ["a1", "a2"])
    transport.release(2)
    transport.release(3)
    assert await asyncio.gather(*tasks) == ["A1", "B1", "A2", "B2"]
    await asyncio.gather(*blockers)
    assert coalescer.in_flight == 0 and coalescer.waiting == 0


async def test_a_failed_batch_fails_every_member_and_an_item_error_only_its_own():
    transport = Transport()
    transport.fail_with = ConnectionError("target down")
    coalescer = Coalescer(transport.send, max_in_flight=1)
    results = await asyncio.gather(*(coalescer.submit(x) for x in "abc"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and transport.sizes() == [3]

    async def partly(key, items):
        return [ValueError(f"bad {i}") if i == "b" else i for i in items]

    mixed = Coalescer(partly, max_in_flight=1)
    results = await asyncio.gather(*(mixed.submit(x) for x in "abc"), return_exceptions=True)
    assert results[0] == "a" and results[2] == "c" and str(results[1]) == "bad b"


async def test_a_cancelled_member_leaves_a_forming_batch_without_the_others_noticing():
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1)
    blocker = asyncio.ensure_future(coalescer.submit("x"))
    await turns()
    tasks = {x: asyncio.ensure_future(coalescer.submit(x)) for x in "abc"}
    await turns()
    tasks["b"].cancel()
    await turns()
    transport.release(0)
    await turns()
    assert transport.batches[1] == (None, ["a", "c"])
    transport.release(1)
    assert await tasks["a"] == "A" and await tasks["c"] == "C"
    assert tasks["b"].cancelled()
    await blocker


async def test_a_member_leaving_an_in_flight_batch_does_not_cancel_it_but_the_last_one_does():
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1)
    tasks = [asyncio.ensure_future(coalescer.submit(x)) for x in "ab"]
    await turns()
    tasks[0].cancel()
    await turns()
    assert transport.cancelled == 0  # b still waits for the answer
    tasks[1].cancel()
    await turns()
    assert transport.cancelled == 1 and coalescer.stats.abandoned == 1  # nobody waits: the work is stopped
    assert coalescer.in_flight == 0


async def test_a_member_out_of_time_gets_timeout_error_and_the_batch_goes_on():
    timer = FakeTimer()
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1, timer=timer)
    quick = asyncio.ensure_future(coalescer.submit("a", timeout_s=0.01))
    patient = asyncio.ensure_future(coalescer.submit("b", timeout_s=5.0))
    await turns()
    assert [delay for delay, _, _ in timer.pending] == [0.01, 5.0]
    timer.fire(0)
    with pytest.raises(TimeoutError):
        await quick
    assert transport.cancelled == 0
    transport.release(0)
    assert await patient == "B"
    assert timer.pending[1][2].cancelled  # the patient member's timer was stopped with its answer
    assert coalescer.stats.expired == 1


async def test_a_member_out_of_time_while_forming_is_not_sent():
    timer = FakeTimer()
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1, timer=timer)
    blocker = asyncio.ensure_future(coalescer.submit("x"))
    await turns()
    late = asyncio.ensure_future(coalescer.submit("a", timeout_s=0.01))
    kept = asyncio.ensure_future(coalescer.submit("b"))
    await turns()
    timer.fire(0)
    with pytest.raises(TimeoutError):
        await late
    transport.release(0)
    await turns()
    assert transport.batches[1] == (None, ["b"])
    transport.release(1)
    assert await kept == "B"
    await blocker


async def test_a_batch_abandoned_before_it_ever_ran_gives_its_slot_back():
    # Under overload a member's time can run out in the very turn its batch leaves: the batch's task is then
    # cancelled before its first step, and its coroutine never runs. The slot must still come back.
    timer = FakeTimer()
    transport = Transport()
    coalescer = Coalescer(transport.send, max_in_flight=1, timer=timer)
    doomed = asyncio.ensure_future(coalescer.submit("a", timeout_s=0.01))
    await asyncio.sleep(0)  # the member joins; its batch is to leave at the end of the turn
    await asyncio.sleep(0)  # it leaves: its task exists but has not taken a step
    assert coalescer.in_flight == 1 and not transport.batches
    timer.fire(0)
    with pytest.raises(TimeoutError):
        await doomed
    await turns()
    assert coalescer.in_flight == 0 and coalescer.stats.abandoned == 1
    assert await asyncio.wait_for(coalescer.submit("b"), 1.0) == "B"  # the key sends again


async def test_enqueue_and_drain_for_write_behind():
    transport = Transport(hold=True)
    coalescer = Coalescer(transport.send, max_in_flight=1)
    first = coalescer.enqueue("a")
    await turns()
    rest = [coalescer.enqueue(x) for x in "bc"]
    assert coalescer.waiting == 2
    drained = asyncio.ensure_future(coalescer.drain())
    await turns()
    assert transport.sizes() == [1, 2]  # drain sends what is forming without waiting for the slot
    transport.release(0)
    transport.release(1)
    await drained
    assert first.result() == "A" and [f.result() for f in rest] == ["B", "C"]


def test_limits_are_checked():
    async def send(key, items):
        return items

    with pytest.raises(ValueError, match="max_in_flight"):
        Coalescer(send, max_in_flight=0)
    with pytest.raises(ValueError, match="max_size"):
        Coalescer(send, max_size=0)

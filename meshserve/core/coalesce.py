"""Opportunistic batching of calls to one target: the primitive every internal client shares. No gRPC here.

Nothing waits on a clock. Members share a batch only when they share a key (what the target can merge). A member
submitted while fewer than `max_in_flight` batches of its key are out leaves at once: at the end of the current
event-loop turn, together with whatever else was submitted for that key in the same turn. While every slot of its
key is busy, it joins the batch forming for the key instead, and that batch leaves the moment a slot frees, or as
soon as it is full. So an idle target sees each call immediately, a busy one sees few, large calls instead of
many small ones, and calls that could never be merged (other keys) never wait for each other.

Each member awaits its own result. A failure of the batch reaches every member; a member that is cancelled or
runs out of its own time leaves without disturbing the others; a batch whose members have all left is cancelled,
so abandoned work stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Coalescer", "CoalescerStats"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

# send(key, items) -> one result per item, in order; a result that is an exception is raised to its member alone
Send = Callable[[K, list[T]], Awaitable[Sequence[R | BaseException]]]
Timer = Callable[[float, Callable[[], None]], asyncio.TimerHandle]


@dataclass(slots=True, eq=False)
class _Member(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[R]
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True, eq=False)
class _Batch(Generic[K, T, R]):
    key: K
    members: list[_Member[T, R]] = field(default_factory=list)
    size: int = 0
    task: asyncio.Task[None] | None = None  # set when the batch leaves


@dataclass(slots=True)
class CoalescerStats:
    batches: int = 0  # sent
    members: int = 0  # in the batches sent
    largest: int = 0  # most members in one batch
    abandoned: int = 0  # batches cancelled because every member had left
    expired: int = 0  # members that ran out of time


class Coalescer(Generic[K, T, R]):
    """Batches calls to one target. `max_in_flight` is per key; `max_size` bounds a batch by the members' sizes
    (e.g. rows)."""

    def __init__(
        self,
        send: Send[K, T, R],
        *,
        max_in_flight: int = 1,
        max_size: int | None = None,
        timer: Timer | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self._send = send
        self.max_in_flight = max_in_flight
        self.max_size = max_size
        self._timer = timer  # injectable for tests; default: the running loop's call_later
        self._forming: dict[K, _Batch[K, T, R]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy: dict[K, int] = {}  # batches in flight, per key
        self._flush_scheduled: set[K] = set()
        self.stats = CoalescerStats()

    @property
    def in_flight(self) -> int:
        """Batches out, every key together."""
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        """Members in batches that have not left yet."""
        return sum(len(batch.members) for batch in self._forming.values())

    async def submit(self, item: T, *, key: K = None, size: int = 1, timeout_s: float | None = None) -> R:  # type: ignore[assignment]
        """The result for `item`. TimeoutError once `timeout_s` has passed without one (the batch goes on)."""
        batch, member = self._join(item, key, size, timeout_s)
        try:
            return await member.future
        except asyncio.CancelledError:
            self._leave(batch, member)
            raise
        finally:
            if member.timer is not None:
                member.timer.cancel()

    def enqueue(self, item: T, *, key: K = None, size: int = 1) -> asyncio.Future[R]:  # type: ignore[assignment]
        """Submit without waiting (write-behind): the future holds the result or the batch's failure."""
        return self._join(item, key, size, None)[1].future

    async def drain(self) -> None:
        """Send everything still forming, whatever the slots, and wait until no batch is in flight."""
        for batch in list(self._forming.values()):
            self._launch(batch)
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))

    # -- internals ------------------------------------------------------------------------------------
    def _join(
        self, item: T, key: K, size: int, timeout_s: float | None
    ) -> tuple[_Batch[K, T, R], _Member[T, R]]:
        loop = asyncio.get_running_loop()
        member: _Member[T, R] = _Member(item, size, loop.create_future())
        batch = self._forming.get(key)
        if batch is not None and self.max_size is not None and batch.size + size > self.max_size:
            self._launch(batch)  # it cannot grow by this member: it is as full as it gets
            batch = None
        if batch is None:
            batch = self._forming[key] = _Batch(key)
        batch.members.append(member)
        batch.size += size
        if timeout_s is not None:
            call_later = self._timer or loop.call_later
            member.timer = call_later(max(timeout_s, 0.0), lambda: self._expire(batch, member))
        if self.max_size is not None and batch.size >= self.max_size:
            self._launch(batch)
        elif self._busy.get(key, 0) < self.max_in_flight and key not in self._flush_scheduled:
            # "At once" is the end of this loop turn: members submitted in the same turn leave together.
            self._flush_scheduled.add(key)
            loop.call_soon(self._flush, key)
        return batch, member

    def _flush(self, key: K) -> None:
        self._flush_scheduled.discard(key)
        batch = self._forming.get(key)
        if batch is not None and self._busy.get(key, 0) < self.max_in_flight:
            self._launch(batch)

    def _launch(self, batch: _Batch[K, T, R]) -> None:
        if self._forming.get(batch.key) is batch:
            del self._forming[batch.key]
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        # Book-keeping in a done callback, not in _run: a task cancelled before its first step never runs its
        # coroutine at all (a `finally` there would leak the slot, and the key would never send again).
        batch.task.add_done_callback(lambda task: self._finished(batch, task))
        self._in_flight.add(batch.task)
        self._busy[batch.key] = self._busy.get(batch.key, 0) + 1
        self.stats.batches += 1
        self.stats.members += len(batch.members)
        self.stats.largest = max(self.stats.largest, len(batch.members))

    async def _run(self, batch: _Batch[K, T, R]) -> None:
        members = batch.members
        try:
            results = await self._send(batch.key, [m.item for m in members])
            if len(results) != len(members):
                raise RuntimeError(f"batch of {len(members)} answered with {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - every member gets the batch's failure
            for member in members:
                _settle(member.future, exc)
        else:
            for member, result in zip(members, results, strict=True):
                _settle(member.future, result)

    def _finished(self, batch: _Batch[K, T, R], task: asyncio.Task[None]) -> None:
        if task.cancelled():
            for member in batch.members:
                member.future.cancel()
        self._in_flight.discard(task)
        left = self._busy[batch.key] - 1
        if left:
            self._busy[batch.key] = left
        else:
            del self._busy[batch.key]  # no key is remembered once its traffic stops
        self._flush(batch.key)  # a slot is free: the batch forming behind this one leaves now

    def _leave(self, batch: _Batch[K, T, R], member: _Member[T, R]) -> None:
        if batch.task is None:  # still forming: it leaves without this member
            if member in batch.members:
                batch.members.remove(member)
                batch.size -= member.size
            if not batch.members and self._forming.get(batch.key) is batch:
                del self._forming[batch.key]
        elif not batch.task.done() and all(m.future.done() for m in batch.members):
            self.stats.abandoned += 1
            batch.task.cancel()  # nobody waits for this work any more

    def _expire(self, batch: _Batch[K, T, R], member: _Member[T, R]) -> None:
        if member.future.done():
            return
        self.stats.expired += 1
        member.future.set_exception(TimeoutError())
        member.future.exception()  # retrieved: a write-behind member has no one awaiting it
        self._leave(batch, member)


def _settle(future: asyncio.Future[Any], result: object) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
        future.exception()  # marked retrieved: a member that has left must not warn about it
    else:
        future.set_result(result)

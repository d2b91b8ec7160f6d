"""Load generators, bounded in count and time: a closed loop (N workers back to back) and an open loop (a fixed
arrival rate, latency measured from each request's scheduled time, so queueing shows instead of hiding)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["LoadResult", "Send", "closed_loop", "open_loop"]

# a request: its sequence number in, whether the mesh's cache answered it out
Send = Callable[[int], Awaitable[bool]]


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    cache_hits: int = 0
    elapsed_s: float = 0.0
    first_error: str | None = None

    def record(self, started: float, outcome: bool | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.errors += 1
            self.first_error = self.first_error or f"{type(outcome).__name__}: {outcome}"[:300]
            return
        self.latencies_s.append(time.perf_counter() - started)
        self.cache_hits += outcome


async def _one(send: Send, n: int) -> bool | BaseException:
    try:
        return await send(n)
    except Exception as exc:  # counted and reported, never fatal to the run
        return exc


async def closed_loop(send: Send, concurrency: int, duration_s: float, sequence: Iterator[int]) -> LoadResult:
    """Run `concurrency` workers back to back for `duration_s`; in-flight requests finish (and count)."""
    result = LoadResult()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            result.record(sent, await _one(send, next(sequence)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    return result


async def open_loop(
    send: Send, rate_rps: float, duration_s: float, sequence: Iterator[int], max_in_flight: int = 4096
) -> LoadResult:
    """Start a request every 1/`rate_rps` seconds for `duration_s`, whatever the answers do. Requests that would
    exceed `max_in_flight` are counted as errors rather than started (the load stays bounded)."""
    result = LoadResult()
    interval = 1.0 / rate_rps
    start = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, n: int) -> None:
        result.record(scheduled, await _one(send, n))

    for k in range(int(duration_s * rate_rps)):
        scheduled = start + k * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_in_flight:
            result.record(scheduled, RuntimeError(f"more than {max_in_flight} requests in flight"))
            continue
        task = asyncio.create_task(one(scheduled, next(sequence)))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    result.elapsed_s = time.perf_counter() - start
    return result

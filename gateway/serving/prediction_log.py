"""The prediction log's writer: answers go to the monitor service behind the reply, in batches, by one task.

`record()` is synchronous and never raises: a caller's answer never waits for the log and never fails because of
it. A batch leaves once it is full, or `linger_s` after its first record: a call to the monitor costs about as
much CPU as a request, so under load many answers share one call, and when idle a record waits briefly. At most `capacity` records are held (queued, or in the batch being sent); a record that finds no room is
dropped and counted, so a monitor that is slow or down costs bounded memory and nothing else. A batch the
monitor could not take for a passing reason (unavailable, out of time, overloaded) is sent again after a pause
that grows while it stays down (the monitor keeps the first of each (prediction id, variant), so a repeat is
harmless); a batch it refuses for good is counted as failed and let go. No gRPC here: the sender raises
MeshErrors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from meshserve.core.errors import ErrorCode, MeshError
from meshserve.core.logs import Throttle
from meshserve.monitor.v1 import monitor_pb2

__all__ = ["PredictionLog"]

log = logging.getLogger(__name__)

Send = Callable[[list[monitor_pb2.PredictionRecord]], Awaitable[object]]
Sleep = Callable[[float], Awaitable[None]]
# The monitor may take the batch later: it is kept and sent again
PASSING = frozenset({
    ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.CANCELLED,
})  # fmt: skip


class PredictionLog:
    def __init__(
        self,
        send: Send,
        *,
        capacity: int = 10_000,
        batch: int = 1000,
        linger_s: float = 0.5,
        retry_s: float = 0.2,
        max_retry_s: float = 5.0,
        sleep: Sleep = asyncio.sleep,
        throttle: Throttle | None = None,
    ) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError(f"capacity and batch must be at least 1, got {capacity} and {batch}")
        self._send = send
        self.capacity = capacity
        self.batch = batch
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self._sleep = sleep
        self._throttle = throttle or Throttle()
        self._queue: deque[monitor_pb2.PredictionRecord] = deque()
        self._sending: list[monitor_pb2.PredictionRecord] = []  # the batch out (or waiting to be sent again)
        self._wake = asyncio.Event()  # set while records wait to be sent
        self._idle = asyncio.Event()  # set while nothing is held
        self._idle.set()
        self._full = asyncio.Event()  # set once a whole batch is queued (or the log is closing)
        self._task: asyncio.Task[None] | None = None
        self.logged = 0  # taken by the monitor
        self.dropped = 0  # never sent: no room while the monitor was slow or down, or still held at close
        self.failed = 0  # refused by the monitor for good (not a passing failure)
        self.unreadable = (
            0  # answers whose record could not be built (e.g. a route naming an output its model lacks)
        )

    @property
    def held(self) -> int:
        """Records in memory: queued, or in the batch being sent."""
        return len(self._queue) + len(self._sending)

    def record(self, records: Iterable[monitor_pb2.PredictionRecord]) -> None:
        """Queue `records` for the monitor; returns at once and never raises. `records` may be a generator: it is
        run here, and if building a record fails, that answer goes unlogged (counted), never the request."""
        room = self.capacity - self.held
        added = 0
        try:
            for record in records:
                if added < room:
                    self._queue.append(record)
                    added += 1
                else:
                    self.dropped += 1
        except Exception as exc:  # noqa: BLE001 - the log must never fail an answer
            self.unreadable += 1
            if (held := self._throttle("unreadable")) is not None:
                log.warning("answer not logged: its record could not be built",
                            extra={"error": str(exc), "since_last": held})  # fmt: skip
        if added:
            self._idle.clear()
            self._wake.set()
            if len(self._queue) >= self.batch:
                self._full.set()

    def run(self) -> None:
        """Start sending (in the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="prediction-log")

    async def _drain(self) -> None:
        delay = self.retry_s
        while True:
            if not self._sending:
                if not self._queue:
                    self._wake.clear()
                    self._idle.set()
                    await self._wake.wait()
                    continue
                await self._gather()
                take = min(self.batch, len(self._queue))
                self._sending = [self._queue.popleft() for _ in range(take)]
            if await self._send_batch():
                delay = self.retry_s
            else:
                await self._sleep(delay)
                delay = min(delay * 2, self.max_retry_s)

    async def _gather(self) -> None:
        """Until a whole batch is queued, or for `linger_s` at most."""
        if len(self._queue) >= self.batch or self.linger_s <= 0:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self.linger_s)

    async def _send_batch(self) -> bool:
        """Send the batch out; False when it is kept for another try."""
        batch = self._sending
        try:
            await self._send(batch)
        except MeshError as exc:
            if exc.code in PASSING:
                self._warn(
                    "prediction log: the monitor did not take a batch; kept, sent again", exc, len(batch)
                )
                return False
            self._warn("prediction log: the monitor refused a batch; not logged", exc, len(batch))
            self.failed += len(batch)
        except Exception:  # noqa: BLE001 - a bug here must not stop the log for good
            log.exception("prediction log: sending a batch failed", extra={"records": len(batch)})
            self.failed += len(batch)
        else:
            self.logged += len(batch)
        self._sending = []
        return True

    def _warn(self, message: str, exc: MeshError, records: int) -> None:
        if (held := self._throttle(message)) is not None:
            log.warning(message, extra={"code": exc.code.name, "error": exc.message, "records": records,
                                        "held": self.held, "since_last": held})  # fmt: skip

    async def flush(self, timeout_s: float) -> bool:
        """Wait (up to `timeout_s`) until nothing is held; True if so."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float = 2.0) -> None:
        """Send what is held, for up to `timeout_s`; what is still held then is dropped (counted)."""
        if self._task is not None:
            self.linger_s = 0.0  # what is held leaves now
            self._full.set()
            await self.flush(timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.dropped += self.held
        self._queue.clear()
        self._sending = []

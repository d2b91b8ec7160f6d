"""The audit log: every change to live routes, and every admin request refused, appended as one JSON line to a
file that outlives the process. `who` is the authenticated principal's name; `peer` the caller's address.

With a control store (`shared`), the store holds the log every replica reads: route changes go into it in the same
transaction as the table they change; other entries (refusals, rollouts stopped) are queued and flushed to it in
the background, so a store outage never fails the call that audits. The local file still gets every entry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshserve.core.context import current_peer

if TYPE_CHECKING:
    from gateway.control.plane import ControlStore

# entries held for the store while it is down; the oldest are dropped (the local file keeps them)
PENDING_MAX = 10_000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: str
    who: str
    action: str
    route: str
    before: object
    after: object
    reason: str = ""
    peer: str = ""  # the caller's address, where the change came through the admin API
    method: str = ""  # the RPC refused, for action "denied"


class AuditLog:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.shared: ControlStore | None = None
        self._pending: deque[AuditEntry] = deque(maxlen=PENDING_MAX)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def entry(
        self,
        who: str,
        action: str,
        route: str,
        before: object,
        after: object,
        reason: str = "",
        *,
        peer: str | None = None,
        method: str = "",
    ) -> AuditEntry:
        """An entry stamped now, not yet written anywhere."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        peer = current_peer() if peer is None else peer  # the admin call being handled, if any
        return AuditEntry(stamp, who, action, route, before, after, reason, peer, method)

    def record(self, entry: AuditEntry) -> None:
        """Write `entry` to the local file only (the control store already has it)."""
        with self.path.open("a") as f:  # one small write per change: rare, and must survive a crash
            f.write(json.dumps(asdict(entry), sort_keys=True) + "\n")

    def append(
        self,
        who: str,
        action: str,
        route: str,
        before: object,
        after: object,
        reason: str = "",
        *,
        peer: str | None = None,
        method: str = "",
    ) -> AuditEntry:
        entry = self.entry(who, action, route, before, after, reason, peer=peer, method=method)
        self.record(entry)
        if self.shared is not None:
            self._pending.append(entry)
            self._wake.set()
        return entry

    def denied(self, who: str, method: str, reason: str, peer: str) -> AuditEntry:
        """A refused request (UNAUTHENTICATED / PERMISSION_DENIED): who (as far as known), what, why, from where."""
        return self.append(who, "denied", "", None, None, reason, peer=peer, method=method)

    def tail(self, limit: int) -> list[AuditEntry]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()[-limit:]
        return [AuditEntry(**json.loads(line)) for line in lines if line.strip()]

    async def recent(self, limit: int) -> list[AuditEntry]:
        """The last `limit` entries: the shared log where there is a control store, else this process's file."""
        if self.shared is None:
            return self.tail(limit)
        await self.flush()
        return [AuditEntry(**e) for e in await self.shared.audit_tail(limit)]

    async def flush(self) -> None:
        """Write the queued entries to the store; they stay queued if it fails (ControlStoreUnavailable)."""
        while self._pending and self.shared is not None:
            batch = list(self._pending)
            await self.shared.append_audit([asdict(e) for e in batch])
            for _ in batch:
                self._pending.popleft()

    async def _flush_loop(self, retry_s: float) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the store is down: entries wait (the watcher logs the outage)
                await asyncio.sleep(retry_s)
                self._wake.set()

    def run(self, retry_s: float = 1.0) -> None:
        if self.shared is not None:
            self._task = asyncio.create_task(self._flush_loop(retry_s), name="audit-flush")
            if self._pending:
                self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            with contextlib.suppress(Exception):  # best effort: the local file has them all
                await asyncio.wait_for(self.flush(), 1.0)


FEEDBACK_COUNTS = ("requests", "labels", "accepted", "duplicates", "corrected", "pending", "refused", "failed",
                   "denied")  # fmt: skip


class FeedbackAudit:
    """Labels are audited in bulk: one entry per caller per minute (action `feedback`) with the minute's counts,
    never one per label. Counting is in memory; a minute's entries are written once it is over (by `flush`,
    which counting calls on the next minute's first request, and the gateway calls every few seconds)."""

    def __init__(
        self, audit: AuditLog, clock: Callable[[], float] = time.time, period_s: float = 60.0
    ) -> None:
        self.audit = audit
        self.clock = clock
        self.period_s = period_s
        self._period: int | None = None  # the period being counted
        self._counts: dict[str, dict[str, int]] = {}  # caller -> counts
        self._task: asyncio.Task[None] | None = None

    def count(self, who: str, **counts: int) -> None:
        """Add to `who`'s counts for the current minute (FEEDBACK_COUNTS names them)."""
        with contextlib.suppress(OSError):  # an unwritable audit file never fails the feedback it counts
            self.flush()
        tally = self._counts.get(who)
        if tally is None:
            tally = self._counts[who] = dict.fromkeys(FEEDBACK_COUNTS, 0)
        for name, value in counts.items():
            tally[name] += value

    def flush(self, force: bool = False) -> list[AuditEntry]:
        """Write the entries of a minute that is over (every minute counted so far with `force`)."""
        period = int(self.clock() // self.period_s)
        if self._period == period and not force:
            return []
        written = []
        if self._counts:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((self._period or period) * self.period_s))
            for who, tally in sorted(self._counts.items()):
                written.append(self.audit.append(
                    who, "feedback", "", None, {"since": since, **tally},
                    f"{tally['labels']} labels in {tally['requests']} requests", peer="", method="SendFeedback",
                ))  # fmt: skip
                # written: should the file fail for a later caller, only the rest wait for the next try
                del self._counts[who]
        self._period = period
        return written

    async def _flush_loop(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                self.flush()
            except OSError:  # the audit file is not writable: the counts are kept for the next try
                pass

    def run(self, every_s: float = 5.0) -> None:
        self._task = asyncio.create_task(self._flush_loop(every_s), name="feedback-audit")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):
            self.flush(force=True)

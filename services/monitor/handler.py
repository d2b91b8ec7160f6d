"""The monitor as plain async logic over a store: log predictions, take labels, report quality, compare a canary
with its baseline, export. No gRPC here; the clock is injected so the grace period and retention are testable.

Upkeep (pending labels past their grace period counted unknown and dropped; records past retention or beyond
`max_records` dropped oldest first) runs from the calls themselves, at most once per `upkeep_interval_s` on the
clock or every `prune_every` records written, and from the service's periodic task when nothing is called."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from meshserve.core.errors import InvalidArgument, ResourceExhausted
from meshserve.quality import Comparison
from services.monitor import evaluation
from services.monitor.evaluation import Criterion, VariantReport
from services.monitor.feedback import (
    NO_ROUTE,
    FeedbackResult,
    plan_feedback,
    resolve_pending,
)
from services.monitor.records import ExportedRow, IncomingLabel, Logged, Record, StoredLabel, Task
from services.monitor.store import MonitorStore
from services.monitor.validation import validate_records

EXPORT_ROWS_PER_CHUNK = 5000
DEFAULT_ALPHA = 0.05
RECORD_OUTCOMES = ("stored", "duplicate", "dropped_retention")
LABEL_OUTCOMES = ("accepted", "duplicate", "corrected", "pending", "unknown", "refused")


@dataclass(frozen=True, slots=True)
class LogResult:
    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class RouteQuality:
    route: str
    variants: list[VariantReport]
    feedback: dict[str, int]  # FeedbackCounts: accepted, duplicates, corrected, pending, unknown, refused


@dataclass(frozen=True, slots=True)
class ExportChunk:
    rows: list[ExportedRow]
    feature_names: list[str]  # on the first chunk only


class MonitorHandler:
    def __init__(
        self,
        store: MonitorStore,
        *,
        retention_s: float,
        max_records: int,
        label_grace_s: float,
        max_records_per_request: int,
        min_labels: int = 200,
        clock: Callable[[], float] = time.time,
        feature_order: Callable[[str], Sequence[str]] = lambda model: (),
        upkeep_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self.max_records = max_records
        self.label_grace_s = label_grace_s
        self.max_per_request = max_records_per_request
        self.min_labels = min_labels
        self.clock = clock
        self.feature_order = feature_order  # a model's input features, in the registry's order
        self.upkeep_interval_s = upkeep_interval_s
        # records over max_records are tolerated for at most this many writes (amortised pruning)
        self.prune_every = max(1, min(10_000, max_records // 100))
        self.records: Counter[str] = Counter()  # RECORD_OUTCOMES since start (Prometheus counters)
        self.labels: Counter[str] = Counter()  # LABEL_OUTCOMES since start
        self._next_upkeep = -math.inf
        self._written_since_prune = 0
        self._upkeep_lock = asyncio.Lock()
        # Log writes and label writes one at a time: a label planned as pending while its record is being
        # stored would otherwise wait in vain. (Between replicas on Redis, expiry joins such a label instead.)
        self._lock = asyncio.Lock()

    # -- upkeep ---------------------------------------------------------------------------------------
    async def upkeep(self, force: bool = False) -> None:
        now = self.clock()
        due = now >= self._next_upkeep or self._written_since_prune >= self.prune_every
        if not (force or due) or self._upkeep_lock.locked():
            return
        async with self._upkeep_lock, self._lock:
            self._next_upkeep = now + self.upkeep_interval_s
            self._written_since_prune = 0
            expired = await self.store.expire_pending(now - self.label_grace_s)
            self.labels["unknown"] += expired.unknown
            if expired.waiting:  # their records came while they were being sent (another replica's write)
                await self._resolve(expired.waiting, expired.arrived)
            self.records["dropped_retention"] += await self.store.prune(
                now - self.retention_s, self.max_records
            )

    async def _resolve(self, waiting: dict[str, StoredLabel], arrived: dict[str, Logged]) -> None:
        resolution = resolve_pending(waiting, arrived)
        await self.store.resolve_pending(resolution.joined, resolution.refused, resolution.counts)
        self.labels["refused"] += len(resolution.refused)

    def admit(self, count: int, what: str = "records") -> None:
        """Refuse an oversized request before any work on it."""
        if count > self.max_per_request:
            raise ResourceExhausted(f"{count} {what} in one request; the limit is {self.max_per_request}")

    # -- the log --------------------------------------------------------------------------------------
    async def log_predictions(self, records: Sequence[Record]) -> LogResult:
        self.admit(len(records))
        validate_records(records)
        if not records:
            return LogResult(0, 0)
        now = self.clock()
        records = [r if r.time else dataclasses.replace(r, time=now) for r in records]
        async with self._lock:
            added = await self.store.add_records(records)
            if added.waiting:
                await self._resolve(added.waiting, added.arrived)
        self.records["stored"] += added.stored
        self.records["duplicate"] += len(records) - added.stored
        self._written_since_prune += added.stored
        await self.upkeep()
        return LogResult(added.stored, len(records) - added.stored)

    # -- labels ---------------------------------------------------------------------------------------
    async def send_feedback(self, labels: Sequence[IncomingLabel], correct: bool) -> FeedbackResult:
        self.admit(len(labels), "labels")
        await self.upkeep()
        if not labels:
            return FeedbackResult()
        async with self._lock:  # what the plan reads is still so when it writes (in this process)
            stored, logged = await self.store.labels_for([x.prediction_id for x in labels])
            plan = plan_feedback(labels, correct, stored, logged, self.clock())
            await self.store.put_labels(plan.writes, plan.counts)
        result = plan.result
        self.labels.update(
            accepted=result.accepted,
            duplicate=result.duplicates,
            corrected=result.corrected,
            pending=result.pending,
            refused=len(result.refused),
        )
        return result

    # -- quality --------------------------------------------------------------------------------------
    def _since(self, window_s: float, since: float) -> float:
        if not (math.isfinite(window_s) and window_s >= 0):
            raise InvalidArgument(f"window_s {window_s} must be a number of seconds, 0 or more")
        if not (math.isfinite(since) and since >= 0):
            raise InvalidArgument(f"since {since} must be a Unix time, 0 or more")
        if since > 0:
            return since
        return self.clock() - window_s if window_s > 0 else 0.0

    async def quality(self, route: str, window_s: float = 0.0, since: float = 0.0) -> RouteQuality:
        """Per (variant, model, version, shadow) of a route, over predictions answered in the window. Feedback
        counts are the route's plus those no route can claim (labels that never found their prediction,
        malformed ones, repeats of a pending label): one route in a mesh sees all of its labels' fate."""
        if not route:
            raise InvalidArgument("route is empty")
        start = self._since(window_s, since)
        await self.upkeep()
        rows = await self.store.joined(route, start)
        reports = await asyncio.to_thread(evaluation.variant_reports, rows) if len(rows) else []
        counts = await self.store.counts([route, NO_ROUTE])
        feedback = {
            outcome: counts.get((route, outcome), 0) + counts.get((NO_ROUTE, outcome), 0)
            for outcome in ("accepted", "duplicates", "corrected", "unknown", "refused")
        }
        feedback["pending"] = await self.store.pending_count()
        return RouteQuality(route, reports, feedback)

    async def routes(self) -> list[str]:
        return await self.store.routes()

    # -- the judge's question -------------------------------------------------------------------------
    async def compare(
        self,
        route: str,
        baseline: str,
        canary: str,
        since: float,
        criteria: Sequence[Criterion],
        alpha: float = 0.0,
        paired: bool = False,
    ) -> list[tuple[Criterion, Comparison]]:
        for name, value in (("route", route), ("baseline", baseline), ("canary", canary)):
            if not value:
                raise InvalidArgument(f"{name} is empty")
        if baseline == canary:
            raise InvalidArgument(f"baseline and canary are both {baseline!r}")
        alpha = alpha or DEFAULT_ALPHA
        if not 0 < alpha < 1:
            raise InvalidArgument(f"alpha {alpha} must lie in (0, 1)")
        for c in criteria:
            if c.metric not in evaluation.METRICS:
                raise InvalidArgument(
                    f"unknown metric {c.metric!r} in criteria; known: {', '.join(evaluation.METRICS)}"
                )
            if c.metric == "auc" and not (math.isfinite(c.limit) and 0 <= c.limit < 1):
                raise InvalidArgument(f"auc limit {c.limit} must be the largest allowed decrease, in [0, 1)")
            if c.metric == "log_loss" and not (math.isfinite(c.limit) and c.limit > 0):
                raise InvalidArgument(f"log_loss limit {c.limit} must be the largest allowed ratio, above 0")
        start = self._since(0.0, since)
        await self.upkeep()
        rows = await self.store.joined(route, start, [baseline, canary], labelled_only=True)
        if len(rows) and (rows.task != Task.BINARY).any():
            raise InvalidArgument(f"route {route} is not a binary classifier: auc and log_loss need one")
        return await asyncio.to_thread(
            evaluation.compare,
            rows,
            baseline,
            canary,
            list(criteria),
            alpha=alpha,
            paired=paired,
            min_labels=self.min_labels,
        )

    # -- training sets --------------------------------------------------------------------------------
    async def export(self, route: str, since: float, with_labels: bool) -> AsyncIterator[ExportChunk]:
        """Chunks of up to EXPORT_ROWS_PER_CHUNK rows in time order. The first names the features its rows
        carry, in the registry's order of their models' inputs (others after, sorted); a later row may carry
        more (a model whose inputs changed), which its own map holds."""
        if not route:
            raise InvalidArgument("route is empty")
        start = self._since(0.0, since)
        first = True
        async for rows in self.store.export(route, start, with_labels, EXPORT_ROWS_PER_CHUNK):
            yield ExportChunk(rows, self._feature_names(rows) if first else [])
            first = False

    def _feature_names(self, rows: Sequence[ExportedRow]) -> list[str]:
        present: set[str] = set()
        for row in rows:
            present.update(row.features)
        ordered: list[str] = []
        for model in dict.fromkeys(row.model for row in rows if row.features):
            ordered += [name for name in self.feature_order(model) if name in present and name not in ordered]
        return ordered + sorted(present - set(ordered))

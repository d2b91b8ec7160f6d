"""The monitor's store, behind one async contract: SQLite (embedded default, one file) and Redis (shared by
several monitor replicas and gateways, for production). Records are keyed by (prediction id, variant): a repeat
keeps the first. Labels are keyed by prediction id: one label applies to every variant logged under it (the
primary's answer and its shadows'). Retention drops the oldest records first, and the labels of the ids it empties.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.monitor.records import ExportedRow, Logged, Record, Rows, StoredLabel

CountKey = tuple[str, str]  # (route, outcome)


@dataclass(frozen=True, slots=True)
class Added:
    stored: int  # new records; the rest of the batch were repeats
    waiting: dict[str, StoredLabel]  # pending labels of the batch's ids, now that their records are here
    arrived: dict[str, Logged]  # route and task of each of those ids' records


@dataclass(frozen=True, slots=True)
class Expired:
    unknown: int  # pending labels past their grace period with no record: dropped, counted unknown
    waiting: dict[str, StoredLabel]  # past it, but their record is here after all (it came as they were sent)
    arrived: dict[str, Logged]


class MonitorStore(Protocol):
    name: str

    async def add_records(self, records: Sequence[Record]) -> Added: ...
    async def resolve_pending(
        self, joined: Sequence[str], refused: Sequence[str], counts: Mapping[CountKey, int]
    ) -> None: ...
    async def labels_for(self, ids: Sequence[str]) -> tuple[dict[str, StoredLabel], dict[str, Logged]]: ...
    async def put_labels(self, writes: Mapping[str, StoredLabel], counts: Mapping[CountKey, int]) -> None: ...
    async def expire_pending(self, received_before: float) -> Expired: ...
    async def prune(self, older_than: float, max_records: int) -> int: ...
    async def counts(self, routes: Iterable[str]) -> dict[CountKey, int]: ...
    async def pending_count(self) -> int: ...
    async def routes(self) -> list[str]: ...
    async def record_count(self) -> int: ...
    async def joined(
        self, route: str, since: float, variants: Sequence[str] = (), labelled_only: bool = False
    ) -> Rows: ...
    def export(
        self, route: str, since: float, with_labels: bool, page: int
    ) -> AsyncIterator[list[ExportedRow]]: ...
    async def close(self) -> None: ...


def batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

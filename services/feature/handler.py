"""GetOnlineFeatures as plain async logic: validate against the registry, read, and judge freshness."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from meshserve.core.errors import InvalidArgument, NotFound, ResourceExhausted
from meshserve.feature.registry import FeatureRegistry
from services.feature.ingest import IncomingRow, validate_rows
from services.feature.store import OnlineStore


class Status(Enum):
    PRESENT = 1
    NOT_FOUND = 2
    OUTSIDE_MAX_AGE = 3


@dataclass(frozen=True, slots=True)
class FeatureValue:
    value: float | int | None
    status: Status
    event_ts: float | None


@dataclass(frozen=True, slots=True)
class FeatureRows:
    feature_names: list[str]
    rows: list[tuple[str, list[FeatureValue]]]  # (entity key, values aligned with feature_names)


class FeatureHandler:
    def __init__(
        self,
        registry: FeatureRegistry,
        store: OnlineStore,
        max_keys: int,
        clock: Callable[[], float] = time.time,
        on_update: Callable[[str, list[str]], Awaitable[object]] | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.max_keys = max_keys
        self.clock = clock
        self.on_update = on_update  # told (entity, keys) after a write: cached predictions for them are stale
        # per feature: how often each status was served (freshness, exported as metrics)
        self.served: dict[str, dict[Status, int]] = {}

    async def get_online_features(
        self, entity: str, keys: Sequence[str], features: Sequence[str]
    ) -> FeatureRows:
        if entity not in self.registry.entities:
            raise NotFound(f"unknown entity {entity!r}; known: {', '.join(sorted(self.registry.entities))}")
        if len(keys) > self.max_keys:
            raise ResourceExhausted(f"{len(keys)} entity keys in one request; the limit is {self.max_keys}")
        stored = self.registry.stored_by_entity[entity]
        names = list(features) or stored
        for name in names:
            if name not in stored:
                raise InvalidArgument(f"feature {name!r} is not a stored feature of entity {entity!r}")
        if any(not key for key in keys):
            raise InvalidArgument("entity_keys must not contain an empty key")
        found = await self.store.read(entity, list(dict.fromkeys(keys)), names)
        now = self.clock()
        rows = []
        for key in keys:
            values = []
            for name in names:
                hit = found.get((key, name))
                if hit is None:
                    values.append(FeatureValue(None, Status.NOT_FOUND, None))
                    continue
                spec = self.registry.features[name]
                value = int(hit.value) if spec.dtype.startswith("INT") else hit.value
                stale = spec.max_age_s is not None and now - hit.event_ts > spec.max_age_s
                values.append(
                    FeatureValue(value, Status.OUTSIDE_MAX_AGE if stale else Status.PRESENT, hit.event_ts)
                )
            rows.append((key, values))
        for n, name in enumerate(names):
            counts = self.served.setdefault(name, dict.fromkeys(Status, 0))
            for _, values in rows:
                counts[values[n].status] += 1
        return FeatureRows(names, rows)

    async def push(self, entity: str, rows: Sequence[IncomingRow]) -> int:
        """Validate and write one batch, all or nothing; returns the values written."""
        writes = validate_rows(self.registry, entity, rows, now=self.clock())
        written = await self.store.write(entity, writes)
        if self.on_update is not None:
            await self.on_update(entity, sorted({row.entity_key for row in rows}))
        return written

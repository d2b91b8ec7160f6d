"""Online stores behind one async contract: SQLite (embedded default) and Redis (shared by replicas).

Rows are (entity_key, feature, value, event_ts). A write is one transaction: all of a batch lands, or none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from meshserve.core.tls import ClientTls, redis_options

Row = tuple[str, str, float, float]  # entity_key, feature, value, event_ts (seconds since the epoch)


@dataclass(frozen=True, slots=True)
class StoredValue:
    value: float
    event_ts: float


class OnlineStore(Protocol):
    name: str

    async def is_empty(self) -> bool: ...
    async def write(self, entity: str, rows: Iterable[Row]) -> int: ...
    async def read(
        self, entity: str, keys: Sequence[str], features: Sequence[str]
    ) -> dict[tuple[str, str], StoredValue]: ...
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_values (
    entity     TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    feature    TEXT NOT NULL,
    value      REAL NOT NULL,
    event_ts   REAL NOT NULL,
    PRIMARY KEY (entity, entity_key, feature)
) WITHOUT ROWID;
"""


class SqliteStore:
    """Lookups are indexed point reads of microseconds, so they run on the event loop rather than in a thread."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    async def is_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM feature_values LIMIT 1").fetchone() is None

    async def write(self, entity: str, rows: Iterable[Row]) -> int:
        with self._db:  # BEGIN ... COMMIT, or ROLLBACK on any error
            self._db.execute("BEGIN")
            cursor = self._db.executemany(
                "INSERT OR REPLACE INTO feature_values VALUES (?, ?, ?, ?, ?)",
                ((entity, key, feature, value, ts) for key, feature, value, ts in rows),
            )
            return cursor.rowcount

    async def read(
        self, entity: str, keys: Sequence[str], features: Sequence[str]
    ) -> dict[tuple[str, str], StoredValue]:
        if not keys or not features:
            return {}
        query = (
            "SELECT entity_key, feature, value, event_ts FROM feature_values WHERE entity = ? "
            f"AND entity_key IN ({','.join('?' * len(keys))}) AND feature IN ({','.join('?' * len(features))})"
        )
        rows = self._db.execute(query, (entity, *keys, *features))
        return {(key, feature): StoredValue(value, ts) for key, feature, value, ts in rows}

    async def close(self) -> None:
        self._db.close()


class RedisStore:
    """One hash per entity key: `<feature>` holds the value, `<feature>@ts` its event time."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "meshserve:features:", tls: ClientTls | None = None) -> None:
        self.client = aioredis.Redis.from_url(url, **redis_options(url, tls))
        self.prefix = prefix

    def _key(self, entity: str, key: str) -> str:
        return f"{self.prefix}{entity}:{key}"

    async def ping(self) -> None:
        await self.client.ping()

    async def is_empty(self) -> bool:
        async for _ in self.client.scan_iter(match=f"{self.prefix}*", count=100):
            return False
        return True

    async def write(self, entity: str, rows: Iterable[Row]) -> int:
        mappings: dict[str, dict[str, float]] = {}
        count = 0
        for key, feature, value, ts in rows:
            fields = mappings.setdefault(self._key(entity, key), {})
            fields[feature], fields[f"{feature}@ts"] = float(value), float(ts)
            count += 1
        async with self.client.pipeline(transaction=True) as pipe:  # MULTI/EXEC: all or nothing
            for redis_key, fields in mappings.items():
                pipe.hset(redis_key, mapping=fields)
            await pipe.execute()
        return count

    async def read(
        self, entity: str, keys: Sequence[str], features: Sequence[str]
    ) -> dict[tuple[str, str], StoredValue]:
        if not keys or not features:
            return {}
        unique = list(dict.fromkeys(keys))
        fields = [name for feature in features for name in (feature, f"{feature}@ts")]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in unique:
                pipe.hmget(self._key(entity, key), fields)
            replies = await pipe.execute()
        found = {}
        for key, values in zip(unique, replies, strict=True):
            for n, feature in enumerate(features):
                value, ts = values[2 * n], values[2 * n + 1]
                if value is not None and ts is not None:
                    found[(key, feature)] = StoredValue(float(value), float(ts))
        return found

    async def close(self) -> None:
        await self.client.aclose()

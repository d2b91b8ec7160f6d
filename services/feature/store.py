"""The embedded online store: SQLite, one row per (entity, key, feature) with its event time."""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True, slots=True)
class StoredValue:
    value: float
    event_ts: float  # seconds since the epoch


class SqliteStore:
    """Lookups are indexed point reads of microseconds, so they run on the event loop rather than in a thread."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def is_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM feature_values LIMIT 1").fetchone() is None

    def write(self, entity: str, rows: Iterable[tuple[str, str, float, float]]) -> int:
        """Upsert (entity_key, feature, value, event_ts) rows in one transaction; all or nothing."""
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.executemany(
                "INSERT OR REPLACE INTO feature_values VALUES (?, ?, ?, ?, ?)",
                ((entity, key, feature, value, ts) for key, feature, value, ts in rows),
            )
            return cursor.rowcount

    def read(
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

    def close(self) -> None:
        self._db.close()


def load_csv(store: SqliteStore, entity: str, join_key: str, path: Path, event_ts: float) -> int:
    """Load a CSV whose columns are the join key and feature names; every value gets `event_ts`."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [
            (record[join_key], feature, float(value), event_ts)
            for record in reader
            for feature, value in record.items()
            if feature != join_key
        ]
    return store.write(entity, rows)

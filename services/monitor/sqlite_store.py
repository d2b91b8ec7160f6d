"""The embedded store: one SQLite file in WAL mode, so it survives restarts and readers never block the writer.

Every statement runs off the event loop: writes on one thread with their own connection (SQLite has one writer at
a time anyway), reads (quality over a window, export) on another, so a long read never holds up logging."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from services.monitor.feedback import NO_ROUTE
from services.monitor.records import ExportedRow, Logged, Record, Rows, StoredLabel
from services.monitor.store import Added, CountKey, Expired, batches

T = TypeVar("T")
IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's limit on bound parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    prediction_id TEXT NOT NULL,
    variant       TEXT NOT NULL,
    route         TEXT NOT NULL,
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    tier          TEXT NOT NULL,
    time          REAL NOT NULL,
    score         REAL NOT NULL,
    shadow        INTEGER NOT NULL,
    task          INTEGER NOT NULL,
    threshold     REAL NOT NULL,
    features      TEXT,  -- JSON object, only for the sampled share
    UNIQUE (prediction_id, variant)
);
CREATE INDEX IF NOT EXISTS records_by_route ON records (route, time);
CREATE INDEX IF NOT EXISTS records_by_time ON records (time);
CREATE TABLE IF NOT EXISTS labels (
    prediction_id TEXT PRIMARY KEY,
    value         REAL NOT NULL,
    event_time    REAL NOT NULL,
    received      REAL NOT NULL,
    pending       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_labels ON labels (received) WHERE pending = 1;
CREATE TABLE IF NOT EXISTS feedback_counts (
    route   TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (route, outcome)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS routes (route TEXT PRIMARY KEY) WITHOUT ROWID;
"""
_INSERT = "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_COUNT = (
    "INSERT INTO feedback_counts VALUES (?, ?, ?) "
    "ON CONFLICT (route, outcome) DO UPDATE SET count = count + excluded.count"
)
_JOINED = """
SELECT r.prediction_id, r.variant, r.model, r.model_version, r.shadow, r.task, r.threshold, r.time, r.score,
       l.value, CASE WHEN l.event_time > 0 THEN l.event_time ELSE l.received END
FROM records r {join} labels l ON l.prediction_id = r.prediction_id AND l.pending = 0
WHERE r.route = ? AND r.time >= ?
"""
_EXPORT = """
SELECT r.rowid, r.prediction_id, r.variant, r.model_version, r.time, r.score, l.value, r.features, r.shadow,
       r.model
FROM records r {join} labels l ON l.prediction_id = r.prediction_id AND l.pending = 0
WHERE r.route = ? AND (r.time > ? OR (r.time = ? AND r.rowid > ?))
ORDER BY r.time, r.rowid LIMIT ?
"""


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash of the process loses nothing committed
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the id index takes random writes
    # Checkpoint every 64 MiB of WAL rather than 4: a batch dirties about a page of the id index per record, and
    # fewer checkpoints write each page back (and fsync) fewer times: a third of the wall time per record at 400k
    # records, 30 % less CPU. The file is cut back to its limit after a checkpoint.
    db.execute("PRAGMA wal_autocheckpoint=16384")
    db.execute("PRAGMA journal_size_limit=134217728")
    return db


def _row(r: Record) -> tuple:
    features = json.dumps(r.features, separators=(",", ":")) if r.features else None
    return (
        r.prediction_id, r.variant, r.route, r.model, r.model_version, r.tier, r.time, r.score, int(r.shadow),
        int(r.task), r.threshold, features,
    )  # fmt: skip


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._write_db = _connect(path)
        self._write_db.executescript(_SCHEMA)
        # ":memory:" is private to its connection: reads then share the writer's (tests)
        self._read_db = self._write_db if path == ":memory:" else _connect(path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="monitor-sqlite-write")
        self._reader = self._writer if path == ":memory:" else ThreadPoolExecutor(1, "monitor-sqlite-read")
        self._count = self._write_db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def transaction() -> T:
            with self._write_db:  # BEGIN ... COMMIT, or ROLLBACK on any error
                self._write_db.execute("BEGIN")
                return work(self._write_db)

        return await asyncio.get_running_loop().run_in_executor(self._writer, transaction)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, work, self._read_db)

    async def add_records(self, records: Sequence[Record]) -> Added:
        def add(db: sqlite3.Connection) -> Added:
            stored = db.executemany(_INSERT, [_row(r) for r in records]).rowcount
            db.executemany(
                "INSERT OR IGNORE INTO routes VALUES (?)", [(x,) for x in {r.route for r in records}]
            )
            self._count += stored
            if db.execute("SELECT 1 FROM labels WHERE pending = 1 LIMIT 1").fetchone() is None:
                return Added(stored, {}, {})  # the usual case: labels come after their predictions
            waiting = _labels(db, [r.prediction_id for r in records], pending_only=True)
            arrived = {}
            for r in records:
                if r.prediction_id in waiting:
                    arrived.setdefault(r.prediction_id, Logged(r.route, r.task))
            return Added(stored, waiting, arrived)

        return await self._write(add)

    async def resolve_pending(
        self, joined: Sequence[str], refused: Sequence[str], counts: Mapping[CountKey, int]
    ) -> None:
        def resolve(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE labels SET pending = 0 WHERE prediction_id = ?", [(x,) for x in joined])
            db.executemany("DELETE FROM labels WHERE prediction_id = ?", [(x,) for x in refused])
            _add_counts(db, counts)

        await self._write(resolve)

    async def labels_for(self, ids: Sequence[str]) -> tuple[dict[str, StoredLabel], dict[str, Logged]]:
        unique = list(dict.fromkeys(ids))

        def read(db: sqlite3.Connection) -> tuple[dict[str, StoredLabel], dict[str, Logged]]:
            logged: dict[str, Logged] = {}
            for chunk in batches(unique, IN_CHUNK):
                query = (
                    "SELECT prediction_id, route, task FROM records "
                    f"WHERE prediction_id IN ({','.join('?' * len(chunk))}) ORDER BY rowid"
                )
                for pid, route, task in db.execute(query, chunk):
                    logged.setdefault(pid, Logged(route, task))
            return _labels(db, unique, pending_only=False), logged

        # on the writer: what it reads is what the next write builds on
        return await self._write(read)

    async def put_labels(self, writes: Mapping[str, StoredLabel], counts: Mapping[CountKey, int]) -> None:
        def put(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?)",
                [(pid, x.value, x.event_time, x.received, int(x.pending)) for pid, x in writes.items()],
            )
            _add_counts(db, counts)

        await self._write(put)

    async def expire_pending(self, received_before: float) -> Expired:
        def expire(db: sqlite3.Connection) -> Expired:
            expired = db.execute(
                "SELECT prediction_id, value, event_time, received FROM labels WHERE pending = 1 AND received < ?",
                (received_before,),
            ).fetchall()
            if not expired:
                return Expired(0, {}, {})
            arrived: dict[str, Logged] = {}
            for chunk in batches([pid for pid, *_ in expired], IN_CHUNK):
                query = (
                    "SELECT prediction_id, route, task FROM records "
                    f"WHERE prediction_id IN ({','.join('?' * len(chunk))}) ORDER BY rowid"
                )
                for pid, route, task in db.execute(query, chunk):
                    arrived.setdefault(pid, Logged(route, task))
            gone = [(pid,) for pid, *_ in expired if pid not in arrived]
            db.executemany("DELETE FROM labels WHERE prediction_id = ?", gone)
            _add_counts(db, {(NO_ROUTE, "unknown"): len(gone)})
            waiting = {pid: StoredLabel(v, e, r, True) for pid, v, e, r in expired if pid in arrived}
            return Expired(len(gone), waiting, arrived)

        return await self._write(expire)

    async def prune(self, older_than: float, max_records: int) -> int:
        def prune(db: sqlite3.Connection) -> int:
            doomed = db.execute(
                "SELECT rowid, prediction_id FROM records WHERE time < ? ORDER BY time", (older_than,)
            ).fetchall()
            excess = self._count - len(doomed) - max_records
            if excess > 0:
                doomed += db.execute(
                    "SELECT rowid, prediction_id FROM records WHERE time >= ? ORDER BY time LIMIT ?",
                    (older_than, excess),
                ).fetchall()
            if not doomed:
                return 0
            db.executemany("DELETE FROM records WHERE rowid = ?", [(rowid,) for rowid, _ in doomed])
            emptied = [(pid, pid) for pid in {pid for _, pid in doomed}]
            db.executemany(
                "DELETE FROM labels WHERE prediction_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM records WHERE prediction_id = ?)",
                emptied,
            )
            self._count -= len(doomed)
            return len(doomed)

        return await self._write(prune)

    async def counts(self, routes: Iterable[str]) -> dict[CountKey, int]:
        wanted = list(dict.fromkeys(routes))

        def read(db: sqlite3.Connection) -> dict[CountKey, int]:
            query = (
                "SELECT route, outcome, count FROM feedback_counts "
                f"WHERE route IN ({','.join('?' * len(wanted))})"
            )
            return {(route, outcome): n for route, outcome, n in db.execute(query, wanted)}

        return await self._read(read) if wanted else {}

    async def pending_count(self) -> int:
        return await self._read(
            lambda db: db.execute("SELECT COUNT(*) FROM labels WHERE pending = 1").fetchone()[0]
        )

    async def routes(self) -> list[str]:
        return await self._read(
            lambda db: [r for (r,) in db.execute("SELECT route FROM routes ORDER BY route")]
        )

    async def record_count(self) -> int:
        return self._count

    async def joined(
        self, route: str, since: float, variants: Sequence[str] = (), labelled_only: bool = False
    ) -> Rows:
        query = _JOINED.format(join="JOIN" if labelled_only else "LEFT JOIN")
        args: list[object] = [route, since]
        if variants:
            query += f" AND r.variant IN ({','.join('?' * len(variants))})"
            args += variants
        return await self._read(lambda db: Rows.from_tuples(db.execute(query, args).fetchall()))

    async def export(
        self, route: str, since: float, with_labels: bool, page: int
    ) -> AsyncIterator[list[ExportedRow]]:
        query = _EXPORT.format(join="JOIN" if with_labels else "LEFT JOIN")
        after_time, after_rowid = since, -1  # keyset pagination: (time, rowid) of the last row sent
        while True:
            rows = await self._read(
                lambda db, t=after_time, r=after_rowid: db.execute(query, (route, t, t, r, page)).fetchall()
            )
            if not rows:
                return
            after_time, after_rowid = rows[-1][4], rows[-1][0]
            yield [
                ExportedRow(pid, variant, version, time, score, label, json.loads(f) if f else {}, bool(s), m)
                for _, pid, variant, version, time, score, label, f, s, m in rows
            ]
            if len(rows) < page:
                return

    async def close(self) -> None:
        self._writer.shutdown(wait=True)
        if self._reader is not self._writer:
            self._reader.shutdown(wait=True)
            self._read_db.close()
        self._write_db.close()


def _labels(db: sqlite3.Connection, ids: Sequence[str], pending_only: bool) -> dict[str, StoredLabel]:
    found = {}
    for chunk in batches(list(dict.fromkeys(ids)), IN_CHUNK):
        query = (
            "SELECT prediction_id, value, event_time, received, pending FROM labels "
            f"WHERE prediction_id IN ({','.join('?' * len(chunk))})"
            + (" AND pending = 1" if pending_only else "")
        )
        for pid, value, event_time, received, pending in db.execute(query, chunk):
            found[pid] = StoredLabel(value, event_time, received, bool(pending))
    return found


def _add_counts(db: sqlite3.Connection, counts: Mapping[CountKey, int]) -> None:
    db.executemany(_COUNT, [(route, outcome, n) for (route, outcome), n in counts.items() if n])

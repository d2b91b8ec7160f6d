"""One control plane for several gateways: the live route table as one versioned document, and the audit log, in
a store every replica shares (`control_store`: `sqlite:///ABS/PATH` on one machine, `redis://host:port/db`).

Every write is a compare-and-set on the revision, so two admins on two replicas never silently overwrite each
other: the loser re-reads the newer table and applies its change on top. Each replica polls the revision (one
cheap read per `control_poll_s`) and adopts a newer document whole. A store that cannot be reached leaves every
replica serving what it last applied; writes then fail with UNAVAILABLE naming the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.core import GaugeMetricFamily

from meshserve.core.errors import Unavailable
from meshserve.core.logs import Throttle
from meshserve.core.tls import ClientTls, redis_options

__all__ = ["ControlStore", "ControlStoreUnavailable", "RedisStore", "RevisionConflict", "RouteWatcher", "Snapshot",
           "SqliteStore", "WatcherCollector", "describe", "open_store"]  # fmt: skip

log = logging.getLogger(__name__)
AUDIT_MAX = 100_000  # audit entries kept in the store; the oldest go first
STATS_EXPIRE_S = 60  # Redis drops the published outcome buckets this long after the last gateway published


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int  # 0: nothing written yet
    document: dict | None  # {"table": routes-file dict, "change": {...}}; None while the store is empty


class RevisionConflict(Exception):  # noqa: N818 - not an error for callers: the writer re-reads and retries
    """The store's revision is no longer the one the write expected: another replica wrote first."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision is now {revision}")
        self.revision = revision


class ControlStoreUnavailable(Unavailable):  # noqa: N818 - named after the status callers get
    """The control store could not be reached (or answered with an error)."""


def describe(url: str) -> str:
    """The store's URL without credentials: safe in messages and logs."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return url
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


class ControlStore(ABC):
    def __init__(self, url: str) -> None:
        self.name = describe(url)

    def unavailable(self, exc: BaseException) -> ControlStoreUnavailable:
        return ControlStoreUnavailable(
            f"control store {self.name} is unreachable ({type(exc).__name__}: {exc}); the gateway keeps serving "
            "its last applied routes and accepts no changes until it is back"
        )

    @abstractmethod
    async def revision(self) -> int:
        """The current revision: the cheap read replicas poll."""

    @abstractmethod
    async def read(self) -> Snapshot: ...

    @abstractmethod
    async def write(self, expected: int, document: dict, audit: list[dict]) -> int:
        """Store `document` as revision expected + 1, with its audit entries, in one transaction; RevisionConflict
        when the revision is no longer `expected`."""

    @abstractmethod
    async def append_audit(self, entries: list[dict]) -> None: ...

    @abstractmethod
    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease `name` for `holder` for `ttl_s`: True while `holder` has it. A holder that stops
        renewing (it died) loses it when it expires, and the next caller takes it over."""

    @abstractmethod
    async def audit_tail(self, limit: int) -> list[dict]: ...

    @abstractmethod
    async def publish_stats(self, gateway: str, at: float, stats: list) -> None:
        """Store gateway `gateway`'s outcome buckets (VariantStats.export), published at wall time `at`, replacing
        its previous ones."""

    @abstractmethod
    async def read_stats(self, now: float, max_age_s: float) -> dict[str, tuple[float, list]]:
        """Every gateway's buckets published within `max_age_s` of wall time `now`: gateway -> (at, stats). Older
        entries (gateways that died or lost the store) are left out, and dropped from the store."""

    async def close(self) -> None:
        return None


class SqliteStore(ControlStore):
    """An embedded store for gateways on one machine: WAL mode, so readers never block the writer, and every write
    in a BEGIN IMMEDIATE transaction, so two processes serialize on the file's lock."""

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(url)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS control_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
                "revision INTEGER NOT NULL, document TEXT)"
            )
            conn.execute("INSERT OR IGNORE INTO control_state (id, revision, document) VALUES (1, 0, NULL)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS variant_stats (gateway TEXT PRIMARY KEY, at REAL NOT NULL, stats TEXT NOT NULL)"
            )
            self._conn = conn
        return self._conn

    async def _call(self, fn: Callable[[sqlite3.Connection], object]):
        def run():
            with self._lock:
                return fn(self._connection())

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise self.unavailable(exc) from None

    async def revision(self) -> int:
        return await self._call(
            lambda c: c.execute("SELECT revision FROM control_state WHERE id = 1").fetchone()[0]
        )

    async def read(self) -> Snapshot:
        def read(c):
            revision, document = c.execute(
                "SELECT revision, document FROM control_state WHERE id = 1"
            ).fetchone()
            return Snapshot(revision, json.loads(document) if document else None)

        return await self._call(read)

    async def write(self, expected: int, document: dict, audit: list[dict]) -> int:
        text = json.dumps(document, sort_keys=True)

        def write(c):
            c.execute("BEGIN IMMEDIATE")
            try:
                (current,) = c.execute("SELECT revision FROM control_state WHERE id = 1").fetchone()
                if current != expected:
                    raise RevisionConflict(current)
                c.execute(
                    "UPDATE control_state SET revision = ?, document = ? WHERE id = 1", (current + 1, text)
                )
                _insert_audit(c, audit)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
            return current + 1

        return await self._call(write)

    async def append_audit(self, entries: list[dict]) -> None:
        def append(c):
            c.execute("BEGIN IMMEDIATE")
            _insert_audit(c, entries)
            c.execute("COMMIT")

        await self._call(append)

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        def lease(c):
            now = time.time()  # one machine: every process reads the same clock
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(
                    "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "holder = excluded.holder, expires = excluded.expires "
                    "WHERE leases.holder = excluded.holder OR leases.expires < ?",
                    (name, holder, now + ttl_s, now),
                )
                (current,) = c.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
            return current == holder

        return await self._call(lease)

    async def audit_tail(self, limit: int) -> list[dict]:
        rows = await self._call(
            lambda c: c.execute("SELECT entry FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        )
        return [json.loads(entry) for (entry,) in reversed(rows)]

    async def publish_stats(self, gateway: str, at: float, stats: list) -> None:
        text = json.dumps(stats)
        await self._call(
            lambda c: c.execute(
                "INSERT INTO variant_stats (gateway, at, stats) VALUES (?, ?, ?) ON CONFLICT (gateway) DO UPDATE "
                "SET at = excluded.at, stats = excluded.stats",
                (gateway, at, text),
            )
        )

    async def read_stats(self, now: float, max_age_s: float) -> dict[str, tuple[float, list]]:
        def read(c):
            c.execute("DELETE FROM variant_stats WHERE at < ?", (now - max_age_s,))
            return c.execute("SELECT gateway, at, stats FROM variant_stats").fetchall()

        return {gateway: (at, json.loads(text)) for gateway, at, text in await self._call(read)}

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _insert_audit(c: sqlite3.Connection, entries: list[dict]) -> None:
    c.executemany("INSERT INTO audit (entry) VALUES (?)", [(json.dumps(e, sort_keys=True),) for e in entries])
    if entries:
        c.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (AUDIT_MAX,))


# KEYS: the state hash, the audit list. ARGV: expected revision, document, audit entries... One script, so the
# check and the write are one atomic step in Redis.
_CAS = """
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
redis.call('HSET', KEYS[1], 'revision', current + 1, 'document', ARGV[2])
for i = 3, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
if #ARGV >= 3 then redis.call('LTRIM', KEYS[2], -AUDIT_MAX, -1) end
return {1, current + 1}
""".replace("AUDIT_MAX", str(AUDIT_MAX))


# KEYS: the lease. ARGV: holder, ttl in ms. Expiry is Redis's own clock, the same for every replica.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisStore(ControlStore):
    """Redis: the revision and the document in one hash, the audit log in a list."""

    def __init__(self, url: str, prefix: str = "meshserve:control", tls: ClientTls | None = None) -> None:
        import redis.asyncio as aioredis

        super().__init__(url)
        self._errors = (aioredis.RedisError, OSError)
        self._redis = aioredis.Redis.from_url(  # rediss://: our CA and this process's certificate (mTLS)
            url, socket_timeout=1.0, socket_connect_timeout=1.0, **redis_options(url, tls)
        )
        self._state, self._audit = f"{prefix}:routes", f"{prefix}:audit"
        self._cas = self._redis.register_script(_CAS)
        self._lease = self._redis.register_script(_LEASE)
        self._prefix = prefix

    async def _call(self, awaitable: Awaitable):
        try:
            return await awaitable
        except self._errors as exc:
            raise self.unavailable(exc) from None

    async def revision(self) -> int:
        return int(await self._call(self._redis.hget(self._state, "revision")) or 0)

    async def read(self) -> Snapshot:
        revision, document = await self._call(self._redis.hmget(self._state, ["revision", "document"]))
        return Snapshot(int(revision or 0), json.loads(document) if document else None)

    async def write(self, expected: int, document: dict, audit: list[dict]) -> int:
        args = [
            expected,
            json.dumps(document, sort_keys=True),
            *(json.dumps(e, sort_keys=True) for e in audit),
        ]
        written, revision = await self._call(self._cas(keys=[self._state, self._audit], args=args))
        if not written:
            raise RevisionConflict(int(revision))
        return int(revision)

    async def append_audit(self, entries: list[dict]) -> None:
        if entries:
            await self._call(
                self._redis.rpush(self._audit, *(json.dumps(e, sort_keys=True) for e in entries))
            )

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        key = f"{self._prefix}:lease:{name}"
        return bool(await self._call(self._lease(keys=[key], args=[holder, max(1, int(ttl_s * 1000))])))

    async def audit_tail(self, limit: int) -> list[dict]:
        return [json.loads(e) for e in await self._call(self._redis.lrange(self._audit, -limit, -1))]

    async def publish_stats(self, gateway: str, at: float, stats: list) -> None:
        # One hash, a field per gateway; the hash expires once every gateway has stopped publishing.
        key = f"{self._prefix}:stats"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, gateway, json.dumps({"at": at, "stats": stats}))
            pipe.expire(key, STATS_EXPIRE_S)
            await self._call(pipe.execute())

    async def read_stats(self, now: float, max_age_s: float) -> dict[str, tuple[float, list]]:
        key = f"{self._prefix}:stats"
        fresh, stale = {}, []
        for gateway, text in (await self._call(self._redis.hgetall(key))).items():
            entry = json.loads(text)
            if entry["at"] < now - max_age_s:
                stale.append(gateway)
            else:
                fresh[gateway.decode()] = (entry["at"], entry["stats"])
        if stale:
            await self._call(self._redis.hdel(key, *stale))
        return fresh

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str, tls: ClientTls | None = None) -> ControlStore:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise ValueError(f"control store {url!r}: expected sqlite:///ABSOLUTE/PATH")
        # sqlite:///abs/path and sqlite:////abs/path (SQLAlchemy's spelling) name the same absolute path
        return SqliteStore(url, Path("/" + url[len("sqlite:///") :].lstrip("/")))
    if parts.scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, tls=tls)
    raise ValueError(f"control store {describe(url)!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")


class RouteWatcher:
    """Polls the store's revision and calls `sync` when it differs from the one applied here. Tracks whether the
    store answers (the `up` metric) and says so in the log once per outage, then at most every `log_every_s`."""

    def __init__(
        self,
        store: ControlStore,
        applied: Callable[[], int],
        sync: Callable[[], Awaitable[object]],
        interval_s: float = 0.2,
        log_every_s: float = 30.0,
    ) -> None:
        self.store = store
        self.applied = applied
        self.sync = sync
        self.interval_s = interval_s
        self.up = False
        self._throttle = Throttle(log_every_s)
        self._task: asyncio.Task[None] | None = None

    async def poll(self) -> None:
        """One check: adopt a newer (or re-seed an emptied) store. Raises nothing for an unreachable store."""
        try:
            if await self.store.revision() != self.applied():
                await self.sync()
        except ControlStoreUnavailable as exc:
            if (held := self._throttle("down")) is not None:
                log.warning("control store unreachable; serving the last applied routes",
                            extra={"store": self.store.name, "revision": self.applied(), "error": exc.message,
                                   "held_back": held})  # fmt: skip
            self.up = False
            return
        if not self.up:
            log.info("control store reachable", extra={"store": self.store.name, "revision": self.applied()})
            self._throttle = Throttle(self._throttle.interval_s)  # the next outage is logged at once
        self.up = True

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - e.g. a document that does not validate: keep serving, keep watching
                if self._throttle("error") is not None:
                    log.exception("control store sync failed", extra={"store": self.store.name})
            await asyncio.sleep(self.interval_s)

    def run(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="control-store")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class WatcherCollector:
    """`meshserve_gateway_control_store_up` (1 while the store answers), the revision applied here, and whether
    this replica holds the rollout judge's lease."""

    def __init__(self, watcher: RouteWatcher, judging: Callable[[], bool] = lambda: False) -> None:
        self.watcher = watcher
        self.judging = judging

    def collect(self):
        up = GaugeMetricFamily(
            "meshserve_gateway_control_store_up", "1 while the control store answers, else 0"
        )
        up.add_metric([], 1.0 if self.watcher.up else 0.0)
        revision = GaugeMetricFamily(
            "meshserve_gateway_control_store_revision", "revision of the route table this gateway serves"
        )
        revision.add_metric([], float(self.watcher.applied()))
        judge = GaugeMetricFamily(
            "meshserve_gateway_rollout_judge", "1 on the gateway holding the rollout judge's lease, else 0"
        )
        judge.add_metric([], 1.0 if self.judging() else 0.0)
        return [up, revision, judge]

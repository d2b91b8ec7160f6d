"""The shared store: Redis, for several monitor replicas in front of many gateways (production). Its memory is
bounded by `max_records` and retention, like the file's.

Keys under the prefix P (a record's member is `<prediction id>\\x1f<variant>`; ids are printable ASCII):
  P rec             hash   member -> the record's fields after its id and variant, \\x1f-separated (route, model,
                           version, tier, time, score, shadow, task, threshold, features as JSON or empty)
  P t:<route>       zset   member -> time        (a route's window, in time order)
  P all             zset   member -> time        (oldest first, for retention)
  P ids             hash   id -> `<records held>\\x1f<task>\\x1f<route>` (of its first record)
  P labels          hash   id -> `<value>\\x1f<event time>\\x1f<received>`  (joined)
  P pending         hash   id -> the same, for a label whose record has not arrived yet
  P pending_at      zset   id -> received
  P counts:<route>  hash   outcome -> count     (route "" for labels no route can claim)
  P routes          set    routes ever logged
Writes that must see what they change run as Lua scripts (atomic, one round trip a batch). A window is read a
page at a time by a script that joins each record with its label and returns the page as one string: parsing one
reply instead of three elements a row is most of what a read costs here. Names (route, variant, model, version,
tier) hold no control characters (validation refuses them), ids are printable ASCII, and JSON escapes them."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from meshserve.core.errors import Unavailable
from meshserve.core.tls import ClientTls, redis_options
from services.monitor.records import ExportedRow, Logged, Record, Rows, StoredLabel
from services.monitor.store import Added, CountKey, Expired

log = logging.getLogger(__name__)
SEP = "\x1f"  # between fields
REC_END = "\x1e"  # between a record and its label, in a page
ROW_END = "\x1d"  # between rows, in a page
PAGE = 5000  # records read per round trip (under Lua's limit on unpack, about 8000)
PRUNE_LIMIT = 10_000  # records one prune script drops at most (keeps each script short)

# ARGV: one per record, `<id>\x1f<variant>\x1f<record>` (the member, then the record as `P rec` holds it): one
# argument a record, since packing arguments is most of what a batch costs the client. Returns {stored, {id,
# label, ...}} with the pending labels of the records it stored.
_LOG = r"""
local P, stored, waiting = KEYS[1], 0, {}
local any_pending = redis.call('HLEN', P .. 'pending') > 0
for i = 1, #ARGV do
  local arg = ARGV[i]
  local a = string.find(arg, '\31', 1, true)
  local b = string.find(arg, '\31', a + 1, true)
  local id, member, blob = string.sub(arg, 1, a - 1), string.sub(arg, 1, b - 1), string.sub(arg, b + 1)
  if redis.call('HSETNX', P .. 'rec', member, blob) == 1 then
    stored = stored + 1
    local route, t, task = string.match(blob, '^([^\31]*)\31[^\31]*\31[^\31]*\31[^\31]*\31([^\31]*)\31[^\31]*\31[^\31]*\31([^\31]*)')
    redis.call('ZADD', P .. 't:' .. route, t, member)
    redis.call('ZADD', P .. 'all', t, member)
    local held = redis.call('HGET', P .. 'ids', id)
    if held then
      local n, rest = string.match(held, '^(%d+)\31(.*)$')
      redis.call('HSET', P .. 'ids', id, (tonumber(n) + 1) .. '\31' .. rest)
    else
      redis.call('HSET', P .. 'ids', id, '1\31' .. task .. '\31' .. route)
    end
    local label = any_pending and redis.call('HGET', P .. 'pending', id)
    if label then
      waiting[#waiting + 1] = id
      waiting[#waiting + 1] = label
    end
  end
end
return {stored, waiting}
"""
# ARGV: route, lowest time (inclusive), offset, count. Returns {rows, records read, the last time read, how many
# records read had that time}; rows are `<member>\x1f<record>\x1e<label or empty>` joined by \x1d.
_READ = r"""
local P, route = KEYS[1], ARGV[1]
local key = P .. 't:' .. route
local members = redis.call('ZRANGEBYSCORE', key, ARGV[2], '+inf', 'LIMIT', ARGV[3], ARGV[4])
local n = #members
if n == 0 then return {'', 0, '', 0} end
local ids = {}
for i = 1, n do
  local member = members[i]
  ids[i] = string.sub(member, 1, string.find(member, '\31', 1, true) - 1)
end
local records = redis.call('HMGET', P .. 'rec', unpack(members))
local labels = redis.call('HMGET', P .. 'labels', unpack(ids))
local rows = {}
for i = 1, n do
  if records[i] then  -- else dropped by retention since the range was read
    rows[#rows + 1] = members[i] .. '\31' .. records[i] .. '\30' .. (labels[i] or '')
  end
end
-- the last time read, and how many of those read had it (scores only for them: formatting each costs)
local last, ties = redis.call('ZSCORE', key, members[n]), 1
for i = n - 1, 1, -1 do
  if redis.call('ZSCORE', key, members[i]) ~= last then break end
  ties = ties + 1
end
return {table.concat(rows, '\29'), n, last, ties}
"""
# ARGV: joined count, joined ids, then refused ids.
_RESOLVE = r"""
local P, joined = KEYS[1], tonumber(ARGV[1])
for i = 2, #ARGV do
  local id = ARGV[i]
  if i <= joined + 1 then
    local label = redis.call('HGET', P .. 'pending', id)
    if label then redis.call('HSET', P .. 'labels', id, label) end
  end
  redis.call('HDEL', P .. 'pending', id)
  redis.call('ZREM', P .. 'pending_at', id)
end
return 0
"""
# ARGV: received before. Pops the expired pending labels and counts them unknown, exactly once; returns {count,
# {id, label, held, ...}} with those whose record is here after all (left pending, for the caller to resolve).
_EXPIRE = r"""
local P = KEYS[1]
local ids = redis.call('ZRANGEBYSCORE', P .. 'pending_at', '-inf', '(' .. ARGV[1])
local gone, found = 0, {}
for _, id in ipairs(ids) do
  local held = redis.call('HGET', P .. 'ids', id)
  local label = redis.call('HGET', P .. 'pending', id)
  if held and label then
    found[#found + 1] = id
    found[#found + 1] = label
    found[#found + 1] = held
  else
    redis.call('HDEL', P .. 'pending', id)
    redis.call('ZREM', P .. 'pending_at', id)
    gone = gone + 1
  end
end
if gone > 0 then redis.call('HINCRBY', P .. 'counts:', 'unknown', gone) end
return {gone, found}
"""
# ARGV: older than, max records, limit. Drops records past retention, then the oldest beyond max records, and the
# labels of the ids left without a record. Returns how many records it dropped.
_PRUNE = r"""
local P, cutoff, max_records, limit = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local doomed = redis.call('ZRANGEBYSCORE', P .. 'all', '-inf', '(' .. cutoff, 'LIMIT', 0, limit)
local excess = redis.call('ZCARD', P .. 'all') - #doomed - max_records
if excess > 0 and #doomed < limit then
  local more = redis.call('ZRANGE', P .. 'all', #doomed, #doomed + math.min(excess, limit - #doomed) - 1)
  for _, m in ipairs(more) do doomed[#doomed + 1] = m end
end
for _, m in ipairs(doomed) do
  local id = string.sub(m, 1, string.find(m, '\31', 1, true) - 1)
  local blob = redis.call('HGET', P .. 'rec', m)
  if blob then
    redis.call('ZREM', P .. 't:' .. string.match(blob, '^(.-)\31'), m)
    redis.call('HDEL', P .. 'rec', m)
  end
  redis.call('ZREM', P .. 'all', m)
  local held = redis.call('HGET', P .. 'ids', id)
  if held then
    local n, rest = string.match(held, '^(%d+)\31(.*)$')
    n = tonumber(n) - 1
    if n <= 0 then
      redis.call('HDEL', P .. 'ids', id)
      redis.call('HDEL', P .. 'labels', id)
    else
      redis.call('HSET', P .. 'ids', id, n .. '\31' .. rest)
    end
  end
end
return #doomed
"""


DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)  # Redis unreachable (a script's error is a bug: not these)


def _unavailable(exc: BaseException) -> Unavailable:
    log.warning("monitor store unreachable: %s", exc)
    return Unavailable("the monitor's store (Redis) is unavailable; try again")


def _answers(method):
    """The store's coroutine method, with Redis unreachable answered as UNAVAILABLE (callers may retry)."""

    @functools.wraps(method)
    async def call(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except DOWN as exc:
            raise _unavailable(exc) from exc

    return call


def _blob(r: Record) -> str:
    features = json.dumps(r.features, separators=(",", ":")) if r.features else ""
    return SEP.join(
        (r.route, r.model, r.model_version, r.tier, repr(r.time), repr(r.score), "1" if r.shadow else "",
         str(int(r.task)), repr(r.threshold), features)
    )  # fmt: skip


def _label_text(x: StoredLabel) -> str:
    return f"{x.value!r}{SEP}{x.event_time!r}{SEP}{x.received!r}"


def _label(raw: bytes, pending: bool) -> StoredLabel:
    value, event_time, received = raw.decode().split(SEP)
    return StoredLabel(float(value), float(event_time), float(received), pending)


class RedisStore:
    name = "redis"

    def __init__(self, url: str, prefix: str = "meshserve:monitor:", tls: ClientTls | None = None) -> None:
        self.client = aioredis.Redis.from_url(url, **redis_options(url, tls))
        self.prefix = prefix
        self._log = self.client.register_script(_LOG)
        self._resolve = self.client.register_script(_RESOLVE)
        self._expire = self.client.register_script(_EXPIRE)
        self._prune = self.client.register_script(_PRUNE)
        self._read = self.client.register_script(_READ)

    def _key(self, name: str) -> str:
        return self.prefix + name

    async def ping(self) -> None:
        await self.client.ping()

    @_answers
    async def add_records(self, records: Sequence[Record]) -> Added:
        args = [f"{r.prediction_id}{SEP}{r.variant}{SEP}{_blob(r)}" for r in records]
        async with self.client.pipeline(transaction=False) as pipe:
            await self._log(keys=[self.prefix], args=args, client=pipe)
            pipe.sadd(self._key("routes"), *{r.route for r in records})
            (stored, found), _ = await pipe.execute()
        waiting = {found[i].decode(): _label(found[i + 1], pending=True) for i in range(0, len(found), 2)}
        arrived = {}
        for r in records:
            if r.prediction_id in waiting:
                arrived.setdefault(r.prediction_id, Logged(r.route, r.task))
        return Added(int(stored), waiting, arrived)

    def _count(self, pipe, counts: Mapping[CountKey, int]) -> None:
        for (route, outcome), n in counts.items():
            if n:
                pipe.hincrby(self._key(f"counts:{route}"), outcome, n)

    @_answers
    async def resolve_pending(
        self, joined: Sequence[str], refused: Sequence[str], counts: Mapping[CountKey, int]
    ) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            await self._resolve(keys=[self.prefix], args=[len(joined), *joined, *refused], client=pipe)
            self._count(pipe, counts)
            await pipe.execute()

    @_answers
    async def labels_for(self, ids: Sequence[str]) -> tuple[dict[str, StoredLabel], dict[str, Logged]]:
        unique = list(dict.fromkeys(ids))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(self._key("labels"), unique)
            pipe.hmget(self._key("pending"), unique)
            pipe.hmget(self._key("ids"), unique)
            joined, pending, held = await pipe.execute()
        stored, logged = {}, {}
        for pid, j, p, h in zip(unique, joined, pending, held, strict=True):
            if j is not None:
                stored[pid] = _label(j, pending=False)
            elif p is not None:
                stored[pid] = _label(p, pending=True)
            if h is not None:
                _, task, route = h.decode().split(SEP, 2)
                logged[pid] = Logged(route, int(task))
        return stored, logged

    @_answers
    async def put_labels(self, writes: Mapping[str, StoredLabel], counts: Mapping[CountKey, int]) -> None:
        joined = {pid: _label_text(x) for pid, x in writes.items() if not x.pending}
        pending = {pid: _label_text(x) for pid, x in writes.items() if x.pending}
        async with self.client.pipeline(transaction=True) as pipe:
            if joined:
                pipe.hset(self._key("labels"), mapping=joined)
                pipe.hdel(self._key("pending"), *joined)  # in case it waited until now
                pipe.zrem(self._key("pending_at"), *joined)
            if pending:
                pipe.hset(self._key("pending"), mapping=pending)
                pipe.zadd(self._key("pending_at"), {pid: writes[pid].received for pid in pending})
            self._count(pipe, counts)
            await pipe.execute()

    @_answers
    async def expire_pending(self, received_before: float) -> Expired:
        gone, found = await self._expire(keys=[self.prefix], args=[repr(received_before)])
        waiting, arrived = {}, {}
        for i in range(0, len(found), 3):
            pid = found[i].decode()
            waiting[pid] = _label(found[i + 1], pending=True)
            _, task, route = found[i + 2].decode().split(SEP, 2)
            arrived[pid] = Logged(route, int(task))
        return Expired(int(gone), waiting, arrived)

    @_answers
    async def prune(self, older_than: float, max_records: int) -> int:
        total = 0
        while True:
            dropped = int(
                await self._prune(keys=[self.prefix], args=[repr(older_than), max_records, PRUNE_LIMIT])
            )
            total += dropped
            if dropped < PRUNE_LIMIT:
                return total

    @_answers
    async def counts(self, routes: Iterable[str]) -> dict[CountKey, int]:
        wanted = list(dict.fromkeys(routes))
        async with self.client.pipeline(transaction=False) as pipe:
            for route in wanted:
                pipe.hgetall(self._key(f"counts:{route}"))
            replies = await pipe.execute()
        return {
            (route, outcome.decode()): int(n)
            for route, found in zip(wanted, replies, strict=True)
            for outcome, n in found.items()
        }

    @_answers
    async def pending_count(self) -> int:
        return int(await self.client.hlen(self._key("pending")))

    @_answers
    async def routes(self) -> list[str]:
        return sorted(r.decode() for r in await self.client.smembers(self._key("routes")))

    @_answers
    async def record_count(self) -> int:
        return int(await self.client.zcard(self._key("all")))

    async def _pages(self, route: str, since: float) -> AsyncIterator[list[list[str]]]:
        """A route's records answered at or after `since` in time order, a page at a time, each as its fields:
        id, variant, route, model, version, tier, time, score, shadow, task, threshold, features, then the label's
        value, event time and received (or one empty string). Paged by time, ties at a page's edge skipped by
        count."""
        lowest, skip = repr(since), 0
        while True:
            try:
                packed, n, last, ties = await self._read(keys=[self.prefix], args=[route, lowest, skip, PAGE])
            except DOWN as exc:
                raise _unavailable(exc) from exc
            if packed:
                yield [
                    head.split(SEP) + label.split(SEP)
                    for head, label in (row.split(REC_END) for row in packed.decode().split(ROW_END))
                ]
            if n < PAGE:
                return
            last = last.decode()
            skip = skip + ties if float(last) == float(lowest) else ties
            lowest = last

    @_answers
    async def joined(
        self, route: str, since: float, variants: Sequence[str] = (), labelled_only: bool = False
    ) -> Rows:
        wanted = set(variants)
        out = []
        async for page in self._pages(route, since):
            for pid, variant, _, model, version, _, t, score, shadow, task, threshold, _, *label in page:
                if wanted and variant not in wanted:
                    continue
                value = label_time = None
                if len(label) == 3:
                    value, event_time = float(label[0]), float(label[1])
                    label_time = event_time or float(label[2])
                elif labelled_only:
                    continue
                out.append(
                    (pid, variant, model, version, shadow == "1", int(task), float(threshold), float(t),
                     float(score), value, label_time)
                )  # fmt: skip
        return Rows.from_tuples(out)

    async def export(
        self, route: str, since: float, with_labels: bool, page: int
    ) -> AsyncIterator[list[ExportedRow]]:
        chunk: list[ExportedRow] = []
        async for found in self._pages(route, since):
            for pid, variant, _, model, version, _, t, score, shadow, _, _, features, *label in found:
                if with_labels and len(label) != 3:
                    continue
                chunk.append(
                    ExportedRow(
                        pid, variant, version, float(t), float(score), float(label[0]) if len(label) == 3 else None,
                        json.loads(features) if features else {}, shadow == "1", model,
                    )
                )  # fmt: skip
                if len(chunk) == page:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    async def close(self) -> None:
        await self.client.aclose()

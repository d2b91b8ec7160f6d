"""The shared store: Redis, for several monitor replicas in front of many gateways (production). Its memory is
bounded by `max_records` and retention, like the file's.

Keys under the prefix P (a record's member is `<prediction id>\\x1f<variant>`; ids are printable ASCII):
  P rec             hash   member -> `<route>\\x1f<JSON of the rest of the record>`
  P t:<route>       zset   member -> time        (a route's window, in time order)
  P all             zset   member -> time        (oldest first, for retention)
  P ids             hash   id -> `<records held>\\x1f<task>\\x1f<route>` (of its first record)
  P labels          hash   id -> `<value>\\x1f<event time>\\x1f<received>`  (joined)
  P pending         hash   id -> the same, for a label whose record has not arrived yet
  P pending_at      zset   id -> received
  P counts:<route>  hash   outcome -> count     (route "" for labels no route can claim)
  P routes          set    routes ever logged
Writes that must see what they change run as Lua scripts (atomic, one round trip a batch)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

import redis.asyncio as aioredis

from meshserve.core.tls import ClientTls, redis_options
from services.monitor.records import ExportedRow, Logged, Record, Rows, StoredLabel
from services.monitor.store import Added, CountKey

SEP = "\x1f"
PAGE = 10_000  # members read per round trip
PRUNE_LIMIT = 10_000  # records one prune script drops at most (keeps each script short)

# ARGV: count, then per record: id, variant, route, time, task, blob. Returns {stored, {id, label, ...}}.
_LOG = r"""
local P, stored, waiting, pos = KEYS[1], 0, {}, 2
for _ = 1, tonumber(ARGV[1]) do
  local id, variant, route, t, task, blob =
    ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3], ARGV[pos + 4], ARGV[pos + 5]
  pos = pos + 6
  local member = id .. '\31' .. variant
  if redis.call('HSETNX', P .. 'rec', member, blob) == 1 then
    stored = stored + 1
    redis.call('ZADD', P .. 't:' .. route, t, member)
    redis.call('ZADD', P .. 'all', t, member)
    local held = redis.call('HGET', P .. 'ids', id)
    if held then
      local n, rest = string.match(held, '^(%d+)\31(.*)$')
      redis.call('HSET', P .. 'ids', id, (tonumber(n) + 1) .. '\31' .. rest)
    else
      redis.call('HSET', P .. 'ids', id, '1\31' .. task .. '\31' .. route)
    end
    local label = redis.call('HGET', P .. 'pending', id)
    if label then
      waiting[#waiting + 1] = id
      waiting[#waiting + 1] = label
    end
  end
end
return {stored, waiting}
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
# ARGV: received before. Pops the expired pending labels and counts them unknown, exactly once.
_EXPIRE = r"""
local P = KEYS[1]
local ids = redis.call('ZRANGEBYSCORE', P .. 'pending_at', '-inf', '(' .. ARGV[1])
for _, id in ipairs(ids) do
  redis.call('HDEL', P .. 'pending', id)
  redis.call('ZREM', P .. 'pending_at', id)
end
if #ids > 0 then redis.call('HINCRBY', P .. 'counts:', 'unknown', #ids) end
return #ids
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


def _blob(r: Record) -> str:
    rest = [r.model, r.model_version, r.tier, r.time, r.score, r.shadow, int(r.task), r.threshold, r.features]
    return r.route + SEP + json.dumps(rest, separators=(",", ":"))


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

    def _key(self, name: str) -> str:
        return self.prefix + name

    async def ping(self) -> None:
        await self.client.ping()

    async def add_records(self, records: Sequence[Record]) -> Added:
        args: list[str | float | int] = [len(records)]
        for r in records:
            args += [r.prediction_id, r.variant, r.route, repr(r.time), int(r.task), _blob(r)]
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

    async def resolve_pending(
        self, joined: Sequence[str], refused: Sequence[str], counts: Mapping[CountKey, int]
    ) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            await self._resolve(keys=[self.prefix], args=[len(joined), *joined, *refused], client=pipe)
            self._count(pipe, counts)
            await pipe.execute()

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

    async def expire_pending(self, received_before: float) -> int:
        return int(await self._expire(keys=[self.prefix], args=[repr(received_before)]))

    async def prune(self, older_than: float, max_records: int) -> int:
        total = 0
        while True:
            dropped = int(
                await self._prune(keys=[self.prefix], args=[repr(older_than), max_records, PRUNE_LIMIT])
            )
            total += dropped
            if dropped < PRUNE_LIMIT:
                return total

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

    async def pending_count(self) -> int:
        return int(await self.client.hlen(self._key("pending")))

    async def routes(self) -> list[str]:
        return sorted(r.decode() for r in await self.client.smembers(self._key("routes")))

    async def record_count(self) -> int:
        return int(await self.client.zcard(self._key("all")))

    async def _pages(self, route: str, since: float) -> AsyncIterator[list[tuple[str, str, list]]]:
        """A route's records answered at or after `since`, in time order, a page at a time: (id, variant,
        decoded rest of the record) each. Paged by score, ties at a page's edge skipped by count."""
        key, lowest, skip = self._key(f"t:{route}"), repr(since), 0
        while True:
            found = await self.client.zrangebyscore(
                key, lowest, "+inf", start=skip, num=PAGE, withscores=True
            )
            if not found:
                return
            members = [m for m, _ in found]
            blobs = await self.client.hmget(self._key("rec"), members)
            page = []
            for member, blob in zip(members, blobs, strict=True):
                if blob is None:  # dropped by retention since the range was read
                    continue
                pid, variant = member.decode().split(SEP, 1)
                page.append((pid, variant, json.loads(blob[len(route.encode()) + 1 :])))
            yield page
            if len(found) < PAGE:
                return
            last = found[-1][1]
            ties = sum(1 for _, score in found if score == last)
            skip = skip + ties if repr(last) == lowest else ties
            lowest = repr(last)

    async def _labels(self, ids: list[str]) -> list[bytes | None]:
        return await self.client.hmget(self._key("labels"), ids) if ids else []

    async def joined(
        self, route: str, since: float, variants: Sequence[str] = (), labelled_only: bool = False
    ) -> Rows:
        wanted = set(variants)
        out = []
        async for page in self._pages(route, since):
            if wanted:
                page = [x for x in page if x[1] in wanted]
            for (pid, variant, rest), raw in zip(page, await self._labels([x[0] for x in page]), strict=True):
                if raw is None and labelled_only:
                    continue
                model, version, _, time, score, shadow, task, threshold, _ = rest
                label = label_time = None
                if raw is not None:
                    stored = _label(raw, pending=False)
                    label, label_time = stored.value, stored.time
                out.append(
                    (pid, variant, model, version, shadow, task, threshold, time, score, label, label_time)
                )
        return Rows.from_tuples(out)

    async def export(
        self, route: str, since: float, with_labels: bool, page: int
    ) -> AsyncIterator[list[ExportedRow]]:
        chunk: list[ExportedRow] = []
        async for found in self._pages(route, since):
            for (pid, variant, rest), raw in zip(
                found, await self._labels([x[0] for x in found]), strict=True
            ):
                if raw is None and with_labels:
                    continue
                model, version, _, time, score, shadow, _, _, features = rest
                label = _label(raw, pending=False).value if raw is not None else None
                chunk.append(
                    ExportedRow(pid, variant, version, time, score, label, features or {}, shadow, model)
                )
                if len(chunk) == page:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    async def close(self) -> None:
        await self.client.aclose()

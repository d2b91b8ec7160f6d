"""Cache backends behind one contract: the embedded in-memory store and Redis (for several gateway replicas).

A stored key is the caller's key plus the current generation of each of its scopes, so invalidating a scope
(bumping its generation) makes its entries unreachable at once; they age out by TTL or LRU, never by a scan.

A scope's generation is a record `<epoch>.<number>` with a lifetime: it only matters while an entry stored under
it can be alive, and no entry lives longer than `max_ttl_s` (longer TTLs are cut to it). Every Set refreshes the
records of the scopes it stores under to `max_ttl_s + GENERATION_MARGIN_S`, so a record outlives every entry
stored under it; unused records expire (in Redis, or are dropped on write in memory), so memory is bounded by the
scopes in use. A record that is created again, after expiring or being evicted by Redis's LRU, gets a new random
epoch: its numbers restart, but no key stored under the old record can ever match again. A Get of a scope without
a record is a miss without a look: nothing can have been stored under it.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis

from meshserve.core.lru import LruTtlCache
from meshserve.core.tls import ClientTls, redis_options

Lookup = tuple[str, Sequence[str]]  # (key, scopes)
DEFAULT_MAX_TTL_S = 3600.0
GENERATION_MARGIN_S = 60.0  # a record outlives the longest-lived entry stored under it by this much


def scoped_key(key: str, scopes: Sequence[str], generations: dict[str, str]) -> str:
    return key + "@" + ";".join(f"{s}={generations[s]}" for s in sorted(scopes))


@dataclass
class Counters:
    hits: int = 0
    misses: int = 0
    sets: int = 0


class CacheBackend(Protocol):
    name: str
    counters: Counters

    async def get_many(self, lookups: Sequence[Lookup]) -> dict[str, bytes]: ...
    async def set_many(
        self, entries: Sequence[tuple[str, Sequence[str], bytes]], ttl_s: float | None
    ) -> int: ...
    async def delete_many(self, lookups: Sequence[Lookup]) -> int: ...
    async def invalidate(self, scopes: Sequence[str]) -> dict[str, int]: ...
    async def size(self) -> tuple[int, int]: ...  # (entries, bytes); 0 where unknown
    async def close(self) -> None: ...


@dataclass(slots=True)
class _Generation:
    epoch: int
    number: int
    expires_at: float

    @property
    def token(self) -> str:
        return f"{self.epoch}.{self.number}"


class ScopeGenerations:
    """The memory backend's generation records, kept in expiry order (every refresh moves a record to the end),
    so dropping the expired ones on each write costs only what it drops. Reads never write."""

    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._records: OrderedDict[str, _Generation] = OrderedDict()
        self._epochs = itertools.count(1)  # in one process an epoch never repeats

    def __len__(self) -> int:
        return len(self._records)

    def current(self, scopes: Sequence[str]) -> dict[str, str] | None:
        """The live generation of each scope, or None if one has none (nothing is stored under it)."""
        now = self.clock()
        tokens = {}
        for scope in scopes:
            record = self._records.get(scope)
            if record is None or record.expires_at <= now:
                return None
            tokens[scope] = record.token
        return tokens

    def touch(self, scopes: Sequence[str]) -> dict[str, str]:
        """The generations to store under, each record created if missing and its lifetime renewed."""
        return {scope: self._renew(scope, 0).token for scope in scopes}

    def bump(self, scope: str) -> int:
        return self._renew(scope, 1).number

    def _renew(self, scope: str, increment: int) -> _Generation:
        now = self.clock()
        self._drop_expired(now)
        record = self._records.pop(scope, None)
        if record is None:
            record = _Generation(next(self._epochs), increment, 0.0)
        else:
            record.number += increment
        record.expires_at = now + self.lifetime_s
        self._records[scope] = record
        return record

    def _drop_expired(self, now: float) -> None:
        while self._records:
            scope, record = next(iter(self._records.items()))
            if record.expires_at > now:
                return
            del self._records[scope]


@dataclass
class MemoryBackend:
    """The embedded default: bounded by bytes, LRU with TTL, in this process."""

    max_bytes: int
    max_entry_bytes: int
    default_ttl_s: float
    clock: Callable[[], float] = time.monotonic
    max_ttl_s: float = DEFAULT_MAX_TTL_S
    name: str = "memory"
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.store = LruTtlCache(self.max_bytes, self.max_entry_bytes, self.default_ttl_s, self.clock)
        self.generations = ScopeGenerations(self.max_ttl_s + GENERATION_MARGIN_S, self.clock)

    def _resolve(self, lookups: Sequence[Lookup]) -> dict[str, str]:
        """Stored key -> caller's key, for the lookups whose scopes all have a live generation."""
        resolved = {}
        for key, scopes in lookups:
            tokens = self.generations.current(scopes)
            if tokens is not None:
                resolved[scoped_key(key, scopes, tokens)] = key
        return resolved

    async def get_many(self, lookups: Sequence[Lookup]) -> dict[str, bytes]:
        resolved = self._resolve(lookups)
        hits = {resolved[sk]: v for sk, v in self.store.get_many(list(resolved)).items()}
        self.counters.hits += len(hits)
        self.counters.misses += len(lookups) - len(hits)
        return hits

    async def set_many(self, entries: Sequence[tuple[str, Sequence[str], bytes]], ttl_s: float | None) -> int:
        ttl = min(ttl_s or self.default_ttl_s, self.max_ttl_s)
        items = [(scoped_key(k, s, self.generations.touch(s)), v) for k, s, v in entries]
        stored = self.store.set_many(items, ttl)
        self.counters.sets += stored
        return stored

    async def delete_many(self, lookups: Sequence[Lookup]) -> int:
        return self.store.delete_many(self._resolve(lookups))

    async def invalidate(self, scopes: Sequence[str]) -> dict[str, int]:
        return {scope: self.generations.bump(scope) for scope in scopes}

    async def size(self) -> tuple[int, int]:
        return len(self.store), self.store.size

    async def close(self) -> None:
        pass


# Generation records are strings `<epoch>.<number>` under `<prefix>gen:<scope>`, read and renewed inside Redis so
# that a batch costs one round trip. A record written before epochs existed holds a bare number: it reads as an
# epoch-less token and its next bump starts an epoch "" of its own, so the upgrade keeps old entries valid.
_RESOLVE = """
local function resolve(pos)
  local key, n = ARGV[pos], tonumber(ARGV[pos + 1]); pos = pos + 2
  local parts, missing = {}, false
  for _ = 1, n do
    local scope = ARGV[pos]; pos = pos + 1
    local token = redis.call('GET', KEYS[1] .. 'gen:' .. scope)
    if not token then missing = true else parts[#parts + 1] = scope .. '=' .. token end
  end
  if missing then return false, pos end
  return KEYS[1] .. 'v:' .. key .. '@' .. table.concat(parts, ';'), pos
end
"""
_GET = (
    _RESOLVE
    + """
local out, pos = {}, 2
for i = 1, tonumber(ARGV[1]) do
  local stored; stored, pos = resolve(pos)
  out[i] = stored and redis.call('GET', stored) or false
end
return out
"""
)
_DELETE = (
    _RESOLVE
    + """
local deleted, pos = 0, 2
for i = 1, tonumber(ARGV[1]) do
  local stored; stored, pos = resolve(pos)
  if stored then deleted = deleted + redis.call('DEL', stored) end
end
return deleted
"""
)
# ARGV: count, entry ttl ms, record lifetime ms, a fresh epoch, then per entry: key, value, n, n scopes.
_SET = """
local stored, pos = 0, 5
for i = 1, tonumber(ARGV[1]) do
  local key, value, n = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2]); pos = pos + 3
  local parts = {}
  for _ = 1, n do
    local scope = ARGV[pos]; pos = pos + 1
    local record = KEYS[1] .. 'gen:' .. scope
    if not redis.call('SET', record, ARGV[4] .. '.0', 'NX', 'PX', ARGV[3]) then
      redis.call('PEXPIRE', record, ARGV[3])
    end
    parts[#parts + 1] = scope .. '=' .. redis.call('GET', record)
  end
  redis.call('SET', KEYS[1] .. 'v:' .. key .. '@' .. table.concat(parts, ';'), value, 'PX', ARGV[2])
  stored = stored + 1
end
return stored
"""
# ARGV: record lifetime ms, a fresh epoch, then the scopes. Returns each scope's new number.
_INVALIDATE = """
local out = {}
for i = 3, #ARGV do
  local record = KEYS[1] .. 'gen:' .. ARGV[i]
  local token = redis.call('GET', record)
  local epoch, number = ARGV[2], 1
  if token then
    local e, n = string.match(token, '^(.*)%.(%d+)$')
    if e then epoch, number = e, tonumber(n) + 1 else epoch, number = '', tonumber(token) + 1 end
  end
  redis.call('SET', record, epoch .. '.' .. number, 'PX', ARGV[1])
  out[#out + 1] = number
end
return out
"""


def _flatten(lookups: Sequence[Lookup]) -> list[str]:
    args: list[str] = []
    for key, scopes in lookups:
        args += [key, str(len(scopes)), *sorted(scopes)]
    return args


def _epoch() -> str:
    return secrets.token_hex(8)  # 64 random bits: a recreated record never repeats an earlier epoch


class RedisBackend:
    """Shared by every cache-service replica; bound the memory with Redis's own maxmemory + allkeys-lru (an
    evicted generation record only costs misses, see the module's docstring)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        max_entry_bytes: int,
        default_ttl_s: float,
        prefix: str = "meshserve:cache:",
        max_ttl_s: float = DEFAULT_MAX_TTL_S,
        tls: ClientTls | None = None,
    ) -> None:
        self.client = aioredis.Redis.from_url(url, **redis_options(url, tls))
        self.max_entry_bytes = max_entry_bytes
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s
        self.generation_lifetime_ms = int((max_ttl_s + GENERATION_MARGIN_S) * 1000)
        self.prefix = prefix
        self.counters = Counters()
        self._get = self.client.register_script(_GET)
        self._set = self.client.register_script(_SET)
        self._delete = self.client.register_script(_DELETE)
        self._invalidate = self.client.register_script(_INVALIDATE)

    async def ping(self) -> None:
        await self.client.ping()

    async def get_many(self, lookups: Sequence[Lookup]) -> dict[str, bytes]:
        if not lookups:
            return {}
        values = await self._get(keys=[self.prefix], args=[len(lookups), *_flatten(lookups)])
        hits = {key: value for (key, _), value in zip(lookups, values, strict=True) if value is not None}
        self.counters.hits += len(hits)
        self.counters.misses += len(lookups) - len(hits)
        return hits

    async def set_many(self, entries: Sequence[tuple[str, Sequence[str], bytes]], ttl_s: float | None) -> int:
        kept = [(k, s, v) for k, s, v in entries if len(k) + len(v) <= self.max_entry_bytes]
        if not kept:
            return 0
        ttl_ms = max(1, int(min(ttl_s or self.default_ttl_s, self.max_ttl_s) * 1000))
        args: list[str | bytes | int] = [len(kept), ttl_ms, self.generation_lifetime_ms, _epoch()]
        for key, scopes, value in kept:
            args += [key, value, str(len(scopes)), *sorted(scopes)]
        stored = int(await self._set(keys=[self.prefix], args=args))
        self.counters.sets += stored
        return stored

    async def delete_many(self, lookups: Sequence[Lookup]) -> int:
        if not lookups:
            return 0
        return int(await self._delete(keys=[self.prefix], args=[len(lookups), *_flatten(lookups)]))

    async def invalidate(self, scopes: Sequence[str]) -> dict[str, int]:
        if not scopes:
            return {}
        numbers = await self._invalidate(
            keys=[self.prefix], args=[self.generation_lifetime_ms, _epoch(), *scopes]
        )
        return dict(zip(scopes, (int(n) for n in numbers), strict=True))

    async def size(self) -> tuple[int, int]:
        return 0, 0  # Redis's INFO knows; scanning our keys would defeat the point

    async def close(self) -> None:
        await self.client.aclose()

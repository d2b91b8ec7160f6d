"""Cache backends behind one contract: the embedded in-memory store and Redis (for several gateway replicas).

A stored key is the caller's key plus the current generation of each of its scopes, so invalidating a scope
(bumping its generation) makes its entries unreachable at once; they age out by TTL or LRU, never by a scan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis

from meshserve.lru import LruTtlCache

Lookup = tuple[str, Sequence[str]]  # (key, scopes)


def scoped_key(key: str, scopes: Sequence[str], generations: dict[str, int]) -> str:
    return key + "@" + ";".join(f"{s}={generations.get(s, 0)}" for s in sorted(scopes))


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


@dataclass
class MemoryBackend:
    """The embedded default: bounded by bytes, LRU with TTL, in this process."""

    max_bytes: int
    max_entry_bytes: int
    default_ttl_s: float
    clock: Callable[[], float] = time.monotonic
    name: str = "memory"
    counters: Counters = field(default_factory=Counters)
    generations: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = LruTtlCache(self.max_bytes, self.max_entry_bytes, self.default_ttl_s, self.clock)

    async def get_many(self, lookups: Sequence[Lookup]) -> dict[str, bytes]:
        resolved = {scoped_key(k, s, self.generations): k for k, s in lookups}
        hits = {resolved[sk]: v for sk, v in self.store.get_many(list(resolved)).items()}
        self.counters.hits += len(hits)
        self.counters.misses += len(resolved) - len(hits)
        return hits

    async def set_many(self, entries: Sequence[tuple[str, Sequence[str], bytes]], ttl_s: float | None) -> int:
        stored = self.store.set_many(((scoped_key(k, s, self.generations), v) for k, s, v in entries), ttl_s)
        self.counters.sets += stored
        return stored

    async def delete_many(self, lookups: Sequence[Lookup]) -> int:
        return self.store.delete_many(scoped_key(k, s, self.generations) for k, s in lookups)

    async def invalidate(self, scopes: Sequence[str]) -> dict[str, int]:
        for scope in scopes:
            self.generations[scope] = self.generations.get(scope, 0) + 1
        return {scope: self.generations[scope] for scope in scopes}

    async def size(self) -> tuple[int, int]:
        return len(self.store), self.store.size

    async def close(self) -> None:
        pass


# One round trip per batch: generations are read and keys resolved inside Redis.
_GET = """
local out, pos = {}, 2
for i = 1, tonumber(ARGV[1]) do
  local key, n = ARGV[pos], tonumber(ARGV[pos + 1]); pos = pos + 2
  local parts = {}
  for _ = 1, n do
    local scope = ARGV[pos]; pos = pos + 1
    parts[#parts + 1] = scope .. '=' .. (redis.call('GET', KEYS[1] .. 'gen:' .. scope) or '0')
  end
  out[i] = redis.call('GET', KEYS[1] .. 'v:' .. key .. '@' .. table.concat(parts, ';')) or false
end
return out
"""
_SET = """
local stored, pos = 0, 3
for i = 1, tonumber(ARGV[1]) do
  local key, value, n = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2]); pos = pos + 3
  local parts = {}
  for _ = 1, n do
    local scope = ARGV[pos]; pos = pos + 1
    parts[#parts + 1] = scope .. '=' .. (redis.call('GET', KEYS[1] .. 'gen:' .. scope) or '0')
  end
  redis.call('SET', KEYS[1] .. 'v:' .. key .. '@' .. table.concat(parts, ';'), value, 'PX', ARGV[2])
  stored = stored + 1
end
return stored
"""
_DELETE = _GET.replace("redis.call('GET', KEYS[1] .. 'v:'", "redis.call('DEL', KEYS[1] .. 'v:'").replace(
    "or false", "or 0"
)


def _flatten(lookups: Sequence[Lookup]) -> list[str]:
    args: list[str] = []
    for key, scopes in lookups:
        args += [key, str(len(scopes)), *sorted(scopes)]
    return args


class RedisBackend:
    """Shared by every cache-service replica; bound the memory with Redis's own maxmemory + allkeys-lru."""

    name = "redis"

    def __init__(
        self, url: str, max_entry_bytes: int, default_ttl_s: float, prefix: str = "meshserve:cache:"
    ) -> None:
        self.client = aioredis.Redis.from_url(url)
        self.max_entry_bytes = max_entry_bytes
        self.default_ttl_s = default_ttl_s
        self.prefix = prefix
        self.counters = Counters()
        self._get = self.client.register_script(_GET)
        self._set = self.client.register_script(_SET)
        self._delete = self.client.register_script(_DELETE)

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
        args: list[str | bytes | int] = [len(kept), int((ttl_s or self.default_ttl_s) * 1000)]
        for key, scopes, value in kept:
            args += [key, value, str(len(scopes)), *sorted(scopes)]
        stored = int(await self._set(keys=[self.prefix], args=args))
        self.counters.sets += stored
        return stored

    async def delete_many(self, lookups: Sequence[Lookup]) -> int:
        if not lookups:
            return 0
        return sum(
            int(n) for n in await self._delete(keys=[self.prefix], args=[len(lookups), *_flatten(lookups)])
        )

    async def invalidate(self, scopes: Sequence[str]) -> dict[str, int]:
        async with self.client.pipeline(transaction=True) as pipe:
            for scope in scopes:
                pipe.incr(f"{self.prefix}gen:{scope}")
            generations = await pipe.execute()
        return dict(zip(scopes, (int(g) for g in generations), strict=True))

    async def size(self) -> tuple[int, int]:
        return 0, 0  # Redis's INFO knows; scanning our keys would defeat the point

    async def close(self) -> None:
        await self.client.aclose()

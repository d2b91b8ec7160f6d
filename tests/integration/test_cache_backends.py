"""One contract, two backends: the embedded memory store and a real Redis; and, on Redis, scope generations that
expire without ever making an invalidated entry reachable again."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from services.cache.backends import GENERATION_MARGIN_S, MemoryBackend, RedisBackend

SCOPES = ["route:fraud", "model:fraud", "entity:account:acct-1"]


@pytest.fixture(params=["memory", "redis"])
async def backend(request, redis_url):
    if request.param == "memory":
        yield MemoryBackend(max_bytes=1 << 20, max_entry_bytes=1024, default_ttl_s=30)
        return
    redis = RedisBackend(
        redis_url, max_entry_bytes=1024, default_ttl_s=30, prefix=f"test:{time.monotonic_ns()}:"
    )
    yield redis
    await redis.close()


async def test_hit_and_miss_are_counted(backend):
    assert await backend.set_many([("a", SCOPES, b"1"), ("b", [], b"2")], None) == 2
    assert await backend.get_many([("a", SCOPES), ("b", []), ("c", [])]) == {"a": b"1", "b": b"2"}
    assert (backend.counters.hits, backend.counters.misses, backend.counters.sets) == (2, 1, 2)


async def test_entries_expire_after_their_ttl(backend):
    await backend.set_many([("short", [], b"x")], ttl_s=0.2)
    await backend.set_many([("long", [], b"y")], ttl_s=30)
    assert await backend.get_many([("short", []), ("long", [])]) == {"short": b"x", "long": b"y"}
    deadline = time.monotonic() + 5
    while await backend.get_many([("short", [])]):
        assert time.monotonic() < deadline, "entry outlived its TTL"
        await asyncio.sleep(0.05)
    assert await backend.get_many([("long", [])]) == {"long": b"y"}


async def test_invalidating_a_scope_makes_only_its_entries_unreachable(backend):
    await backend.set_many(
        [("p1", ["route:fraud", "entity:account:acct-1"], b"1"), ("p2", ["route:fraud", "entity:account:acct-2"], b"2"),
         ("q", ["route:other"], b"3")], None,
    )  # fmt: skip
    generations = await backend.invalidate(["entity:account:acct-1"])
    assert generations == {"entity:account:acct-1": 1}
    lookups = [("p1", ["route:fraud", "entity:account:acct-1"]), ("p2", ["route:fraud", "entity:account:acct-2"]),
               ("q", ["route:other"])]  # fmt: skip
    assert await backend.get_many(lookups) == {"p2": b"2", "q": b"3"}
    await backend.invalidate(["route:fraud"])
    assert await backend.get_many(lookups) == {"q": b"3"}
    # a new answer under the new generation is reachable again
    await backend.set_many([("p1", ["route:fraud", "entity:account:acct-1"], b"new")], None)
    assert await backend.get_many(lookups[:1]) == {"p1": b"new"}


async def test_scope_order_does_not_matter_and_oversized_entries_are_skipped(backend):
    await backend.set_many([("k", ["b", "a"], b"v"), ("big", [], b"x" * 2000)], None)
    assert await backend.get_many([("k", ["a", "b"]), ("big", [])]) == {"k": b"v"}


async def test_delete(backend):
    await backend.set_many([("k", ["s"], b"v")], None)
    assert await backend.delete_many([("k", ["s"]), ("missing", [])]) == 1
    assert await backend.get_many([("k", ["s"])]) == {}


@pytest.fixture
async def redis_backend(redis_url):
    prefix = f"test:{time.monotonic_ns()}:"
    backend = RedisBackend(redis_url, max_entry_bytes=1024, default_ttl_s=30, prefix=prefix, max_ttl_s=120)
    client = aioredis.Redis.from_url(redis_url)
    yield backend, client, prefix
    await client.aclose()
    await backend.close()


async def test_redis_generation_records_have_a_lifetime_renewed_by_use(redis_backend):
    """`gen:*` keys used to live forever, one per scope ever invalidated."""
    backend, client, prefix = redis_backend
    lifetime_ms = (120 + GENERATION_MARGIN_S) * 1000
    await backend.invalidate(["entity:account:a"])
    await backend.set_many([("k", ["route:fraud"], b"v")], ttl_s=3600)  # cut to max_ttl_s
    for scope in ("entity:account:a", "route:fraud"):
        assert 0 < await client.pttl(f"{prefix}gen:{scope}") <= lifetime_ms
    stored = [key async for key in client.scan_iter(f"{prefix}v:*")]
    assert len(stored) == 1 and 0 < await client.pttl(stored[0]) <= 120_000
    await client.pexpire(f"{prefix}gen:route:fraud", 5_000)
    await backend.set_many([("k2", ["route:fraud"], b"v")], None)  # a Set renews the scope's record
    assert await client.pttl(f"{prefix}gen:route:fraud") > 5_000
    # a Get writes nothing: no record for a scope nothing was stored under
    assert await backend.get_many([("k", ["route:other"])]) == {}
    assert not await client.exists(f"{prefix}gen:route:other")


async def test_an_expired_or_evicted_redis_generation_never_makes_an_invalidated_entry_reachable(
    redis_backend,
):
    backend, client, prefix = redis_backend
    scopes = ["route:fraud", "entity:account:a"]
    assert await backend.invalidate(["route:fraud"]) == {"route:fraud": 1}
    await backend.set_many([("k", scopes, b"stale")], None)
    await client.delete(f"{prefix}gen:route:fraud")  # expired, or evicted by maxmemory's LRU
    assert await backend.get_many([("k", scopes)]) == {}  # no record: nothing can be stored under it
    assert await backend.invalidate(["route:fraud"]) == {"route:fraud": 1}  # numbers restart...
    assert await backend.get_many([("k", scopes)]) == {}  # ...under a new epoch, so the old entry stays gone
    await backend.set_many([("k", scopes, b"fresh")], None)
    assert await backend.get_many([("k", scopes)]) == {"k": b"fresh"}
    assert await backend.delete_many([("k", scopes)]) == 1


async def test_redis_generations_written_before_epochs_keep_their_entries_until_invalidated(redis_backend):
    backend, client, prefix = redis_backend
    await client.set(f"{prefix}gen:route:fraud", "3")  # the old layout: a bare counter, no lifetime
    await client.set(f"{prefix}v:k@route:fraud=3", b"v")
    assert await backend.get_many([("k", ["route:fraud"])]) == {"k": b"v"}
    assert await backend.invalidate(["route:fraud"]) == {"route:fraud": 4}
    assert await backend.get_many([("k", ["route:fraud"])]) == {}
    assert await client.pttl(f"{prefix}gen:route:fraud") > 0  # and it has a lifetime now

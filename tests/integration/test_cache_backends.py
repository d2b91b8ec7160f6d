"""One contract, two backends: the embedded memory store and a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.cache.backends import MemoryBackend, RedisBackend

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

"""The memory cache backend's scope generations with an injected clock: bounded by the scopes in use, renewed by
use, and an invalidated entry never reachable again, whatever expires."""

from __future__ import annotations

from services.cache.backends import GENERATION_MARGIN_S, MemoryBackend, ScopeGenerations


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backend(clock: Clock, max_ttl_s: float = 10.0) -> MemoryBackend:
    return MemoryBackend(
        max_bytes=1 << 24, max_entry_bytes=1024, default_ttl_s=5, clock=clock, max_ttl_s=max_ttl_s
    )


async def test_generations_of_scopes_no_longer_used_expire_so_memory_is_bounded():
    """Each feature update invalidates an entity scope: these used to be kept forever, one per entity."""
    clock = Clock()
    cache = backend(clock)
    lifetime = 10.0 + GENERATION_MARGIN_S
    for second in range(300):
        await cache.invalidate([f"entity:account:{second}-{n}" for n in range(200)])
        await cache.set_many([(f"k{second}", [f"entity:account:{second}-0"], b"v")], None)
        clock.now += 1
    assert (
        len(cache.generations) <= (lifetime + 1) * 200
    )  # the scopes used in the last lifetime, not all 60,000
    assert len(cache.generations) >= lifetime * 200 - 200


async def test_reads_create_no_generation():
    cache = backend(Clock())
    assert await cache.get_many([("k", ["route:fraud", "entity:account:a"])]) == {}
    assert await cache.delete_many([("k", ["route:fraud"])]) == 0
    assert len(cache.generations) == 0


async def test_a_scope_in_use_keeps_its_generation_and_its_invalidations():
    clock = Clock()
    cache = backend(clock)
    await cache.set_many([("old", ["route:fraud"], b"before")], None)
    assert await cache.invalidate(["route:fraud"]) == {"route:fraud": 1}
    for n in range(50):  # ten lifetimes of steady use
        await cache.set_many([(f"k{n}", ["route:fraud"], b"v")], ttl_s=10)
        assert await cache.get_many([(f"k{n}", ["route:fraud"])]) == {f"k{n}": b"v"}
        clock.now += 15
    assert await cache.invalidate(["route:fraud"]) == {"route:fraud": 2}  # counted on, not restarted


async def test_an_expired_generation_never_makes_an_invalidated_entry_reachable():
    clock = Clock()
    cache = backend(clock)
    await cache.invalidate(["route:fraud"])
    await cache.set_many([("k", ["route:fraud"], b"stale")], ttl_s=10_000)  # cut to max_ttl_s
    clock.now += 10 + GENERATION_MARGIN_S + 1  # the generation record has expired...
    assert await cache.invalidate(["route:fraud"]) == {"route:fraud": 1}  # ...and numbers restart
    assert await cache.get_many([("k", ["route:fraud"])]) == {}  # but under a new epoch
    await cache.set_many([("k", ["route:fraud"], b"fresh")], None)
    assert await cache.get_many([("k", ["route:fraud"])]) == {"k": b"fresh"}


async def test_ttls_are_cut_to_the_longest_the_cache_accepts():
    clock = Clock()
    cache = backend(clock, max_ttl_s=10)
    await cache.set_many([("k", [], b"v")], ttl_s=3600)
    clock.now += 9
    assert await cache.get_many([("k", [])]) == {"k": b"v"}
    clock.now += 2
    assert await cache.get_many([("k", [])]) == {}


def test_a_recreated_record_never_repeats_an_earlier_generation():
    clock = Clock()
    generations = ScopeGenerations(lifetime_s=5, clock=clock)
    seen = set()
    for _ in range(20):
        token = generations.touch(["s"])["s"]
        assert token not in seen
        seen.add(token)
        assert generations.current(["s"]) == {"s": token}
        clock.now += 6  # expired before the next use
        assert generations.current(["s"]) is None

from meshserve.core.lru import LruTtlCache


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_hit_then_expiry_after_ttl():
    clock = Clock()
    cache = LruTtlCache(max_bytes=1000, max_entry_bytes=100, default_ttl_s=10, clock=clock)
    assert cache.set_many([("a", b"1")]) == 1
    clock.now += 9.9
    assert cache.get_many(["a", "b"]) == {"a": b"1"}
    clock.now += 0.2
    assert cache.get_many(["a"]) == {}
    assert len(cache) == 0 and cache.size == 0


def test_explicit_ttl_overrides_default():
    clock = Clock()
    cache = LruTtlCache(1000, 100, default_ttl_s=10, clock=clock)
    cache.set_many([("a", b"1")], ttl_s=1)
    clock.now += 1.5
    assert cache.get_many(["a"]) == {}


def test_evicts_least_recently_used_beyond_max_bytes():
    cache = LruTtlCache(max_bytes=3 * 4, max_entry_bytes=100, default_ttl_s=10, clock=Clock())
    cache.set_many([("a", b"111"), ("b", b"222"), ("c", b"333")])  # 4 bytes each
    cache.get_many(["a"])  # a is now the most recent
    cache.set_many([("d", b"444")])
    assert set(cache.get_many(["a", "b", "c", "d"])) == {"a", "c", "d"}
    assert cache.size == 12


def test_oversized_entries_are_skipped_and_delete_counts():
    cache = LruTtlCache(1000, max_entry_bytes=5, default_ttl_s=10, clock=Clock())
    assert cache.set_many([("k", b"12345"), ("ok", b"1")]) == 1
    assert cache.delete_many(["ok", "missing"]) == 1
    assert cache.size == 0


def test_overwrite_replaces_size_accounting():
    cache = LruTtlCache(1000, 100, 10, clock=Clock())
    cache.set_many([("a", b"1")])
    cache.set_many([("a", b"12345")])
    assert cache.size == 6 and cache.get_many(["a"]) == {"a": b"12345"}


def test_writes_drop_expired_entries_so_memory_follows_rate_times_ttl():
    clock = Clock()
    cache = LruTtlCache(max_bytes=10**9, max_entry_bytes=100, default_ttl_s=1.0, clock=clock)
    for n in range(10_000):
        clock.now += 0.01  # 100 writes a second, each living 1 s
        cache.set_many([(f"key-{n}", b"v")])
    assert len(cache) <= 101

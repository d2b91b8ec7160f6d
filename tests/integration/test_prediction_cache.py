"""The prediction cache on the real mesh: version-aware, invalidated on promote/rollback/switch, single-flight
counted from Triton's own statistics, bypassed when down, and shared between gateways through Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from meshserve.admin.v1 import admin_pb2
from meshserve.core.process import free_port
from services.cache.service import CacheService
from services.cache.settings import CacheSettings
from tests.helpers import triton_counts
from tests.integration.gateways import in_process_gateway

ROUTES = """
routes:
  cached:
    cache: {enabled: true, ttl_s: 60}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: canary, model: fraud, version: "2", weight: 0}
"""


async def until_cached(gateway, **predict) -> None:
    """The cache is written after the answer: wait (bounded) until the entry has landed."""
    deadline = time.monotonic() + 5
    while not (await gateway.predict("cached", **predict)).from_cache:
        assert time.monotonic() < deadline, "the answer never reached the cache"
        await asyncio.sleep(0.02)


@pytest.fixture
async def gateway(mesh, tmp_path):
    # near-cache off: these tests look at the shared cache and its invalidation
    async with in_process_gateway(mesh, tmp_path, ROUTES, near_cache_max_bytes=0) as gw:
        yield gw


async def test_no_stale_answer_after_promote_rollback_or_invalidate(gateway):
    first = await gateway.predict("cached", amount=777.0)
    assert (first.variant, first.model_version, first.from_cache) == ("stable", "1", False)
    await until_cached(gateway, amount=777.0)

    await gateway.admin.Promote(admin_pb2.PromoteRequest(route="cached", variant="canary"), timeout=5)
    promoted = await gateway.predict("cached", amount=777.0)
    assert (promoted.variant, promoted.model_version, promoted.from_cache) == ("canary", "2", False)

    await gateway.admin.Rollback(admin_pb2.RollbackRequest(route="cached"), timeout=5)
    rolled_back = await gateway.predict("cached", amount=777.0)
    assert (rolled_back.variant, rolled_back.from_cache) == ("stable", False)  # v1's old entry is unreachable
    assert rolled_back.score == pytest.approx(first.score)

    await until_cached(gateway, amount=777.0)
    await gateway.admin.InvalidateCache(admin_pb2.InvalidateCacheRequest(route="cached"), timeout=5)
    assert not (await gateway.predict("cached", amount=777.0)).from_cache
    stats = (await gateway.admin.CacheStats(admin_pb2.CacheStatsRequest(route="cached"), timeout=5)).routes[0]
    assert stats.hits >= 2 and stats.misses >= 4 and stats.invalidations >= 2 and 0 < stats.hit_ratio < 1


async def test_concurrent_identical_misses_cause_one_inference(mesh, gateway):
    before = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    answers = await asyncio.gather(
        *(gateway.predict("cached", account="acct-00321", amount=4444.5) for _ in range(16))
    )
    after = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    assert after[0] - before[0] == 1  # one row reached Triton for 16 identical requests
    assert len({a.score for a in answers}) == 1
    stats = (await gateway.admin.CacheStats(admin_pb2.CacheStatsRequest(route="cached"), timeout=5)).routes[0]
    # every request but the one that scored was coalesced onto it or, arriving later, answered by the cache; which
    # of the two depends on how fast this machine sends the 16 (coalescing alone: tests/unit/test_coalesce.py)
    assert stats.coalesced + stats.hits == 15


async def test_cache_down_is_bypassed_and_counted(mesh, tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    async with in_process_gateway(mesh, tmp_path, ROUTES, cache_url=dead, near_cache_max_bytes=0) as gw:
        started = time.monotonic()
        answers = [await gw.predict("cached", amount=float(n)) for n in range(10)]
        assert time.monotonic() - started < 5
        assert all(not a.from_cache and a.variant == "stable" for a in answers)
        stats = (await gw.admin.CacheStats(admin_pb2.CacheStatsRequest(route="cached"), timeout=5)).routes[0]
        assert stats.bypasses >= 10


async def test_two_gateways_share_answers_through_a_redis_backed_cache(mesh, tmp_path, redis_url):
    cache = CacheService(CacheSettings(port=0, redis_url=redis_url))
    port = await cache.start()
    try:
        target = f"127.0.0.1:{port}"
        async with (
            in_process_gateway(mesh, tmp_path / "a", ROUTES, cache_url=target, near_cache_max_bytes=0) as a,
            in_process_gateway(mesh, tmp_path / "b", ROUTES, cache_url=target, near_cache_max_bytes=0) as b,
        ):
            first = await a.predict("cached", account="acct-00555", amount=12.25)
            assert not first.from_cache
            deadline = time.monotonic() + 5
            while not (shared := await b.predict("cached", account="acct-00555", amount=12.25)).from_cache:
                assert time.monotonic() < deadline, "gateway b never saw gateway a's answer"
                await asyncio.sleep(0.02)
            assert shared.score == pytest.approx(first.score)
            # an invalidation from one gateway reaches the other: the generation lives in Redis
            await a.admin.InvalidateCache(admin_pb2.InvalidateCacheRequest(route="cached"), timeout=5)
            assert not (await b.predict("cached", account="acct-00555", amount=12.25)).from_cache
    finally:
        await cache.stop(1)

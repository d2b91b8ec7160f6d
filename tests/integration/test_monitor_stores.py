"""One contract, two stores: every handler test of tests/unit (written against SQLite) again on a real Redis, so
the shared store keeps the same promises: idempotency, the grace period, corrections, retention, export order.
(test_monitor_store_quality: the same for quality and comparisons.)"""

from __future__ import annotations

import time

import pytest

from meshserve.core.errors import Unavailable
from meshserve.core.process import free_port
from services.monitor.redis_store import RedisStore
from services.monitor.sqlite_store import SqliteStore
from tests.unit.test_monitor_handler import *  # noqa: F403 - the tests themselves, collected here again
from tests.unit.test_monitor_handler import T0, make_handler, record


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path, redis_url):
    if request.param == "sqlite":
        path = str(tmp_path / "monitor.db")
        return lambda: SqliteStore(path)
    prefix = f"test:{time.monotonic_ns()}:"  # the same on reopening, its own per test
    return lambda: RedisStore(redis_url, prefix=prefix)


async def test_paging_and_pruning_in_small_steps_miss_nothing_and_repeat_nothing(
    open_store, clock, monkeypatch
):
    """Redis reads a window a page at a time (ties in time across a page's edge included) and prunes in bounded
    steps: with tiny pages and steps, every record comes back once, in time order, and the oldest go first."""
    monkeypatch.setattr("services.monitor.redis_store.PAGE", 4)
    monkeypatch.setattr("services.monitor.redis_store.PRUNE_LIMIT", 3)
    store = open_store()
    try:
        times = [T0 + k // 5 for k in range(30)]  # five records share each time
        records = [record(f"p{k:02}", time=t) for k, t in enumerate(times)]
        await make_handler(store, clock).log_predictions(records)
        rows = [r async for chunk in store.export("fraud", 0.0, False, page=7) for r in chunk]
        assert [r.time for r in rows] == times
        assert sorted(r.prediction_id for r in rows) == [f"p{k:02}" for k in range(30)]
        await make_handler(store, clock, max_records=20).upkeep(force=True)
        rows = [r async for chunk in store.export("fraud", 0.0, False, page=7) for r in chunk]
        assert [r.time for r in rows] == times[10:]
        assert sorted(r.prediction_id for r in rows) == [f"p{k:02}" for k in range(10, 30)]
        assert len((await store.joined("fraud", T0 + 2)).prediction_id) == 20
    finally:
        await store.close()


async def test_an_unreachable_redis_is_unavailable_not_an_internal_error(clock):
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        handler = make_handler(store, clock)
        with pytest.raises(Unavailable, match=r"the monitor's store \(Redis\) is unavailable"):
            await handler.log_predictions([record("p1")])
        with pytest.raises(Unavailable):
            [chunk async for chunk in handler.export("fraud", 0.0, False)]
    finally:
        await store.close()

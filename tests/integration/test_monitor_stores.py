"""One contract, two stores: every handler test of tests/unit (written against SQLite) again on a real Redis, so
the shared store keeps the same promises: idempotency, the grace period, corrections, retention, export order.
(test_monitor_store_quality: the same for quality and comparisons.)"""

from __future__ import annotations

import time

import pytest

from services.monitor.redis_store import RedisStore
from services.monitor.sqlite_store import SqliteStore
from tests.unit.test_monitor_handler import *  # noqa: F403 - the tests themselves, collected here again


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path, redis_url):
    if request.param == "sqlite":
        path = str(tmp_path / "monitor.db")
        return lambda: SqliteStore(path)
    prefix = f"test:{time.monotonic_ns()}:"  # the same on reopening, its own per test
    return lambda: RedisStore(redis_url, prefix=prefix)

"""One contract, two online stores: embedded SQLite and a real Redis."""

from __future__ import annotations

import time

import pytest

from meshserve.feature.registry import load_registry
from services.feature.handler import FeatureHandler, Status
from services.feature.ingest import IncomingRow, InvalidRows
from services.feature.store import RedisStore, SqliteStore

NOW = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, redis_url):
    if request.param == "sqlite":
        store = SqliteStore(":memory:")
    else:
        store = RedisStore(redis_url, prefix=f"test:{time.monotonic_ns()}:")
    yield store
    await store.close()


async def test_write_then_read_with_event_times(store):
    assert await store.is_empty()
    await store.write(
        "account", [("a1", "avg_amount_30d", 12.5, NOW - 5), ("a1", "txn_count_24h", 3, NOW - 7)]
    )
    assert not await store.is_empty()
    found = await store.read("account", ["a1", "a2"], ["avg_amount_30d", "txn_count_24h", "account_age_days"])
    assert {k: (v.value, v.event_ts) for k, v in found.items()} == {
        ("a1", "avg_amount_30d"): (12.5, NOW - 5),
        ("a1", "txn_count_24h"): (3.0, NOW - 7),
    }


async def test_a_later_write_replaces_the_value(store):
    await store.write("account", [("a1", "avg_amount_30d", 1.0, NOW - 10)])
    await store.write("account", [("a1", "avg_amount_30d", 2.0, NOW)])
    (value,) = (await store.read("account", ["a1"], ["avg_amount_30d"])).values()
    assert (value.value, value.event_ts) == (2.0, NOW)


async def test_freshness_statuses_through_the_handler(store):
    handler = FeatureHandler(load_registry(), store, max_keys=10, clock=lambda: NOW)
    await store.write(
        "account", [("a1", "avg_amount_30d", 5.0, NOW - 60), ("a1", "txn_count_24h", 2, NOW - 7200)]
    )
    rows = await handler.get_online_features("account", ["a1", "a2"], [])
    statuses = {key: [v.status for v in values] for key, values in rows.rows}
    assert statuses == {
        "a1": [Status.PRESENT, Status.OUTSIDE_MAX_AGE, Status.NOT_FOUND],  # txn_count_24h max age is 1 h
        "a2": [Status.NOT_FOUND] * 3,
    }


async def test_a_batch_with_a_bad_row_writes_nothing_and_names_each_bad_line(store):
    updates = []

    async def on_update(entity, keys):
        updates.append((entity, keys))

    handler = FeatureHandler(load_registry(), store, max_keys=10, clock=lambda: NOW, on_update=on_update)
    batch = [
        IncomingRow(2, "a1", {"avg_amount_30d": "10.5"}, None),
        IncomingRow(3, "a2", {"txn_count_24h": "2.5"}, None),
        IncomingRow(4, "", {"avg_amount_30d": 1}, None),
        IncomingRow(5, "a4", {"avg_amount_30d": -3}, None),
        IncomingRow(6, "a5", {"colour": 1}, None),
        IncomingRow(7, "a6", {"account_age_days": "ten"}, None),
    ]
    with pytest.raises(InvalidRows) as refused:
        await handler.push("account", batch)
    message = refused.value.message
    assert "5 bad row(s), nothing written" in message
    for expected in (
        "line 3: txn_count_24h='2.5' is not an integer",
        "line 4: account_id is missing",
        "line 5: avg_amount_30d=-3 is outside its range: must be ≥ 0",
        "line 6: 'colour' is not a stored feature of 'account'",
        "line 7: account_age_days='ten' is not a number",
    ):
        assert expected in message
    assert await store.is_empty() and not updates
    assert await handler.push("account", batch[:1]) == 1  # the good row alone goes in
    assert updates == [("account", ["a1"])]
    (value,) = (await store.read("account", ["a1"], ["avg_amount_30d"])).values()
    assert (value.value, value.event_ts) == (10.5, NOW)

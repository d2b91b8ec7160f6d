import sqlite3

import pytest

from meshserve.core.errors import InvalidArgument, NotFound, ResourceExhausted
from meshserve.feature.registry import load_registry
from services.feature.handler import FeatureHandler, Status
from services.feature.store import SqliteStore

NOW = 1_700_000_000.0


@pytest.fixture
async def handler():
    store = SqliteStore(":memory:")
    await store.write(
        "account",
        [
            ("acct-1", "avg_amount_30d", 42.5, NOW - 10),
            ("acct-1", "txn_count_24h", 3, NOW - 7200),  # max age is 3600 s
            ("acct-1", "account_age_days", 100, NOW - 10),
        ],
    )
    return FeatureHandler(load_registry(), store, max_keys=4, clock=lambda: NOW)


async def test_values_carry_present_not_found_and_outside_max_age(handler):
    rows = await handler.get_online_features("account", ["acct-1", "acct-404"], [])
    assert rows.feature_names == ["avg_amount_30d", "txn_count_24h", "account_age_days"]
    (key1, values1), (key2, values2) = rows.rows
    assert key1 == "acct-1"
    assert [(v.value, v.status) for v in values1] == [
        (42.5, Status.PRESENT),
        (3, Status.OUTSIDE_MAX_AGE),
        (100, Status.PRESENT),
    ]
    assert isinstance(values1[1].value, int)
    assert values1[0].event_ts == NOW - 10
    assert [v.status for v in values2] == [Status.NOT_FOUND] * 3


async def test_duplicate_keys_each_get_a_row_in_request_order(handler):
    rows = await handler.get_online_features("account", ["acct-404", "acct-1", "acct-1"], ["avg_amount_30d"])
    assert [key for key, _ in rows.rows] == ["acct-404", "acct-1", "acct-1"]


async def test_bad_requests_name_what_is_wrong(handler):
    with pytest.raises(NotFound, match="unknown entity 'user'"):
        await handler.get_online_features("user", ["u"], [])
    with pytest.raises(InvalidArgument, match="'amount' is not a stored feature"):
        await handler.get_online_features("account", ["acct-1"], ["amount"])
    with pytest.raises(ResourceExhausted, match="limit is 4"):
        await handler.get_online_features("account", ["a"] * 5, [])
    with pytest.raises(InvalidArgument, match="empty key"):
        await handler.get_online_features("account", [""], [])


async def test_store_write_is_all_or_nothing():
    store = SqliteStore(":memory:")
    with pytest.raises(sqlite3.IntegrityError):
        await store.write("account", [("a", "f", 1.0, NOW), ("b", "f", None, NOW)])  # row 2 violates NOT NULL
    assert await store.is_empty()

"""Reading feature files: every row that cannot be read names its line and why (`meshserve features load`)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.feature.files import FileReadError, count_rows, read_rows


def test_csv_rows_with_line_numbers_and_event_times(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("account_id,avg_amount_30d,event_time\na-1,1.5,10\n\na-2,,2026-01-01T00:00:00+00:00\n")
    rows = list(read_rows(path, "account_id"))
    assert [(r.line, r.entity_key, dict(r.values), r.event_ts) for r in rows] == [
        (2, "a-1", {"avg_amount_30d": "1.5"}, 10.0),
        (4, "a-2", {}, 1767225600.0),  # the blank line 3 is skipped, not renumbered
    ]
    assert count_rows(path) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("account_id,event_time\na-1,10\na-2,yesterday\n",
         "line 3: event_time 'yesterday' is neither seconds since the epoch nor an ISO 8601 time"),
        ("account_id,event_time\na-1,nan\n", "line 2: event_time 'nan' is not a time"),
        ("account_id,avg_amount_30d\na-1,1.0\na-2,2.0,3,4\n", "line 3: 2 field(s) beyond the header's 2 columns"),
        ("id,avg_amount_30d\na-1,1.0\n", "line 1: no 'account_id' column (the entity's join key) in the header"),
    ],
)  # fmt: skip
def test_an_unreadable_csv_line_is_named(tmp_path, text, message):
    path = tmp_path / "f.csv"
    path.write_text(text)
    with pytest.raises(FileReadError) as caught:
        list(read_rows(path, "account_id"))
    assert str(caught.value) == message


def test_a_csv_that_is_not_utf8_says_so(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"account_id,avg_amount_30d\na-1,\xff\xfe\n")
    with pytest.raises(FileReadError, match="is not UTF-8 text"):
        count_rows(path)
    with pytest.raises(FileReadError, match="^not UTF-8 text past line 0"):
        list(read_rows(path, "account_id"))


def test_only_csv_and_parquet_are_read(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("account_id\na-1\n")
    for read in (count_rows, lambda p: list(read_rows(p, "account_id"))):
        with pytest.raises(FileReadError) as caught:
            read(path)
        assert str(caught.value) == "unsupported file type .txt: expected .csv or .parquet"
        assert caught.value.line is None


def test_parquet_rows_and_a_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"account_id": ["p-1", "p-2"], "txn_count_24h": [1, 2]}), path)
    assert [(r.line, r.entity_key, r.values) for r in read_rows(path, "account_id")] == [
        (1, "p-1", {"txn_count_24h": 1}),
        (2, "p-2", {"txn_count_24h": 2}),
    ]
    fake = tmp_path / "fake.parquet"
    fake.write_text("account_id\n")
    with pytest.raises(FileReadError, match=f"^cannot read {fake} as Parquet: "):
        count_rows(fake)

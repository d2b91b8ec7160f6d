"""Label files for `meshserve feedback load`, read without any server: CSV and Parquet rows become labels or
refusals by line and reason; a file that cannot be read or lacks a column is refused whole, naming its columns."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from meshserve.cli.label_files import (
    LabelFileError,
    LabelRow,
    RefusedRow,
    check_columns,
    count_labels,
    parse_row,
    read_labels,
    refused_path,
    write_refused,
)

NOON = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()


def test_a_csv_reads_as_labels_by_line_with_event_time_in_seconds_or_iso_8601(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "prediction_id,label,event_time,note\n"
        "p1,1,,any other column is ignored\n"
        f" p2 , 0 ,{NOON}\n"
        "\n"  # a blank line is no row
        "txn-3,0.25,2026-12-01T12:00:00Z\n"
        "txn-4,1,2026-12-01T13:00:00+01:00\n"
        "txn-5,1,2026-12-01 12:00:00\n"  # no offset: UTC
    )
    assert check_columns(path) == ["prediction_id", "label", "event_time", "note"]
    assert count_labels(path) == 5
    assert list(read_labels(path)) == [
        LabelRow(2, "p1", 1.0, 0.0),  # no event time: when the monitor receives it
        LabelRow(3, "p2", 0.0, NOON),
        LabelRow(5, "txn-3", 0.25, NOON),
        LabelRow(6, "txn-4", 1.0, NOON),
        LabelRow(7, "txn-5", 1.0, NOON),
    ]


def test_event_time_is_optional():
    assert parse_row(2, {"prediction_id": "a", "label": "1"}) == LabelRow(2, "a", 1.0, 0.0)


@pytest.mark.parametrize(
    ("values", "prediction_id", "reason"),
    [
        ({"label": "1"}, "", "missing prediction_id"),
        ({"prediction_id": " ", "label": "1"}, "", "missing prediction_id"),
        ({"prediction_id": "x" * 129, "label": "1"}, "", "prediction_id is 129 characters long; at most 128"),
        ({"prediction_id": "caf\u00e9", "label": "1"}, "", "prediction_id 'caf\u00e9' is not printable ASCII"),
        ({"prediction_id": "a"}, "a", "missing label"),
        ({"prediction_id": "a", "label": "yes"}, "a", "label 'yes' is not a number"),
        ({"prediction_id": "a", "label": "nan"}, "a", "label must be a finite number, got 'nan'"),
        ({"prediction_id": "a", "label": "inf"}, "a", "label must be a finite number, got 'inf'"),
        ({"prediction_id": "a", "label": "1", "event_time": "yesterday"}, "a",
         "event_time 'yesterday' is neither Unix seconds nor an ISO 8601 time"),
        ({"prediction_id": "a", "label": "1", "event_time": "-5"}, "a",
         "event_time must be Unix seconds from 1970 on, got '-5'"),
    ],
)  # fmt: skip
def test_a_malformed_row_is_refused_with_its_line_and_reason(values, prediction_id, reason):
    assert parse_row(9, values) == RefusedRow(9, prediction_id, reason)


def test_bad_rows_are_refused_alone_and_the_rest_of_the_csv_is_kept(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("prediction_id,label\na,1\n,1\nb,two\nc,0,extra\nd,0\n")
    rows = list(read_labels(path))
    assert [r for r in rows if isinstance(r, LabelRow)] == [
        LabelRow(2, "a", 1.0, 0.0),
        LabelRow(6, "d", 0.0, 0.0),
    ]
    assert [r for r in rows if isinstance(r, RefusedRow)] == [
        RefusedRow(3, "", "missing prediction_id"),
        RefusedRow(4, "b", "label 'two' is not a number"),
        RefusedRow(5, "c", "1 field(s) beyond the header's 2 columns"),
    ]


def test_a_parquet_file_reads_typed_columns_by_row_number(tmp_path):
    path = tmp_path / "labels.parquet"
    stamp = datetime(2026, 12, 1, 12, tzinfo=UTC)
    pq.write_table(
        pa.table(
            {
                "prediction_id": pa.array([1001, 1002, None, 1004, 1005], pa.int64()),  # transaction numbers
                "label": pa.array([True, False, True, None, True], pa.bool_()),
                "event_time": pa.array(
                    [stamp, None, stamp, stamp, stamp.replace(tzinfo=None)], pa.timestamp("us")
                ),
            }
        ),
        path,
    )
    assert count_labels(path) == 5
    assert list(read_labels(path)) == [
        LabelRow(1, "1001", 1.0, NOON),
        LabelRow(2, "1002", 0.0, 0.0),
        RefusedRow(3, "", "missing prediction_id"),
        RefusedRow(4, "1004", "missing label"),
        LabelRow(5, "1005", 1.0, NOON),
    ]


def test_parquet_numbers_dates_and_float_ids():
    assert parse_row(1, {"prediction_id": 7.0, "label": 0.5, "event_time": date(2026, 12, 1)}) == LabelRow(
        1, "7", 0.5, datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    )  # an integer id column with gaps reads as floats
    assert (
        parse_row(2, {"prediction_id": 7.5, "label": 1}).reason
        == "prediction_id must be text or a whole number, got 7.5"
    )
    assert parse_row(3, {"prediction_id": "a", "label": float("nan")}).reason == "missing label"
    assert parse_row(4, {"prediction_id": "a", "label": 1, "event_time": NOON}).event_time == NOON


@pytest.mark.parametrize(
    ("header", "missing"),
    [("id,label\n", "no column 'prediction_id'"), ("prediction_id,value\n", "no column 'label'"),
     ("x\n", "no columns 'prediction_id' and 'label'")],
)  # fmt: skip
def test_a_file_without_the_columns_is_refused_whole_naming_the_columns_it_has(tmp_path, header, missing):
    path = tmp_path / "labels.csv"
    path.write_text(header + "a,1\n")
    with pytest.raises(LabelFileError) as refused:
        check_columns(path)
    have = header.strip().replace(",", ", ")
    assert str(refused.value) == (
        f"{path} has {missing}; its columns are: {have} "
        "(a label file has prediction_id, label and optionally event_time)"
    )


def test_an_empty_csv_has_no_columns(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(LabelFileError, match="its columns are: none"):
        check_columns(path)


def test_a_file_that_is_not_what_its_suffix_says_cannot_be_read(tmp_path):
    fake = tmp_path / "labels.parquet"
    fake.write_text("prediction_id,label\na,1\n")
    with pytest.raises(LabelFileError, match=rf"^cannot read {fake} as Parquet: "):
        check_columns(fake)
    binary = tmp_path / "labels.csv"
    binary.write_bytes(b"prediction_id,label\n" + b"a,1\n" * 5000 + b"\xff\xfe\x00\x01,1\n")
    assert check_columns(binary) == ["prediction_id", "label"]  # the header reads
    with pytest.raises(LabelFileError, match=rf"^cannot read {binary} as CSV: 'utf-8' codec can't decode"):
        count_labels(binary)  # counting reads it all: `feedback load` refuses it before sending anything
    read = []
    with pytest.raises(LabelFileError):
        read.extend(read_labels(binary))
    assert read and all(row == LabelRow(row.line, "a", 1.0, 0.0) for row in read)  # the rows before it


def test_refused_rows_are_written_by_line_only_when_there_are_any(tmp_path):
    path = tmp_path / "labels.csv"
    written = write_refused(
        path, [RefusedRow(9, "b", "label 2 does not fit route fraud"), RefusedRow(3, "", "x, y")]
    )
    assert written == refused_path(path) == tmp_path / "labels.csv.refused.csv"
    assert written.read_text().splitlines() == [
        "line,prediction_id,reason",
        '3,,"x, y"',
        "9,b,label 2 does not fit route fraud",
    ]
    assert write_refused(path, []) is None and not written.exists()  # none now: none left from before

"""`meshserve predictions export`'s file, written from MonitorService/Export chunks without a server: the fixed
columns, one column per feature (null where a prediction's features were not sampled), labels where they came,
and nothing left behind by an export that failed."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from meshserve.cli import predictions
from meshserve.cli.predictions import COLUMNS, ExportWriter, write_export
from meshserve.monitor.v1 import monitor_pb2

NOON = datetime(2026, 12, 1, 12, tzinfo=UTC)


def row(
    i: int, label: float | None = None, features: dict[str, float] | None = None, **more
) -> monitor_pb2.ExportRow:
    values = dict(prediction_id=f"p{i}", variant="stable", model_version="1", time=NOON.timestamp() + i / 1000,
                  score=i / 10, features=features or {})  # fmt: skip
    if label is not None:
        values["label"] = label
    return monitor_pb2.ExportRow(**values | more)


def test_the_file_has_the_fixed_columns_then_the_features_in_the_registrys_order(tmp_path):
    out = tmp_path / "fraud.predictions.parquet"
    chunks = [
        monitor_pb2.ExportChunk(
            feature_names=["amount", "merchant_category", "avg_amount_30d"],
            rows=[row(1, 1.0, {"amount": 250.0, "merchant_category": 3.0, "avg_amount_30d": 80.0}), row(2)],
        ),
        monitor_pb2.ExportChunk(rows=[row(3, 0.0, variant="canary", model_version="3", shadow=True)]),
    ]
    summary = write_export(chunks, out)
    assert (summary.rows, summary.labelled, summary.with_features) == (3, 2, 1)
    table = pq.read_table(out)
    assert table.column_names == [*COLUMNS, "amount", "merchant_category", "avg_amount_30d"]
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert (
        table.schema.field("label").type == pa.float64() and table.schema.field("amount").type == pa.float64()
    )
    assert table.to_pylist() == [
        {"prediction_id": "p1", "variant": "stable", "model_version": "1", "time": NOON.replace(microsecond=1000),
         "score": 0.1, "label": 1.0, "shadow": False, "amount": 250.0, "merchant_category": 3.0,
         "avg_amount_30d": 80.0},
        {"prediction_id": "p2", "variant": "stable", "model_version": "1", "time": NOON.replace(microsecond=2000),
         "score": 0.2, "label": None, "shadow": False, "amount": None, "merchant_category": None,
         "avg_amount_30d": None},  # no label yet, features not sampled
        {"prediction_id": "p3", "variant": "canary", "model_version": "3", "time": NOON.replace(microsecond=3000),
         "score": pytest.approx(0.3), "label": 0.0, "shadow": True, "amount": None, "merchant_category": None,
         "avg_amount_30d": None},
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no partial file left beside it


def test_features_the_first_chunk_does_not_list_are_kept_from_its_rows_and_reported_from_later_ones(tmp_path):
    out = tmp_path / "x.parquet"
    chunks = [
        monitor_pb2.ExportChunk(
            feature_names=["b"], rows=[row(1, features={"b": 1.0, "a": 2.0, "score": 3.0})]
        ),
        monitor_pb2.ExportChunk(rows=[row(2, features={"b": 4.0, "late": 5.0})]),
    ]
    summary = write_export(chunks, out)
    table = pq.read_table(out)
    # a feature named like a fixed column gets a prefix rather than clobbering it
    assert table.column_names == [*COLUMNS, "b", "a", "feature_score"]
    assert table.column("score").to_pylist() == [0.1, 0.2] and table.column("feature_score").to_pylist() == [
        3.0,
        None,
    ]
    assert summary.unlisted_features == {"late"}


def test_an_empty_export_is_a_file_with_the_fixed_columns(tmp_path):
    out = tmp_path / "none.parquet"
    assert write_export([], out).rows == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.column_names == list(COLUMNS)


def test_rows_go_out_in_row_groups_and_a_failure_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(predictions, "ROW_GROUP", 2)
    out = tmp_path / "big.parquet"
    write_export([monitor_pb2.ExportChunk(rows=[row(i)]) for i in range(5)], out)
    assert pq.ParquetFile(out).metadata.num_row_groups == 3
    assert pq.read_table(out).column("prediction_id").to_pylist() == [f"p{i}" for i in range(5)]

    def failing():
        yield from [monitor_pb2.ExportChunk(rows=[row(i)]) for i in range(3)]  # one row group written
        raise ConnectionError("the stream broke")

    broken = tmp_path / "broken.parquet"
    with pytest.raises(ConnectionError):
        write_export(failing(), broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet"]


def test_a_rewrite_replaces_the_earlier_file_only_when_it_is_whole(tmp_path):
    out = tmp_path / "again.parquet"
    write_export([monitor_pb2.ExportChunk(rows=[row(1)])], out)
    writer = ExportWriter(out)
    writer.add(monitor_pb2.ExportChunk(rows=[row(2), row(3)]))
    writer.abort()
    assert pq.read_table(out).column("prediction_id").to_pylist() == ["p1"]  # the earlier export stands

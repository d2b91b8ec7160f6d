"""Feature rows from files: CSV (line numbers as a person counts them, header = line 1) and Parquet (row
numbers from 1). Columns: the entity's join key, optional `event_time` (seconds since the epoch or ISO 8601),
and stored feature names."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from services.feature.ingest import IncomingRow

EVENT_TIME = "event_time"


def _event_ts(raw: object) -> float | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime):
        return raw.timestamp()
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return datetime.fromisoformat(str(raw)).timestamp()


def _row(line: int, record: dict[str, object], join_key: str) -> IncomingRow:
    values = {k: v for k, v in record.items() if k not in (join_key, EVENT_TIME) and v not in (None, "")}
    return IncomingRow(line, str(record.get(join_key) or ""), values, _event_ts(record.get(EVENT_TIME)))  # type: ignore[arg-type]


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open(newline="") as f:
        return max(sum(1 for _ in f) - 1, 0)


def read_rows(path: Path, join_key: str) -> Iterator[IncomingRow]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        line = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                line += 1
                yield _row(line, record, join_key)
        return
    if path.suffix != ".csv":
        raise ValueError(f"{path}: expected a .csv or .parquet file")
    with path.open(newline="") as f:
        for line, record in enumerate(csv.DictReader(f), start=2):
            yield _row(line, record, join_key)

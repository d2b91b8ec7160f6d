"""Feature rows from files: CSV (line numbers as a person counts them, header = line 1) and Parquet (row
numbers from 1). Columns: the entity's join key, optional `event_time` (seconds since the epoch or ISO 8601),
and stored feature names. A file that cannot be read raises FileReadError naming the line and why."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from services.feature.ingest import IncomingRow

EVENT_TIME = "event_time"
SUFFIXES = (".csv", ".parquet")


class FileReadError(ValueError):
    """The file, or one of its lines, cannot be read as feature rows; `line` is None for the whole file."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.reason = reason
        self.line = line


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FileReadError(f"unsupported file type {path.suffix or '(none)'}: expected .csv or .parquet")
    return suffix


def _event_ts(line: int, raw: object) -> float | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime):
        return raw.timestamp()
    try:
        ts = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        try:
            return datetime.fromisoformat(str(raw)).timestamp()
        except ValueError:
            raise FileReadError(
                f"{EVENT_TIME} {raw!r} is neither seconds since the epoch nor an ISO 8601 time", line
            ) from None
    if not math.isfinite(ts):
        raise FileReadError(f"{EVENT_TIME} {raw!r} is not a time", line)
    return ts


def _row(line: int, record: dict[str | None, object], join_key: str) -> IncomingRow:
    if None in record:  # csv.DictReader files fields beyond the header's under None
        extra = record.pop(None)
        count = len(extra) if isinstance(extra, list) else 1
        raise FileReadError(f"{count} field(s) beyond the header's {len(record)} columns", line)
    values = {k: v for k, v in record.items() if k not in (join_key, EVENT_TIME) and v not in (None, "")}
    entity_key = str(record.get(join_key) or "")
    return IncomingRow(line, entity_key, values, _event_ts(line, record.get(EVENT_TIME)))  # type: ignore[arg-type]


def _parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise FileReadError(f"cannot read {path} as Parquet: {exc}") from None


def count_rows(path: Path) -> int:
    if _suffix(path) == ".parquet":
        return _parquet(path).metadata.num_rows
    try:
        with path.open(newline="") as f:
            return max(sum(1 for _ in f) - 1, 0)
    except UnicodeDecodeError as exc:
        raise FileReadError(f"{path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise FileReadError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_rows(path: Path, join_key: str) -> Iterator[IncomingRow]:
    if _suffix(path) == ".parquet":
        import pyarrow as pa

        line = 0
        try:
            for batch in _parquet(path).iter_batches(batch_size=4096):
                for record in batch.to_pylist():
                    line += 1
                    yield _row(line, record, join_key)
        except pa.ArrowException as exc:
            raise FileReadError(f"unreadable Parquet row: {exc}", line + 1) from None
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        try:
            if reader.fieldnames is not None and join_key not in reader.fieldnames:
                raise FileReadError(f"no {join_key!r} column (the entity's join key) in the header", 1)
            for record in reader:
                yield _row(reader.line_num, record, join_key)
        except UnicodeDecodeError as exc:  # decoded a block at a time: the exact line is not known
            raise FileReadError(f"not UTF-8 text past line {reader.line_num} ({exc.reason})") from None
        except csv.Error as exc:
            raise FileReadError(str(exc), reader.line_num) from None
